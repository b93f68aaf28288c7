"""Weights in 2 MiB pages, for decoding on CPUs.

A batch-1 decoding step reads every weight once per token. In the 4 KiB pages that the allocator hands
out, 164 MB of bf16 weights span 40,000 pages, each a TLB miss, and under a hypervisor every miss walks
two page tables. Measured on this 2-core VM (bench/RESULTS.md, issue 21): the 82M Llama's bf16 matrices
stream through llmlab's kernel at ~31 GB/s from ordinary memory and at ~58 GB/s once copied into memory
the kernel backs with 2 MiB pages. Linux gives such pages to a mapping that asks for them with
madvise(MADV_HUGEPAGE) wherever transparent huge pages are `madvise` (the usual default) or `always`;
elsewhere (`never`, other systems) the copy is ordinary memory and nothing is lost but the copy's time.

`into_huge_pages` moves a module's large tensors into one such mapping, in place: each parameter and
buffer keeps its identity (optimizers, tied weights and the packed copy that shares them are unaffected)
and gets its own storage inside the mapping (so safetensors does not see them as shared).
"""

from __future__ import annotations

import mmap
import sys

import torch
from torch import nn

HUGE_PAGE = 2 << 20
MIN_BYTES = 256 << 10  # smaller tensors (norms, biases) are read from cache, not streamed
_ALIGN = 64


def into_huge_pages(module: nn.Module) -> int:
    """Move the module's CPU tensors of >= MIN_BYTES into a 2 MiB-page mapping; the bytes moved (0 where
    the system offers no such pages, or the tensors are there already)."""
    if not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"):
        return 0
    groups = _large_cpu_tensors(module)
    offsets, size = [], 0
    for group in groups:
        offsets.append(size)
        size += -(-group[0].nbytes // _ALIGN) * _ALIGN
    if not size:
        return 0
    try:
        region = mmap.mmap(-1, size + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        region.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):  # no memory for it, or a kernel without the advice: stay where they are
        return 0
    start = (-_address(region)) % HUGE_PAGE  # the first tensor at a 2 MiB boundary
    with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, even when asked inside inference
        for group, offset in zip(groups, offsets):
            _move(group, region, start + offset)
    _PLACED.update(group[0].data_ptr() for group in groups)
    return size


_PLACED: set[int] = set()  # where into_huge_pages put tensors (an address reused after one is freed: a skip)


def _large_cpu_tensors(module: nn.Module) -> list[list[torch.Tensor]]:
    """The large, dense CPU tensors, grouped by the storage they fill (tied weights, a buffer that is a
    parameter's `.data`: one group, moved together). Only plain tensors that fill their whole storage: a
    view into a larger one cannot move without splitting what it shares, and a tensor subclass (DTensor,
    a packed quantized layout) keeps its own placement."""
    groups: dict[int, list[torch.Tensor]] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        if type(tensor) not in (torch.Tensor, nn.Parameter) or tensor.device.type != "cpu":
            continue
        if tensor.layout != torch.strided or tensor.nbytes < MIN_BYTES or not tensor.is_contiguous():
            continue
        if tensor.storage_offset() or tensor.nbytes != tensor.untyped_storage().nbytes():
            continue
        group = groups.setdefault(tensor.data_ptr(), [])
        if all(t is not tensor for t in group):
            group.append(tensor)
    return [g for ptr, g in groups.items() if ptr not in _PLACED and _alike(g)]


def _alike(group: list[torch.Tensor]) -> bool:
    return all(t.shape == group[0].shape and t.dtype == group[0].dtype for t in group)


def _address(region: mmap.mmap) -> int:
    import ctypes

    return ctypes.addressof(ctypes.c_char.from_buffer(region))


def _move(group: list[torch.Tensor], region: mmap.mmap, offset: int) -> None:
    """Copy the group's data into the region at offset and make the region its tensors' storage."""
    first = group[0]
    placed = torch.frombuffer(region, dtype=first.dtype, count=first.numel(), offset=offset)
    placed = placed.view(first.shape).copy_(first)
    for tensor in group:
        tensor.data = placed
