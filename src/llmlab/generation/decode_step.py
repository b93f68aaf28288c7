"""The one-token decoding step that the generator and the server's engine both run, compiled once.

In eager PyTorch a batch-1 step of an 82M decoder spends a third of its time between kernels: ~40
small operations per layer, each a Python call and a dispatch. `torch.compile` (inductor) fuses them
into a few C++ loops around the weight products, which stay oneDNN's packed kernels
(`llmlab::packed_linear`) or PyTorch's integer ones. The step's shapes are those of a `SlotCache`: rows
and the number of positions read vary between calls and are marked dynamic, so one compiled graph
(plus one for a single row, which the compiler specialises) serves every call.

Compiled code is kept on disk under $LLMLAB_CACHE/inductor/torch-<version> (inductor's own FX-graph
and kernel caches), so a second process compiles in seconds; another torch version uses its own folder
and never reads a stale one. Where compilation fails (no C++ compiler, an operation inductor cannot
lower) the step says so in one line and runs eagerly: same numbers, slower.

Sampling, stop strings and streaming stay in the caller: the step returns logits.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from llmlab.generation.guarded_shortcut import Shortcut
from llmlab.model.cache import SlotCache


def inductor_cache_dir() -> Path:
    """Where compiled steps are kept: one folder per torch version, under $LLMLAB_CACHE."""
    root = Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab"))
    return root / "inductor" / f"torch-{torch.__version__}"


def _use_disk_cache() -> None:
    """Point inductor at our folder unless the user chose one. Inductor writes its default (a folder under
    /tmp) into the environment the first time anything asks it, so that value counts as no choice."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        default = default_cache_dir()
    except ImportError:  # another torch layout: only an unset variable is ours to set
        default = None
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(inductor_cache_dir())


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class DecodeStep:
    """Logits for one new token per row: `step(tokens, positions, slots, mask, cache)`.

    tokens and positions: (R, 1) ids and position ids; slots: (R,) where each row's keys are written;
    mask: (R, 1, 1, S) boolean, the cache positions each row reads (S <= cache.max_len). Returns (R, V) fp32.
    """

    def __init__(self, runner: nn.Module, compile: bool, report: Callable[[str], None] = _stderr) -> None:
        self.runner, self.report = runner, report
        self.compiled, self.failed = compile, False  # failed: compilation was tried and did not work
        self.compile_seconds: list[float] = []  # one entry per graph compiled (or read from the disk cache)
        self._fn: Callable = self._eager
        self._shortcut: Shortcut | None = None
        if compile:
            _use_disk_cache()
            try:
                own = _own_code(self._eager)
                # inductor's size asserts re-check every input's sizes and strides on each call (~0.13 ms a
                # token for an 82M model's ~180 inputs), which the guards checked just before
                self._fn = torch.compile(own, dynamic=None, options={"size_asserts": False})
                self._shortcut = Shortcut.of(own, per="cache")  # guarded_shortcut.py: why
            except Exception as exc:  # noqa: BLE001 - no backend here: decode eagerly, as any failure below
                self._fall_back(exc)

    def _eager(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
               cache: SlotCache) -> torch.Tensor:  # fmt: skip
        cache.decode(tokens.shape[0], slots, mask.shape[-1])
        return self.runner(tokens, positions, cache, mask, last_only=True)[:, -1].float()

    @torch.inference_mode()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
                 cache: SlotCache) -> torch.Tensor:  # fmt: skip
        if not self.compiled:
            return self._eager(tokens, positions, slots, mask, cache)
        # fresh tensors: the compiler guards on how an input was made (a view of another tensor, its strides),
        # and the generator, the engine and its warm-up each make theirs differently
        tokens, positions, slots, mask = (t.clone(memory_format=torch.contiguous_format)
                                          for t in (tokens, positions, slots, mask))  # fmt: skip
        _mark_dynamic(tokens, positions, slots, mask, cache)
        start, frames = time.perf_counter(), _frames_compiled()
        try:
            logits = None if self._shortcut is None else self._shortcut(tokens, positions, slots, mask, cache)
            if logits is None:  # no compiled entry fits (yet): dynamo finds one or compiles it
                logits = self._fn(tokens, positions, slots, mask, cache)
        except Exception as exc:  # inductor raises many kinds: the eager step tells a compile failure from a bug
            logits = self._eager(tokens, positions, slots, mask, cache)  # raises the model's own error, if any
            self._fall_back(exc)
            return logits
        if _frames_compiled() > frames:
            seconds = time.perf_counter() - start
            self.compile_seconds.append(seconds)
            self.report(f"compiled the decoding step for {tokens.shape[0]} row(s) in {seconds:.1f} s "
                        f"(cached under {os.environ.get('TORCHINDUCTOR_CACHE_DIR')})")  # fmt: skip
        return logits

    def _fall_back(self, exc: Exception) -> None:
        """Decode eagerly from now on, and say why in one line."""
        self.compiled, self.failed, self._fn, self._shortcut = False, True, self._eager, None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self.report(f"warning: compiling the decoding step failed ({first}); decoding eagerly instead")


def _own_code(method: Callable) -> Callable:
    """The method over a copy of its code object. Dynamo keeps compiled graphs, and counts recompilations
    against its limit (8), per code object: without a copy every DecodeStep in a process (one per model,
    per generator) would share one count, and past it decode eagerly without a word."""
    function = method.__func__
    fresh = types.FunctionType(
        function.__code__.replace(),
        function.__globals__,
        function.__name__,
        function.__defaults__,
        function.__closure__,
    )  # a wrapped method has a closure
    return types.MethodType(fresh, method.__self__)


def _mark_dynamic(tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor,
                  cache: SlotCache) -> None:  # fmt: skip
    """Rows, positions read and the cache's rows and length vary from call to call: compile them as sizes,
    not constants (a size of 1 is specialised by the compiler whatever is asked)."""
    sized = [(tokens, 0), (positions, 0), (slots, 0), (mask, 0), (mask, 3)]
    if not hasattr(cache.keys[0], "_dynamo_dynamic_indices"):  # a cache's tensors keep their marks: once each
        sized += [(t, dim) for t in (*cache.keys, *cache.values) for dim in (0, 2)]
    for tensor, dim in sized:
        if tensor.shape[dim] > 1:
            torch._dynamo.mark_dynamic(tensor, dim)


def _frames_compiled() -> int:
    """How many graphs dynamo has compiled in this process (to tell a compile from a cached call)."""
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]
