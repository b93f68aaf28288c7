"""`llmlab plan memory` as a Python call: a request (what the command's flags say), checked once, and
the report it gives (the ZeRO-style plan, the peak of an llmlab training step, whether both fit), so a
Python user gets the same checks, the same strategy names and the same numbers as the command.

    report = plan_memory_request(MemoryRequest(preset="llama-micro", batch=8, seq_len=256, gpu_memory="8GB"))
    report.to_dict()  # what `llmlab plan memory ... --json` prints
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.plan.adapter_peak import AdapterShape, adapter_step_peak
from llmlab.plan.memory import DTYPE_BYTES, STRATEGIES, MemoryPlan, parse_size, plan_memory
from llmlab.plan.peak import StepPeak

# FSDP's sharding strategies are ZeRO's stages under other names.
STRATEGY_ALIASES = {"NO_SHARD": "ddp", "SHARD_GRAD_OP": "zero2", "FULL_SHARD": "zero3"}
STRATEGY_CHOICES = (*STRATEGIES, *STRATEGY_ALIASES)
STEP_DTYPES = ("fp32", "bf16", "fp16")  # what `llmlab pretrain --dtype` trains in
METHODS = ("full", "lora", "qlora")  # a pre-training / full fine-tuning step, or one with adapters


def meta_parameter_count(config: ModelConfig) -> float:
    """Parameters of the model `config` builds, from shapes only: a 70B config costs no memory."""
    import torch

    from llmlab.model import build_model

    with torch.device("meta"):
        return float(build_model(config).num_parameters())


@dataclass
class MemoryRequest:
    """The model (a count, a preset or a checkpoint), the training setup, and optionally a GPU's memory."""

    params: float | None = None
    preset: str | None = None
    model: str | None = None  # an llmlab checkpoint folder, or a Hugging Face folder or hub id
    vocab_size: int = 8192
    dtype: str = "fp32"
    optimizer: str = "adamw"
    mixed_precision: bool = False
    batch: int | None = None
    seq_len: int | None = None
    recompute: str = "none"
    target_len: int | None = None
    gpus: int = 1
    strategy: str = "ddp"  # ddp, zero1-3, or FSDP's NO_SHARD / SHARD_GRAD_OP / FULL_SHARD
    gpu_memory: str | None = None  # e.g. "80GB"
    device: str = "cuda"  # the llmlab step's peak depends on the device's kernels
    method: str = "full"  # or a fine-tuning step with adapters: lora, qlora
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("attention",)
    lora_dropout: float = 0.05  # llmlab finetune's default

    @property
    def sharding(self) -> str:
        """The strategy under its ZeRO name."""
        return STRATEGY_ALIASES.get(self.strategy, self.strategy)

    @property
    def precision(self) -> str:
        """How `llmlab pretrain --dtype` runs: fp32, or 16-bit autocast over fp32 weights."""
        return "fp32" if self.dtype == "fp32" else "autocast"

    def model_config(self) -> ModelConfig | None:
        """The architecture, where one is named: a checkpoint's (only its config.json is read) or a preset's."""
        if self.model:
            from llmlab.load import load_config

            return load_config(self.model)
        if self.preset:
            return ModelConfig.from_preset(self.preset, vocab_size=self.vocab_size)
        return None

    def validate(self, config: ModelConfig | None) -> None:
        """Refuse what would be ignored or meaningless, before any arithmetic (`config`: `model_config()`)."""
        if config is None and not self.params:
            raise LlmlabError("no model given", "pass --params N, --preset NAME or --model CKPT")
        if (self.batch or self.seq_len) and config is None:
            raise LlmlabError("activations from --batch/--seq-len need the architecture", "pass --preset or --model")
        for flag, value in (("--batch", self.batch), ("--seq-len", self.seq_len), ("--target-len", self.target_len)):
            if value is not None and value < 1:
                raise LlmlabError(f"{flag} must be >= 1, got {value}", f"pass a positive {flag}")
        if bool(self.batch) != bool(self.seq_len):
            raise LlmlabError("--batch and --seq-len go together", "pass both, or neither for model states only")
        if self.target_len and (config is None or not family_spec(config).seq2seq):
            raise LlmlabError("--target-len is an encoder-decoder's decoder length", "leave it out for this model")
        if self.method not in METHODS:
            raise LlmlabError(f"unknown --method {self.method!r}", f"use one of: {', '.join(METHODS)}")
        if self.method != "full" and config is None:
            raise LlmlabError(f"--method {self.method} needs the architecture to place adapters",
                              "pass --preset or --model")  # fmt: skip
        if self.method != "full" and (self.mixed_precision or self.dtype not in STEP_DTYPES):
            raise LlmlabError(f"--method {self.method} plans 32-bit adapters on a frozen base in --dtype",
                              "pass --dtype fp32, bf16 or fp16 without --mixed-precision")  # fmt: skip
        if self.method == "qlora" and self.strategy not in ("ddp", "NO_SHARD"):
            raise LlmlabError("--method qlora cannot shard its 4-bit base", "use --strategy ddp")

    def adapter_shape(self, config: ModelConfig) -> AdapterShape | None:
        """The adapters' parameters and the frozen base's bytes, for lora and qlora."""
        if self.method == "full":
            return None
        return AdapterShape.of(config, self.method, self.lora_r, tuple(self.lora_targets), self.lora_dropout)


