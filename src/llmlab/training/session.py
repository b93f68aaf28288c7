"""Where a run executes: one process or a torchrun rank, its device and number format, who speaks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from llmlab.device import resolve_device, resolve_dtype
from llmlab.errors import LlmlabError
from llmlab.progress import ProgressLine
from llmlab.training.config import TrainerConfig
from llmlab.training.distributed import DistContext, barrier, init_distributed, wrap_model


@dataclass
class Session:
    ctx: DistContext | None  # None: one process
    device: torch.device
    dtype: torch.dtype
    progress: ProgressLine
    log: Callable[[str], None]  # rank 0's messages; silent on the other ranks

    @property
    def main(self) -> bool:
        return self.ctx is None or self.ctx.is_main

    @property
    def world(self) -> int:
        return self.ctx.world if self.ctx is not None else 1

    @contextlib.contextmanager
    def rank0_first(self) -> Iterator[None]:
        """Rank 0 does the work first (training a tokenizer, writing a token cache), the others then
        read what it wrote; one process just does it."""
        if self.ctx is not None and not self.main:
            barrier(self.ctx)
        yield
        if self.ctx is not None and self.main:
            barrier(self.ctx)

    def wrap(self, model: nn.Module, fsdp_mixed_precision: str | None = None, detail: str = "") -> nn.Module:
        """What a step calls: the model itself, or its DDP wrapper (FSDP shards the model in place)."""
        if self.ctx is None:
            return model
        forward = wrap_model(model, self.ctx, fsdp_mixed_precision)
        ctx = self.ctx
        zero = f" (ZeRO-{ctx.zero})" if ctx.sharded else ""
        self.log(f"distributed: {ctx.world} ranks, {ctx.strategy}{zero}" + (f", {detail}" if detail else ""))
        return forward

    def rows(self, batch_size: int) -> slice | None:
        """This rank's rows of a global batch of `batch_size` x world rows (None: all, one process)."""
        if self.ctx is None:
            return None
        return slice(self.ctx.rank * batch_size, (self.ctx.rank + 1) * batch_size)


def start_session(cfg: TrainerConfig, log: Callable[[str], None] | None = None) -> Session:
    """The process group (under torchrun), device and dtype; refuses combinations that cannot train."""
    ctx = init_distributed(cfg.strategy, cfg.zero, cfg.device)
    if ctx is not None and cfg.optimizer == "muon":
        raise LlmlabError("Muon is not supported with --strategy ddp/fsdp", "use --optimizer adamw")
    progress = ProgressLine()
    main = ctx is None or ctx.is_main
    speak = (log or progress.message) if main else (lambda message: None)  # only rank 0 speaks
    device = ctx.device if ctx is not None else resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.float16 and device.type != "cuda":
        raise LlmlabError("fp16 training needs a CUDA GPU (it relies on loss scaling)", "use --dtype bf16 or fp32")
    return Session(ctx, device, dtype, progress, speak)
