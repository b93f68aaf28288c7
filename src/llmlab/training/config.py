"""The options every training recipe shares, as small dataclasses a recipe's config inherits.

A recipe's config is flat (`PretrainConfig(OptimConfig, ScheduleConfig, ...)`), so the CLI generates
one `--flag` per field and a run's options round-trip through `trainer_state.json` as one dict; each
part validates its own fields (`validate` chains through the bases with `super()`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.options import option
from llmlab.training.trackers import check_trackers

DEFAULT_MAX_STEPS = 2000


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def require_positive(config: object, *names: str) -> None:
    """One-line errors for fields that must be > 0."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise LlmlabError(f"{_flag(name)} must be positive, got {value}", "pass a positive number")


class Validated:
    """The end of the `validate()` chain of the option dataclasses."""

    def validate(self) -> None:
        pass

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class OptimConfig(Validated):
    """The optimizer and what a step does with the gradients."""

    optimizer: str = option(
        "adamw", "adamw, or muon (Muon for the blocks' matrices, AdamW for embeddings, norms and biases)"
    )
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices")
    beta1: float = option(0.9, "AdamW's first-moment decay")
    beta2: float = option(0.95, "AdamW's second-moment decay")
    grad_clip: float = option(1.0, "clip the gradient norm to this value")
    batch_size: int = option(16, "sequences per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")

    def validate(self) -> None:
        super().validate()
        require_positive(self, "batch_size", "grad_accum")
        if self.optimizer not in ("adamw", "muon"):
            raise LlmlabError(f"unknown optimizer {self.optimizer!r}", "use adamw or muon")
        if self.lr <= 0:
            raise LlmlabError(f"--lr must be positive, got {self.lr}", "use e.g. 1e-3")


@dataclass
class ScheduleConfig(Validated):
    """Linear warmup, then cosine decay over the budget (`training.schedule.learning_rate`)."""

    warmup_steps: int = option(100, "linear warmup steps")
    min_lr: float | None = option(None, "final learning rate of the cosine decay (default lr/10)")

    def validate(self) -> None:
        super().validate()
        if self.warmup_steps < 0:
            raise LlmlabError(f"--warmup-steps must be >= 0, got {self.warmup_steps}", "use e.g. 100")


@dataclass
class BudgetConfig(Validated):
    """How long to train and how often to look: budgets, validation, logging, checkpoints."""

    max_steps: int | None = option(None, "stop after this many optimizer steps")
    max_time: float | None = option(None, "stop after this many seconds of training")
    eval_interval: int = option(250, "validate every N steps")
    eval_iters: int = option(20, "validation batches per evaluation")
    log_interval: int = option(10, "update the progress line and metrics every N steps")
    checkpoint_interval: int = option(1000, "save a resumable checkpoint every N steps")

    def validate(self) -> None:
        super().validate()
        require_positive(self, "eval_interval", "eval_iters", "log_interval", "checkpoint_interval")
        if self.max_steps is not None and self.max_steps <= 0:
            raise LlmlabError(f"--max-steps must be positive, got {self.max_steps}", "pass e.g. 2000")
        if self.max_time is not None and self.max_time <= 0:
            raise LlmlabError(f"--max-time must be positive, got {self.max_time}", "pass seconds, e.g. 180")

    def with_default_budget(self):
        """Neither budget given: DEFAULT_MAX_STEPS."""
        if self.max_steps is None and self.max_time is None:
            return dataclasses.replace(self, max_steps=DEFAULT_MAX_STEPS)
        return self


@dataclass
class RunConfig(Validated):
    """Where the run lives and how it executes."""

    out: str = option("runs/default", "run folder for the checkpoint, metrics.jsonl and loss.png")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")
    dtype: str = option("auto", "auto (bf16 where the hardware has it), fp32, bf16 or fp16 (CUDA only)")
    compile: bool = option(False, "torch.compile the model (slow first step, faster after)")
    seed: int = option(0, "seed for initialisation, data order and dropout")
    resume: bool = option(False, "continue the run in --out exactly where it stopped")
    overwrite: bool = option(False, "replace a checkpoint already in --out")
    check_memory_plan: bool = option(
        False,
        "on CPU, measure the allocator's peak of step 3 against `plan memory` (the CPU profiler; on CUDA the "
        "check is free and always on)",
    )
    report_to: list[str] = option(
        help="also log metrics to tensorboard, mlflow or wandb (offline unless WANDB_MODE says); repeatable",
        default_factory=list,
    )

    def validate(self) -> None:
        super().validate()
        check_trackers(self.report_to)


@dataclass
class DistConfig(Validated):
    """Data parallelism under torchrun."""

    strategy: str = option(
        "none", "none, ddp or fsdp; launch with: torchrun --nproc_per_node N -m llmlab pretrain ... --strategy ddp"
    )
    zero: int = option(
        3, "fsdp: 3 shards parameters, gradients and optimizer states; 2 keeps parameters gathered in fwd+bwd"
    )
    fsdp_mixed_precision: str | None = option(None, "fsdp: bf16 or fp16 parameters in compute, fp32 gradient reduction")


@dataclass
class TrainerConfig(RunConfig, DistConfig, BudgetConfig, ScheduleConfig, OptimConfig):
    """Everything the training core reads; a recipe's config adds its data and model options."""
