"""`llmlab scaling`: an IsoFLOP grid of ordinary pre-training runs (every width at every compute budget, the
tokens each gets being C / 6N), their final validation losses, the law L(N, D) fitted to them with
bootstrap intervals (plan/scaling_fit.py), and the compute-optimal tokens per parameter next to the
published fits'. The "select" stage of the lifecycle done from data rather than from a paper.

Each run is `llmlab pretrain` into OUT/runs/<budget>-w<width>: a finished run is reused, an interrupted one
resumed, so the grid can be stopped and continued, and widened later (more budgets or widths) for the
price of the new runs only."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.plan.compute import CHINCHILLA_FITS
from llmlab.plan.model import parameter_breakdown
from llmlab.plan.scaling_fit import bootstrap, fit_scaling_law
from llmlab.pretrain.config import PretrainConfig


@dataclass
class GridPoint:
    flops: float  # the budget: 6 N D
    width: int
    params: int
    steps: int
    tokens: int  # what the steps read: steps x batch x context
    out: Path


def plan_grid(
    base: PretrainConfig, budgets: list[float], widths: list[int], vocab_size: int, out: Path
) -> list[GridPoint]:
    """The runs of the grid; refused if a budget buys a run less than one step long."""
    points = []
    per_step = base.batch_size * base.grad_accum * base.block_size
    for flops in sorted(budgets):
        for width in sorted(widths):
            config = ModelConfig.from_preset(base.preset or "llama-nano", vocab_size=vocab_size, n_embd=width,
                                             block_size=base.block_size, n_layer=base.n_layer)  # fmt: skip
            params = sum(parameter_breakdown(config).values())
            steps = round(flops / (6 * params) / per_step)
            if steps < 1:
                raise LlmlabError(f"{flops:.2g} FLOPs buy width {width} ({params:,} parameters) not one step",
                                  f"raise --budgets above {6 * params * per_step:.2g} or narrow --widths")  # fmt: skip
            points.append(
                GridPoint(flops, width, params, steps, steps * per_step, out / "runs" / f"{flops:.0e}-w{width}")
            )
    return points


def run_grid(base: PretrainConfig, points: list[GridPoint], train: Callable, log: Callable[[str], None]) -> list[float]:
    """Each point's final validation loss, training it first unless it is finished (resumed if it was cut)."""
    losses = []
    for i, point in enumerate(points, 1):
        done = _finished_steps(point.out)
        if done != point.steps:
            log(f"[{i}/{len(points)}] {point.flops:.2g} FLOPs, width {point.width} ({point.params:,} parameters): "
                f"{point.steps} steps, {point.tokens:,} tokens")  # fmt: skip
            cfg = dataclasses.replace(base, out=str(point.out), n_embd=point.width, max_steps=point.steps,
                                      max_time=None, eval_interval=point.steps, resume=done is not None,
                                      checkpoint_interval=max(point.steps // 4, 1), overwrite=False)  # fmt: skip
            train(cfg)
        losses.append(_final_validation_loss(point.out))
    return losses


def _finished_steps(out: Path) -> int | None:
    try:
        return int(json.loads((out / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def _final_validation_loss(out: Path) -> float:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [r["val_loss"] for r in records if "val_loss" in r]
    if not losses:
        raise LlmlabError(f"{out} has no validation loss", "rerun `llmlab scaling` to finish that run")
    return float(losses[-1])


def fit_grid(points: list[GridPoint], losses: list[float], resamples: int, seed: int) -> dict:
    """The fitted law, its intervals at the largest budget, and the published fits at that budget."""
    params, tokens = [p.params for p in points], [p.tokens for p in points]
    law = fit_scaling_law(params, tokens, losses)
    flops = max(p.flops for p in points)
    intervals = bootstrap(params, tokens, losses, law, flops, resamples, seed)
    published = {name: fit.optimal(flops)[1] / fit.optimal(flops)[0] for name, fit in CHINCHILLA_FITS.items()}
    n_opt, d_opt = law.fit.optimal(flops)
    return {"fit": dataclasses.asdict(law.fit), "huber_objective": law.objective, "budget": flops,
            "optimal_params": n_opt, "optimal_tokens": d_opt, "tokens_per_parameter": d_opt / n_opt,
            "intervals": dataclasses.asdict(intervals), "published_tokens_per_parameter": published,
            "runs": [{"flops": p.flops, "width": p.width, "params": p.params, "tokens": p.tokens, "steps": p.steps,
                      "val_loss": loss, "out": str(p.out)} for p, loss in zip(points, losses)]}  # fmt: skip


def is_finite_result(result: dict) -> bool:
    return all(math.isfinite(v) for v in result["fit"].values())
