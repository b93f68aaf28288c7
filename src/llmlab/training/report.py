"""The words of a run's progress line: loss, learning rate, tokens/s, model FLOP/s (and MFU), ETA."""

from __future__ import annotations

from llmlab.progress import format_duration
from llmlab.training.config import BudgetConfig


def throughput_text(flops_per_s: float, peak: float | None) -> str:
    """Model FLOP/s (6 x matmul weights x tokens + attention, plan/flops.py) and, where the accelerator's
    peak is known, the model FLOPs utilisation."""
    text = f"{flops_per_s / 1e12:.2f} TFLOP/s" if flops_per_s >= 1e11 else f"{flops_per_s / 1e9:.1f} GFLOP/s"
    return text + (f" (MFU {flops_per_s / peak:.0%})" if peak else "")


def progress_text(
    cfg: BudgetConfig, step: int, loss: float, lr: float, tps: float, elapsed: float, throughput: str = ""
) -> str:
    per_step = elapsed / max(step, 1)
    remaining = []
    if cfg.max_steps is not None:
        remaining.append((cfg.max_steps - step) * per_step)
    if cfg.max_time is not None:
        remaining.append(cfg.max_time - elapsed)
    total = f"/{cfg.max_steps}" if cfg.max_steps is not None else ""
    return (
        f"step {step}{total} | loss {loss:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | "
        + (f"{throughput} | " if throughput else "")
        + f"{format_duration(elapsed)} elapsed | ETA {format_duration(min(remaining))}"
    )
