"""The run folder's lineage and model card, kept current at every save: the recipe says what its stage is
(`Job.stage`: kind, method, base, data), the trainer adds what it measured (steps, tokens, FLOPs, time, the
best validation loss)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from llmlab.checkpoint.card import record_stage
from llmlab.checkpoint.lineage import Stage, base_lineage, read_lineage
from llmlab.model.lora import trainable_counts
from llmlab.training.state import TrainerState


class StageRecorder:
    """Writes `lineage.json` (the base's stages, then this run's) and `README.md` into the run folder."""

    def __init__(self, stage: Stage, out: Path, resuming: bool) -> None:
        self.stage, self.out = stage, out
        recorded = read_lineage(out) if resuming else []
        # a resumed run keeps the history it started with, even if its base has moved since
        self.history = recorded[:-1] if recorded else base_lineage(stage.base)

    def record(self, state: TrainerState, model: nn.Module, flops_per_token: float | None) -> None:
        tokens = state.tokens_seen
        flops = flops_per_token * tokens if flops_per_token else estimated_flops(model, tokens)
        best = state.best_val_loss if state.best_val_loss != float("inf") else None
        done = dataclasses.replace(self.stage, steps=state.step, tokens=tokens, flops=flops,
                                   seconds=round(state.elapsed, 1), validation_loss=best)  # fmt: skip
        record_stage(self.out, self.history, done)


def estimated_flops(model: nn.Module, tokens: int) -> float:
    """Training FLOPs where the recipe has no exact count: 2N per token forward, 2N backward through every
    weight (activation gradients), 2N' more for the gradients of the N' trainable ones (Kaplan et al., 2020),
    so a frozen base costs 4N per token and full training the usual 6N."""
    trainable, total = trainable_counts(model)  # a quantized base's weights (buffers) counted too
    return float((4 * total + 2 * trainable) * tokens)
