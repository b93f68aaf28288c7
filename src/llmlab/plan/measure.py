"""Measuring memory as the allocator sees it: torch.cuda's peak counter on a GPU, and on CPU (which keeps
no such counter) the profiler's record of every allocation and free, with its size, in time order."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def silent_stderr() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _start_profiler():
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
    with silent_stderr():  # kineto prints a line on stderr at start and at stop
        prof.start()
    return prof


def _stop_profiler(prof) -> tuple[list[tuple[int, int]], dict[str, tuple[int, int]]]:
    """Allocation events (time, +/-bytes) in time order, and the spans of `llmlab.peak.*` regions."""
    from torch._C._profiler import _EventType

    with silent_stderr():
        prof.stop()
    events, regions, stack = [], {}, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        elif node.name.startswith("llmlab.peak."):
            regions[node.name.removeprefix("llmlab.peak.")] = (node.start_time_ns, node.end_time_ns)
    return sorted(events), regions


def cpu_allocation_timeline(run: Callable[[], None]) -> tuple[list[tuple[int, int]], dict[str, tuple[int, int]]]:
    """Every CPU allocation (+bytes) and free (-bytes) while `run` ran, in time order, from the profiler's
    memory events, and the time span of each `record_function` region named `llmlab.peak.*`: the
    allocator's own record, the CPU counterpart of `torch.cuda.max_memory_allocated`."""
    prof = _start_profiler()
    try:
        run()
    finally:
        timeline = _stop_profiler(prof)
    return timeline


def _highest_rise(events: list[tuple[int, int]]) -> int:
    held = peak = 0
    for _, size in events:
        held += size
        peak = max(peak, held)
    return peak


def cpu_allocator_peak(run: Callable[[], None]) -> int:
    """Highest bytes the CPU allocator held above its starting point while `run` ran."""
    return _highest_rise(cpu_allocation_timeline(run)[0])


class PeakWindow:
    """The allocator's peak between `open()` and `close()`: torch.cuda's own counter on a GPU; on CPU the
    bytes alive at the opening (`alive`, counted by the caller) plus the highest rise the profiler's
    allocation events show."""

    def __init__(self, device: torch.device, alive: int = 0) -> None:
        self.device, self.alive, self._prof = device, alive, None

    def open(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._prof = _start_profiler()

    def close(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device)
        return self.alive + _highest_rise(_stop_profiler(self._prof)[0])
