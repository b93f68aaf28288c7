"""Save and resume an adapter run: the adapter folder (not the frozen base, which the folder names and
fingerprints) plus what an exact resume needs, the optimizer moments of the adapter and the RNG states.
One process or DDP (rank 0 writes; every rank holds the whole small adapter). The frame (optimizer
tensors, RNG, loss scale, distributed barrier) is `Checkpointer`'s; only what is written differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from llmlab.checkpoint.adapter import AdapterInfo, read_adapter_tensors, save_adapter
from llmlab.model.adapters import adapter_state, load_adapter_state
from llmlab.training.checkpointing import Checkpointer


@dataclass
class AdapterCheckpointer(Checkpointer):
    info: AdapterInfo | None = None
    shards_when_distributed: ClassVar[bool] = False
    kind: ClassVar[str] = "adapter"

    def _write(self, model: nn.Module, trainer_state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        save_adapter(self.out, self.info, adapter_state(model), self.tokenizer, self.generation, trainer_state, tensors)

    def _read_weights(self, model: nn.Module, device: torch.device) -> None:
        load_adapter_state(model, {k: v.to(device) for k, v in read_adapter_tensors(self.out).items()})


def run_checkpointer(out, tokenizer, generation, session, info: AdapterInfo | None) -> Checkpointer:
    """What a recipe saves with: the whole model (`info` None: full training), or the adapter folder."""
    if info is None:
        return Checkpointer(out, tokenizer, generation, session.ctx, session.log)
    return AdapterCheckpointer(out, tokenizer, generation, session.ctx, session.log, info)