@dataclass
class MemoryReport:
    """The plan of a request, the llmlab step's peak where it applies, and the GPU memory to fit in."""

    request: MemoryRequest
    params: float
    plan: MemoryPlan
    capacity: float | None = None  # bytes per GPU, from --gpu-memory
    step: StepPeak | None = None
    trainable: int | None = None  # with adapters: their parameters

    def fits(self, total: float) -> bool | None:
        """Whether `total` bytes fit in the GPU's memory; None when no memory was given."""
        return None if self.capacity is None else total <= self.capacity

    def to_dict(self) -> dict[str, Any]:
        """The `--json` form."""
        plan = self.plan
        result: dict[str, Any] = {
            "params": self.params,
            "method": self.request.method,
            "trainable_params": self.params if self.trainable is None else self.trainable,
            "strategy": self.request.sharding,
            "gpus": self.request.gpus,
            "training": plan.training,
            "model_states": plan.model_states,
            "training_total": plan.training_total,
            "inference": plan.inference,
            "inference_total": plan.inference_total,
            "gpu_memory": self.capacity,
            "training_fits": self.fits(plan.training_total),
            "inference_fits": self.fits(plan.inference_total),
        }
        if self.step is not None:
            result["llmlab_step"] = {
                "device": self.request.device,
                "precision": self.request.precision,
                "components": self.step.components,
                "phases": self.step.phases,
                "peak": self.step.peak,
                "peak_phase": self.step.peak_phase,
                "fits": self.fits(self.step.peak),
            }
        return result


def step_peak(config: ModelConfig, request: MemoryRequest) -> StepPeak | None:
    """The peak of one `llmlab pretrain --dtype D` step on one device, alone or in DDP (plan/peak.py),
    or None where it does not apply: sharded plans (FSDP's gathered blocks are not modelled), int8/int4."""
    import torch

    from llmlab.model import build_model
    from llmlab.plan.peak import ModelShape, training_step_peak

    data_parallel = request.gpus > 1 and request.sharding == "ddp"
    if (request.gpus > 1 and not data_parallel) or request.dtype not in STEP_DTYPES:
        return None
    adapters = request.adapter_shape(config)
    if adapters is not None:
        return adapter_step_peak(
            config, adapters, request.batch, request.seq_len, request.device, request.precision,
            target_len=request.target_len, ddp=data_parallel,
        )  # fmt: skip
    with torch.device("meta"):  # shapes only: a 70B config costs no memory
        shape = ModelShape.of(build_model(config))
    return training_step_peak(
        config, shape, request.batch, request.seq_len, request.device, request.precision,
        target_len=request.target_len, ddp=data_parallel,
    )  # fmt: skip


def plan_memory_request(request: MemoryRequest) -> MemoryReport:
    """Check the request, then plan it: model states, activations and KV cache per GPU, and the step peak."""
    config = request.model_config()
    request.validate(config)
    params = meta_parameter_count(config) if config is not None else float(request.params)
    plan = plan_memory(
        params, request.dtype, request.optimizer, request.mixed_precision, request.gpus, request.sharding,
        config, request.batch, request.seq_len, request.recompute, request.target_len,
    )  # fmt: skip
    adapters = request.adapter_shape(config) if config is not None else None
    if adapters is not None:
        with_adapters(plan, config, adapters, request)
    capacity = parse_size(request.gpu_memory) if request.gpu_memory else None
    step = step_peak(config, request) if config and request.batch and request.seq_len else None
    return MemoryReport(request, params, plan, capacity, step, adapters.trainable if adapters else None)


def with_adapters(plan: MemoryPlan, config: ModelConfig, adapters: AdapterShape, request: MemoryRequest) -> None:
    """The plan's model states for a fine-tuning step with adapters, in the same conventions: the frozen
    base in --dtype (QLoRA's block layers in NF4), the adapters, their gradients and their optimizer
    states in fp32 (as PEFT keeps them); activations in 16 bits less what the frozen layers keep no more."""
    from llmlab.plan.adapter_peak import adapter_activations, frozen_weight_bytes
    from llmlab.plan.memory import OPTIMIZER_STATE_BYTES

    gpus, sharding = request.gpus, request.sharding
    w_div, g_div, s_div = {"ddp": (1, 1, 1), "zero1": (1, 1, gpus), "zero2": (1, gpus, gpus), "zero3": (gpus,) * 3}[
        sharding
    ]
    training = {
        "weights": frozen_weight_bytes(adapters, DTYPE_BYTES[request.dtype]) / w_div,
        "adapter weights (fp32)": 4.0 * adapters.trainable / w_div,
        "gradients": 4.0 * adapters.trainable / g_div,
        "optimizer states": OPTIMIZER_STATE_BYTES[request.optimizer] * adapters.trainable / s_div,
    }
    if request.batch and request.seq_len:
        if request.recompute != "none":
            raise LlmlabError(f"--recompute {request.recompute} is not planned with adapters", "leave it out")
        training["activations"] = adapter_activations(
            config, adapters, request.batch, request.seq_len, request.target_len, request.device, "autocast"
        )
        training["logits and loss"] = plan.training["logits and loss"]
    else:
        full_rule = plan.training.get("activations and temporaries (rule of thumb)")
        if full_rule is not None:
            training["activations and temporaries (rule of thumb, full training)"] = full_rule
    if "temporary buffers (gradient all-reduce)" in plan.training:
        training["temporary buffers (gradient all-reduce)"] = 4.0 * adapters.trainable
    plan.training = training
    plan.inference["weights"] = frozen_weight_bytes(adapters, DTYPE_BYTES[request.dtype]) + 4.0 * adapters.trainable
