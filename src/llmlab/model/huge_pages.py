"""Weights in 2 MiB pages, for decoding on CPUs.

A batch-1 decoding step reads every weight once per token. In the 4 KiB pages that the allocator hands
out, 164 MB of bf16 weights span 40,000 pages, each a TLB miss, and under a hypervisor every miss walks
two page tables. Measured on this 2-core VM (`bench/decode_overheads.py`, bench/RESULTS.md): the 82M
Llama's bf16 matrices stream through llmlab's kernel 1.2x faster from memory the kernel backs with 2 MiB
pages than from ordinary memory (27-28 against 34-35 GB/s; up to 1.9x in single experiments, where the
copies landed elsewhere: placement moves these figures on this VM). Linux gives such pages to a mapping that
asks for them with madvise(MADV_HUGEPAGE) wherever transparent huge pages are `madvise` (the usual default) or `always`;
elsewhere (`never`, other systems) the copy is ordinary memory and nothing is lost but the copy's time.

`into_huge_pages` moves a module's large tensors into one such mapping, in place: each parameter and
buffer keeps its identity (optimizers, tied weights and the packed copy that shares them are unaffected)
and gets its own storage inside the mapping (so safetensors does not see them as shared).
"""

from __future__ import annotations

import mmap
import sys
import weakref

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
    _REGIONS.append((_address(region) + start, size, weakref.ref(region)))
    return size


# the mappings into_huge_pages made, (first byte, length, the mapping while it lives): a tensor already in one
# is not moved again, and an address reused after a mapping was freed is not taken for one
_REGIONS: list[tuple[int, int, weakref.ref]] = []


def _placed(address: int) -> bool:
    _REGIONS[:] = [r for r in _REGIONS if r[2]() is not None]
    return any(start <= address < start + size for start, size, _ in _REGIONS)


def _large_cpu_tensors(module: nn.Module) -> list[list[torch.Tensor]]:
    """The large, dense CPU tensors, grouped by the storage they fill (tied weights, a buffer that is a
    parameter's `.data`: one group, moved together). A storage moves only if every tensor on it is a plain
    tensor that fills it and nothing outside the module holds it: a view (a transpose, a slice) or an alias
    made elsewhere (a `.detach()`) would go on reading the old memory. Tensor subclasses (DTensor, a packed
    quantized layout) keep their own placement."""
    groups: dict[int, list[torch.Tensor]] = {}
    unmovable: set[int] = set()
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "cpu" or tensor.layout != torch.strided:
            continue
        storage = tensor.untyped_storage()
        plain = type(tensor) in (torch.Tensor, nn.Parameter) and tensor.is_contiguous()
        if not plain or tensor.storage_offset() or tensor.nbytes != storage.nbytes():
            unmovable.add(storage.data_ptr())
        group = groups.setdefault(storage.data_ptr(), [])
        if all(t is not tensor for t in group):
            group.append(tensor)
    return [group for address, group in groups.items() if address not in unmovable and
            group[0].nbytes >= MIN_BYTES and _alone(group) and not _placed(address)]  # fmt: skip


def _alone(group: list[torch.Tensor]) -> bool:
    """Whether the group's tensors are alike and the only ones on their storage (its use count: one per
    tensor, plus the reference it is read through)."""
    if any(t.shape != group[0].shape or t.dtype != group[0].dtype for t in group):
        return False
    count = getattr(torch._C, "_storage_Use_Count", None)
    return count is None or count(group[0].untyped_storage()._cdata) - 1 == len(group)


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
