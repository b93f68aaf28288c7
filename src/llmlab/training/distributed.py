"""Distributed training on PyTorch's own engine: DDP and FSDP2 (ZeRO-2/3), launched with torchrun.

    torchrun --nproc_per_node N -m llmlab pretrain ... --strategy ddp|fsdp [--zero 2|3]

- The process group comes from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR...): NCCL on
  CUDA, gloo on CPU. Every rank gets a disjoint slice of the same global batch, so N ranks with
  batch b train exactly like one process with batch N*b (losses are normalised by the global count
  of labelled tokens, so gradient averaging gives the one-process gradient for every objective).
- DDP keeps the whole model on every rank and all-reduces gradients. FSDP2 (`fully_shard`, per
  transformer block, then the root) shards parameters, gradients and optimizer states; `--zero 2`
  keeps parameters gathered between forward and backward (reshard_after_forward=False).
- Resumable checkpoints are sharded with torch.distributed.checkpoint (`sharded/` in the run folder,
  loadable at any world size, one process included); rank 0 also writes the usual consolidated
  model.safetensors so every other command can use the run.
"""

from __future__ import annotations

import datetime
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from llmlab.errors import LlmlabError

STRATEGIES = ("none", "ddp", "fsdp")


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    strategy: str
    zero: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp"


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(strategy: str, zero: int, device: str = "auto", timeout_s: float = 300) -> DistContext | None:
    """The process group for `strategy`, or None for one process. Refuses strategies without torchrun."""
    if strategy not in STRATEGIES:
        raise LlmlabError(f"unknown strategy {strategy!r}", f"use one of: {', '.join(STRATEGIES)}")
    if zero not in (2, 3):
        raise LlmlabError(
            f"--zero must be 2 or 3, got {zero}", "ZeRO-1 is DDP with sharded optimizer states: use 2 or 3"
        )
    if strategy == "none":
        if launched_by_torchrun() and int(os.environ["WORLD_SIZE"]) > 1:
            raise LlmlabError(
                "launched by torchrun with several processes but no --strategy", "pass --strategy ddp or fsdp"
            )
        return None
    if not launched_by_torchrun():
        raise LlmlabError(
            f"--strategy {strategy} needs to be launched by torchrun",
            f"run: torchrun --nproc_per_node N -m llmlab pretrain ... --strategy {strategy}",
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(
        rank=dist.get_rank(),
        world=dist.get_world_size(),
        local_rank=local_rank,
        device=torch.device("cuda", local_rank) if use_cuda else torch.device("cpu"),
        strategy=strategy,
        zero=zero,
    )


def wrap_model(model: nn.Module, ctx: DistContext, mixed_precision: str | None) -> nn.Module:
    """DDP around the model, or FSDP2 applied to every block and then to the root (in place)."""
    if ctx.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        if mixed_precision:
            raise LlmlabError("--fsdp-mixed-precision is for --strategy fsdp", "use --dtype bf16 with ddp")
        return DistributedDataParallel(model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy()
    if mixed_precision:
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
        if mixed_precision not in dtypes:
            raise LlmlabError(f"--fsdp-mixed-precision {mixed_precision!r}", "use bf16 or fp16")
        policy = MixedPrecisionPolicy(param_dtype=dtypes[mixed_precision], reduce_dtype=torch.float32)
    reshard = ctx.zero == 3
    for module in model.modules():
        if type(module).__name__ == "Block":
            fully_shard(module, reshard_after_forward=reshard, mp_policy=policy)
    fully_shard(model, reshard_after_forward=reshard, mp_policy=policy)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def all_reduce_mean(value: float, ctx: DistContext | None) -> float:
    if ctx is None:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / ctx.world


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None:
        dist.barrier()


def local_bytes(tensors) -> int:
    """Bytes of this rank's share of some tensors (the local shard of a DTensor)."""
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = t.to_local() if hasattr(t, "to_local") else t
        total += local.numel() * local.element_size()
    return total


def model_state_bytes(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> dict[str, int]:
    """This rank's actual bytes of parameters, gradients and optimizer states."""
    states = [v for opt in optimizers for s in opt.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    return {
        "weights": local_bytes(model.parameters()),
        "gradients": local_bytes(p.grad for p in model.parameters()),
        "optimizer states": local_bytes(states),
    }


def gather_objects(value, ctx: DistContext | None) -> list:
    if ctx is None:
        return [value]
    out = [None] * ctx.world
    dist.all_gather_object(out, value)
    return out


# -- checkpoints -------------------------------------------------------------------------------------


def save_sharded(model: nn.Module, optimizers: list[torch.optim.Optimizer], folder: Path) -> None:
    """Model and optimizer states, each rank writing its shards (torch.distributed.checkpoint)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizers)
    if folder.exists() and (not dist.is_initialized() or dist.get_rank() == 0):
        shutil.rmtree(folder)
    if dist.is_initialized():
        dist.barrier()
    with warnings.catch_warnings():  # one process writing shards is intended (a resumed sharded run)
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))


def load_sharded(model: nn.Module, optimizers: list[torch.optim.Optimizer], folder: Path) -> None:
    """Load a sharded checkpoint written at any world size into this (possibly differently sharded) model."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizers)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():  # one process reading shards is intended, not a mistake
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizers, model_state_dict=state["model"], optim_state_dict=state["optim"])


def save_rng(folder: Path, ctx: DistContext | None) -> None:
    """Every rank's random-number state (dropout), written by rank 0 next to the shards."""
    from safetensors.torch import save_file

    states = gather_objects(torch.get_rng_state(), ctx)
    if ctx is None or ctx.is_main:
        save_file({f"rng.rank{r}": state for r, state in enumerate(states)}, folder / "rng.safetensors")


def load_rng(folder: Path, ctx: DistContext | None) -> bool:
    """Restore this rank's random-number state if the checkpoint was written at the same world size."""
    from safetensors.torch import load_file

    file = folder / "rng.safetensors"
    if not file.is_file():
        return False
    states = load_file(file)
    rank, world = (ctx.rank, ctx.world) if ctx is not None else (0, 1)
    if len(states) != world:
        return False
    torch.set_rng_state(states[f"rng.rank{rank}"])
    return True


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights as plain CPU tensors (on rank 0; other ranks get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)
