"""What a run has done so far, in one object instead of closures: saved in trainer_state.json."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class TrainerState:
    """The counters a resumed run continues from (the optimizer moments and RNG live in tensors)."""

    step: int = 0
    elapsed: float = 0.0  # seconds of training, evaluation included
    best_val_loss: float = math.inf
    tokens_seen: int = 0
    skipped_steps: int = 0  # fp16 steps the loss scaler threw away

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> TrainerState:
        return cls(
            step=saved["step"],
            elapsed=saved["elapsed"],
            best_val_loss=saved["best_val_loss"],
            tokens_seen=saved.get("tokens_seen", 0),
            skipped_steps=saved.get("skipped_steps", 0),
        )


def rng_tensors() -> dict[str, torch.Tensor]:
    """The random-number generators' states (dropout masks of a resumed run equal the original's)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
