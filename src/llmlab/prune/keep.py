"""Recovery fine-tuning that keeps a pruned model sparse: the zeros `prune` left in the blocks' linear
layers are recorded before training and put back after every optimizer step (as Wanda's and SparseGPT's
recovery runs do), so the fine-tuned checkpoint has exactly the pruned pattern, 2:4 included. Without it a
full fine-tune refills every zero in its first step."""

from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.surgery import find_linears, linears_in_blocks
from llmlab.training.session import Session


class SparsityKeeper:
    """The zero pattern of a model's block linears; `restore()` zeroes those weights again. `record()` reads
    the pattern from the weights as they are: the pruned start, or the sparse weights a resume restored."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.masks: list[tuple[nn.Parameter, torch.Tensor]] = []

    def record(self) -> None:
        self.masks, seen = [], set()
        for _, _, _, linear in find_linears(self.model, linears_in_blocks):
            weight = linear.weight
            if id(weight) in seen:
                continue
            seen.add(id(weight))
            zeros = weight.detach() == 0
            if zeros.any():
                self.masks.append((weight, zeros))
        if not self.masks:
            raise LlmlabError("--keep-sparsity found no zero weights in the blocks' linear layers",
                              "fine-tune a checkpoint written by `llmlab prune` (unstructured or 2:4)")  # fmt: skip

    @property
    def zeros(self) -> int:
        return sum(int(mask.sum()) for _, mask in self.masks)

    @torch.no_grad()
    def restore(self) -> None:
        for weight, mask in self.masks:
            weight.masked_fill_(mask, 0.0)


def keeper_for_run(enabled: bool, model: nn.Module, session: Session, resuming: bool) -> SparsityKeeper | None:
    """--keep-sparsity of a training recipe (refused under FSDP, which shards the weights away). A new run
    records the zeros now, so a checkpoint without any is refused before anything is written; the trainer
    records them again at its start (`Job.on_start`), after a resume has restored the sparse weights."""
    if not enabled:
        return None
    if session.ctx is not None and session.ctx.sharded:
        raise LlmlabError("--keep-sparsity cannot follow weights sharded by FSDP", "use --strategy ddp or none")
    keeper = SparsityKeeper(model)
    if not resuming:
        keeper.record()
        session.log(f"keeping sparsity: {keeper.zeros:,} zero weights in {len(keeper.masks)} layers stay zero")
    return keeper
