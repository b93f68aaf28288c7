"""The learning-rate schedule: linear warmup, then cosine decay over the budget's progress."""

from __future__ import annotations

import math

from llmlab.training.config import BudgetConfig, OptimConfig, ScheduleConfig


def learning_rate(cfg: OptimConfig | ScheduleConfig | BudgetConfig, step: int, elapsed: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to min_lr (default lr / 10) over whichever
    budget (steps or seconds) is further along."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = 0.0
    if cfg.max_steps is not None:
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_time is not None:
        progress = max(progress, elapsed / cfg.max_time)
    progress = min(1.0, progress)
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))
