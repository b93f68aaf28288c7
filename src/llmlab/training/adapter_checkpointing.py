"""Save and resume an adapter run: the adapter folder (not the frozen base, which the folder names and
fingerprints) plus what an exact resume needs, the optimizer moments of the adapter and the RNG states.
One process or DDP (rank 0 writes; every rank holds the whole small adapter)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from llmlab.checkpoint.adapter import AdapterInfo, read_adapter_tensors, save_adapter
from llmlab.model.adapters import adapter_state, load_adapter_state
from llmlab.training.checkpointing import Checkpointer
from llmlab.training.distributed import barrier
from llmlab.training.optim import load_optimizers, optimizer_tensors
from llmlab.training.state import TrainerState, restore_rng, rng_tensors


@dataclass
class AdapterCheckpointer(Checkpointer):
    info: AdapterInfo | None = None

    def save(
        self, model: nn.Module, optimizers: list[torch.optim.Optimizer], trainer_state: dict[str, Any], reason: str
    ) -> None:
        if self.ctx is None or self.ctx.is_main:
            tensors, groups = optimizer_tensors(optimizers)
            state = {**trainer_state, "optimizer_param_groups": groups}
            save_adapter(self.out, self.info, adapter_state(model), self.tokenizer, self.generation, state,
                         {**tensors, **rng_tensors()})  # fmt: skip
            self.log(f"adapter: {self.out} at step {trainer_state['step']} ({reason})")
        if self.ctx is not None:
            barrier(self.ctx)

    def restore(
        self,
        model: nn.Module,
        optimizers: list[torch.optim.Optimizer],
        scaler: torch.amp.GradScaler,
        saved: dict[str, Any],
        device: torch.device,
    ) -> TrainerState:
        if saved.get("scaler"):
            scaler.load_state_dict(saved["scaler"])
        load_adapter_state(model, {k: v.to(device) for k, v in read_adapter_tensors(self.out).items()})
        tensors = load_file(self.out / "optimizer.safetensors")
        load_optimizers(optimizers, {k: v.to(device) for k, v in tensors.items()}, saved["optimizer_param_groups"])
        restore_rng(tensors)
        self.log(f"resuming {self.out} at step {saved['step']}")
        return TrainerState.from_dict(saved)
