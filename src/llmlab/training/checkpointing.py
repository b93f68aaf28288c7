"""Save and resume a run's folder: the model, tokenizer, generation defaults and trainer state every
later stage reads, plus what an exact resume needs (optimizer moments, loss scale, RNG states).

One process writes `optimizer.safetensors`; distributed ranks write `sharded/` (torch.distributed
checkpoint, loadable at any world size) and rank 0 the consolidated model next to it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from llmlab.checkpoint.adapter import is_adapter
from llmlab.checkpoint.folder import load_weights, save_checkpoint, verify_checkpoint, verify_manifest
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.model import build_model
from llmlab.tokenizer import TextTokenizer
from llmlab.training.distributed import (
    DistContext,
    barrier,
    full_model_state,
    load_rng,
    load_sharded,
    save_rng,
    save_sharded,
)
from llmlab.training.optim import load_optimizers, optimizer_tensors
from llmlab.training.state import TrainerState, restore_rng, rng_tensors

KEPT = "kept."  # a recipe's own resume state among the optimizer's tensors


def read_resumable(out: Path) -> dict[str, Any]:
    """The trainer_state.json of a run that can be resumed, or a one-line error saying why not."""
    verify_manifest(out) if is_adapter(out) else verify_checkpoint(out)
    resumable = (out / "optimizer.safetensors").is_file() or (out / "sharded").is_dir()
    if not (out / "trainer_state.json").is_file() or not resumable:
        raise LlmlabError(f"{out} has no trainer state to resume from", "train without --resume")
    return json.loads((out / "trainer_state.json").read_text())


def refuse_existing(out: Path, overwrite: bool) -> None:
    """A new run never replaces a checkpoint by accident."""
    if ((out / "config.json").exists() or is_adapter(out)) and not overwrite:
        raise LlmlabError(
            f"{out} already holds a checkpoint",
            "pass --resume to continue it, --overwrite to replace it, or another --out",
        )


@dataclass
class Checkpointer:
    """Writes and restores one run folder; `extra` (the recipe's options) goes into trainer_state.json."""

    out: Path
    tokenizer: TextTokenizer
    generation: GenerationConfig
    ctx: DistContext | None
    log: Callable[[str], None]  # rank 0's voice (the session's): other ranks stay silent

    # Distributed runs write torch.distributed shards (FSDP needs them); a subclass whose state is small
    # and whole on every rank (an adapter) sets this False and rank 0 writes it as one process would.
    shards_when_distributed: ClassVar[bool] = True
    kind: ClassVar[str] = "checkpoint"  # what the log line calls a save

    @property
    def sharded_dir(self) -> Path:
        return self.out / "sharded"  # resumable state of distributed runs, any world size

    def save(
        self,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        trainer_state: dict[str, Any],
        reason: str,
        kept: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """`kept`: a recipe's own resume state (`Job.kept`), stored with the optimizer's tensors."""
        if kept and self.ctx is not None:
            raise LlmlabError("this recipe's resume state is saved by one process", "run it without torchrun")
        if self.ctx is not None and self.shards_when_distributed:
            self._save_sharded(model, optimizers, trainer_state, int(trainer_state["step"]))
        else:
            if self.ctx is None or self.ctx.is_main:
                tensors, groups = optimizer_tensors(optimizers)
                trainer_state = {**trainer_state, "optimizer_param_groups": groups}
                extra = {f"{KEPT}{k}": v.detach().cpu().contiguous() for k, v in (kept or {}).items()}
                self._write(model, trainer_state, {**tensors, **rng_tensors(), **extra})
            if self.ctx is not None:
                barrier(self.ctx)
        self.log(f"{self.kind}: {self.out} at step {trainer_state['step']} ({reason})")

    def _write(self, model: nn.Module, trainer_state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """The folder of one process: the model, its trainer state and optimizer/RNG tensors."""
        save_checkpoint(self.out, model, self.tokenizer, self.generation, trainer_state, tensors)
        shutil.rmtree(self.sharded_dir, ignore_errors=True)  # a stale one would win the next --resume

    def _read_weights(self, model: nn.Module, device: torch.device) -> None:
        """What `_write` saved of the model, back into it."""
        load_weights(model, self.out / "model.safetensors")
        model.to(device)

    def _save_sharded(self, model, optimizers, trainer_state: dict[str, Any], step: int) -> None:
        """Every rank writes its shards; rank 0 the consolidated checkpoint, then swaps the shards in."""
        staging = self.out.parent / f".{self.out.name}.sharded-{step}"
        save_sharded(model, optimizers, staging)
        save_rng(staging, self.ctx)
        full = full_model_state(model)
        if self.ctx.is_main:
            plain = build_model(model.config)
            plain.load_state_dict(full)
            save_checkpoint(self.out, plain, self.tokenizer, self.generation, trainer_state)
            shutil.rmtree(self.sharded_dir, ignore_errors=True)
            os.replace(staging, self.sharded_dir)
        barrier(self.ctx)

    def restore(
        self,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        scaler: torch.amp.GradScaler,
        saved: dict[str, Any],
        device: torch.device,
        kept: Any = None,
    ) -> TrainerState:
        """Weights, optimizer moments, RNG and loss scale of the run in `out`, as it was saved."""
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        if self.sharded_dir.is_dir():
            load_sharded(model, optimizers, self.sharded_dir)
            if not load_rng(self.sharded_dir, self.ctx):
                self.log("random-number state not restored (another world size): dropout masks will differ")
            self.log(
                f"resuming {self.out} at step {saved['step']} from its sharded checkpoint "
                f"(written by {saved.get('world', '?')} ranks)"
            )
            return TrainerState.from_dict(saved)
        self._read_weights(model, device)
        tensors = load_file(self.out / "optimizer.safetensors")
        own = {k[len(KEPT) :]: tensors.pop(k) for k in list(tensors) if k.startswith(KEPT)}
        if kept is not None:
            kept.load(own)
        load_optimizers(optimizers, {k: v.to(device) for k, v in tensors.items()}, saved["optimizer_param_groups"])
        restore_rng(tensors)
        self.log(f"resuming {self.out} at step {saved['step']}")
        return TrainerState.from_dict(saved)


def with_saved_options(cls: type, given: dict[str, Any]):
    """A recipe config from the options `given`; with `resume`, the options not given again are those of
    the run being resumed (its trainer_state.json), so `--resume` alone continues it as it was."""
    base = cls().to_dict()
    if given.get("resume"):
        state = Path(given.get("out", base["out"])) / "trainer_state.json"
        if state.is_file():
            saved = json.loads(state.read_text()).get("train_config", {})
            base = {**base, **{k: v for k, v in saved.items() if k in base}}
        base["overwrite"] = False
    return cls(**{**base, **given})
