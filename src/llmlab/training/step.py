"""One optimizer step and one evaluation, for any recipe: the recipe gives batches and a loss, the
step does forward, loss, backward over the accumulated micro-batches, clipping, loss scaling and the
optimizer step. Distributed ranks normalise by the global count of labelled tokens."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from llmlab.device import autocast
from llmlab.training.distributed import DistContext, all_reduce_mean
from llmlab.training.optim import optimizer_step


class TrainingBatch(Protocol):
    """What the core needs of a recipe's batch: counts for normalising and throughput, and a move.
    `labelled` is what the loss is summed over (labelled tokens; preference pairs for a pairwise loss),
    so a rank's share divided by the global count / world reproduces the one-process mean."""

    labelled: int
    tokens: int

    def to(self, device: torch.device) -> TrainingBatch: ...


# (model, batch, normalizer) -> loss, or (loss, metrics): metrics are numbers a recipe wants logged next to
# the loss (DPO's reward accuracy, distillation's KL), averaged like the loss and written to metrics.jsonl
LossFn = Callable[[nn.Module, Any, float | None], "torch.Tensor | tuple[torch.Tensor, dict[str, Any]]"]
BatchSource = Callable[[bool, int, int], Any]  # (validation?, step, micro) -> batch


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches (and ranks)
    tokens: int  # tokens read, summed over ranks
    skipped: bool  # fp16: the loss scaler threw the step away
    last: Any  # the last micro-batch: its shapes for the memory plan
    metrics: dict[str, float] = field(default_factory=dict)  # the loss function's, averaged like the loss


@dataclass
class StepParts:
    """What a step works on: the module to call (DDP-wrapped or compiled), the plain model, optimizers."""

    forward: nn.Module
    model: nn.Module
    optimizers: list[torch.optim.Optimizer]
    scaler: torch.amp.GradScaler
    loss: LossFn
    device: torch.device
    dtype: torch.dtype
    ctx: DistContext | None = None


def global_counts(batch: TrainingBatch, ctx: DistContext | None) -> tuple[float | None, int]:
    """(loss normaliser, tokens read) for this rank's share of a global batch: the normaliser is the
    global labelled count / world (None for one process: the mean), the tokens are summed over ranks."""
    if ctx is None:
        return None, batch.tokens
    counts = torch.tensor([batch.labelled, batch.tokens], dtype=torch.float64, device=ctx.device)
    torch.distributed.all_reduce(counts)
    return float(counts[0]) / ctx.world, int(counts[1])


def train_step(
    parts: StepParts,
    draw: Callable[[int], TrainingBatch],
    accumulate: int,
    grad_clip: float,
    before_zero_grad: Callable[[], None] | None = None,
) -> StepResult:
    """Forward and backward over `accumulate` micro-batches (`draw(micro)`, one alive at a time, each
    loss divided by their number), then one optimizer step."""
    loss_sum, tokens, local, metrics = 0.0, 0, None, Metrics()
    for micro in range(accumulate):
        local = draw(micro)
        normalizer, read = global_counts(local, parts.ctx)
        tokens += read
        with autocast(parts.device, parts.dtype):
            loss = metrics.take(parts.loss(parts.forward, local.to(parts.device), normalizer)) / accumulate
        parts.scaler.scale(loss).backward()
        loss_sum += loss.item()
    loss_sum = all_reduce_mean(loss_sum, parts.ctx)
    skipped = optimizer_step(parts.model, parts.optimizers, parts.scaler, grad_clip, before_zero_grad)
    return StepResult(loss_sum, tokens, skipped, local, metrics.means(parts.ctx))


@torch.no_grad()
def evaluate_loss(parts: StepParts, batches: BatchSource, iters: int) -> tuple[float, dict[str, float]]:
    """Mean loss (and the loss function's metrics) over a fixed set of validation batches, the same
    ones at every evaluation."""
    parts.forward.eval()
    losses, metrics = [], Metrics()
    for i in range(iters):
        local = batches(True, 2**31 + i, 0)
        normalizer, _ = global_counts(local, parts.ctx)
        with autocast(parts.device, parts.dtype):
            loss = metrics.take(parts.loss(parts.forward, local.to(parts.device), normalizer))
        losses.append(all_reduce_mean(loss.item(), parts.ctx))
    parts.forward.train()
    return sum(losses) / len(losses), metrics.means(parts.ctx)


class Metrics:
    """The numbers a loss function returns beside its loss, summed over calls and averaged per call
    (over micro-batches, evaluation batches and ranks)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.calls = 0

    def take(self, output: torch.Tensor | tuple[torch.Tensor, dict[str, Any]]) -> torch.Tensor:
        """The loss of a loss function's output; its metrics, if any, are kept."""
        if not isinstance(output, tuple):
            return output
        loss, extra = output
        self.calls += 1
        for name, value in extra.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
        return loss

    def means(self, ctx: DistContext | None) -> dict[str, float]:
        return {name: all_reduce_mean(total / self.calls, ctx) for name, total in sorted(self.sums.items())}
