"""`llmlab plan compute` as a Python call: a request (a model and data, or a budget), checked once, and
the report it gives (FLOPs, petaflop/s-days, GPU-days, the Chinchilla optimum), so a Python user gets
the same checks and the same numbers as the command.

    report = plan_compute_request(ComputeRequest(params=7e9, tokens=2e12, gpus=8))
    report.to_dict()  # what `llmlab plan compute ... --json` prints
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.plan import compute
from llmlab.plan.memory_request import meta_parameter_count


@dataclass
class ComputeRequest:
    """N and D, or a budget (FLOPs or petaflop/s-days); the hardware; optionally a preset for N."""

    params: float | None = None
    tokens: float | None = None
    budget_flops: float | None = None
    budget_pf_days: float | None = None
    flops_per_token: float = 6.0  # per parameter per token (T5: 3)
    preset: str | None = None  # N counted from a preset
    vocab_size: int = 8192
    seq_len: int | None = None  # with a decoder preset: FLOPs per token with attention
    gpu: str = "H100"
    dtype: str = "bf16"
    gpus: int = 1
    mfu: float = 0.4
    fit: str = "hoffmann2022"
    chinchilla: str | None = None  # a PNG path: iso-loss contours, the frontier and the budget

    def model_config(self) -> ModelConfig | None:
        """The preset's architecture, if one is named (its parameters are then counted, not given)."""
        if not self.preset:
            return None
        if self.params is not None:
            raise LlmlabError("both --params and --preset given", "pass one: the preset's parameters are counted")
        return ModelConfig.from_preset(self.preset, vocab_size=self.vocab_size)

    def validate(self, config: ModelConfig | None) -> None:
        """Refuse what would be ignored or meaningless, before any arithmetic (`config`: `model_config()`)."""
        for flag, value in (
            ("--params", self.params),
            ("--tokens", self.tokens),
            ("--budget-flops", self.budget_flops),
            ("--budget-pf-days", self.budget_pf_days),
            ("--flops-per-token", self.flops_per_token),
            ("--gpus", self.gpus),
        ):
            if value is not None and value <= 0:
                raise LlmlabError(f"{flag} must be positive, got {value:g}", "pass a positive number, e.g. 7e9")
        if self.fit not in compute.CHINCHILLA_FITS:
            raise LlmlabError(
                f"unknown Chinchilla fit {self.fit!r}", f"use one of: {', '.join(compute.CHINCHILLA_FITS)}"
            )
        has_params = self.params is not None or config is not None
        if self.budget_flops is None and self.budget_pf_days is None and not (has_params and self.tokens is not None):
            raise LlmlabError("no budget given", "pass --params and --tokens, or --budget-flops/--budget-pf-days")
        if self.seq_len is not None:
            if self.seq_len < 1:
                raise LlmlabError(f"--seq-len must be >= 1, got {self.seq_len}", "pass the context length, e.g. 1024")
            if config is None or not family_spec(config).causal:
                raise LlmlabError(
                    "--seq-len gives a decoder's FLOPs per token with attention",
                    "pass it with --preset of a decoder (gpt2-*, llama-*)",
                )


@dataclass
class ComputeReport:
    """The budget, its cost on the hardware, and the compute-optimal model for it (the `--json` fields)."""

    flops: float
    pf_days: float
    params: float | None
    tokens: float | None
    gpu: str
    dtype: str
    gpus: int
    mfu: float
    days: float
    predicted_loss: float | None
    chinchilla_fit: str
    optimal_params: float
    optimal_tokens: float
    optimal_loss: float
    rule_params: float
    rule_tokens: float
    training_flops_per_token_with_attention: float | None = None  # with --preset and --seq-len
    plot: str | None = None  # with --chinchilla

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form: the optional fields only where they were asked for."""
        optional = ("training_flops_per_token_with_attention", "plot")
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in optional or v is not None}


def _budget(request: ComputeRequest, params: float | None) -> tuple[float, float | None]:
    """The FLOPs (a budget given, else 6ND) and the tokens (given, or what the budget buys at N)."""
    flops, tokens = request.budget_flops, request.tokens
    if request.budget_pf_days is not None:
        flops = request.budget_pf_days * compute.PF_DAY_FLOPS
    if flops is None:
        flops = compute.training_flops(params, tokens, request.flops_per_token)
    elif params is not None and tokens is None:
        tokens = compute.tokens_for_budget(flops, params, request.flops_per_token)
    return flops, tokens


def plan_compute_request(request: ComputeRequest) -> ComputeReport:
    """Check the request, then price it: FLOPs, petaflop/s-days, days on the GPUs, the Chinchilla optimum."""
    config = request.model_config()
    request.validate(config)
    params = meta_parameter_count(config) if config is not None else request.params
    flops, tokens = _budget(request, params)
    fit = compute.CHINCHILLA_FITS[request.fit]
    opt_params, opt_tokens = fit.optimal(flops)
    rule_params, rule_tokens = compute.twenty_tokens_per_parameter(flops)
    report = ComputeReport(
        flops=flops,
        pf_days=compute.pf_days(flops),
        params=params,
        tokens=tokens,
        gpu=request.gpu,
        dtype=request.dtype,
        gpus=request.gpus,
        mfu=request.mfu,
        days=compute.gpu_days(flops, request.gpu, request.dtype, request.mfu) / request.gpus,
        predicted_loss=fit.loss(params, tokens) if params and tokens else None,
        chinchilla_fit=request.fit,
        optimal_params=opt_params,
        optimal_tokens=opt_tokens,
        optimal_loss=fit.loss(opt_params, opt_tokens),
        rule_params=rule_params,
        rule_tokens=rule_tokens,
    )
    if config is not None and request.seq_len:
        from llmlab.plan.flops import flops_per_token

        report.training_flops_per_token_with_attention = flops_per_token(config, request.seq_len)
    if request.chinchilla:
        from llmlab.plot import plot_chinchilla

        point = (params, tokens) if params and tokens else None
        plot_chinchilla(fit, flops, Path(request.chinchilla), point, title=f"Chinchilla fit {request.fit}")
        report.plot = request.chinchilla
    return report
