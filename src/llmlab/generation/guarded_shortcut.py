"""Running the code dynamo compiled for a decoding step without dynamo's per-call frame evaluation.

Through dynamo every call of a compiled frame pays its frame evaluation and its guard check before the graph
runs: ~0.35 ms a call here for an 82M model, and up to ~0.5 ms in a real decoding loop, where streaming
the weights has pushed the ~1,500 guards' objects out of the CPU's caches. At 200-300 tokens a second that
is a tenth of a token. `Shortcut` checks the same guards dynamo would and runs the entry whose guards pass,
so it takes the graph dynamo would have taken; where none passes (a shape never seen: a compile), the call
goes through dynamo and the new entry is read afterwards.

Most guards are about the model (each weight's shape and dtype, each attribute the graph read as a
constant), few about the step's inputs. The model does not change between steps that share a cache (the
generator makes a cache per call; the server never changes the model it serves), so every guard is checked
on the first step with a cache, and when a step's inputs fit another entry; the steps after it check the
guards on their inputs and the global state alone (~0.1 ms instead of ~0.4 cold). Dynamo's entries are read
with `_debug_get_cache_entry_list`; on a torch without it, or with entries of another form, every call
goes through dynamo.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class _Entry:
    check: Callable[[dict], bool]  # every guard of the entry
    check_inputs: Callable[[dict], bool] | None  # the guards on the inputs and the global state
    run: Callable  # the transformed code, as a function


class Shortcut:
    """`shortcut(*args)`: the method's compiled result, or None where no compiled entry's guards pass.
    `per` names the argument whose identity marks steps between which the model does not change."""

    def __init__(self, method: Callable, names: tuple[str, ...], per: str) -> None:
        self.method, self.names, self.per = method, names, per
        self.entries: list[_Entry] = []
        self._trusted: tuple[weakref.ref, _Entry] | None = None  # (the `per` argument, its entry)

    @staticmethod
    def of(method: Callable, per: str) -> Shortcut | None:
        """A shortcut for a bound method that torch.compile wraps, or None where this torch has no way in."""
        code = method.__func__.__code__
        if code.co_freevars or getattr(torch._C._dynamo.eval_frame, "_debug_get_cache_entry_list", None) is None:
            return None
        return Shortcut(method, code.co_varnames[: code.co_argcount], per)

    def refresh(self) -> None:
        """Read dynamo's entries for the method's code again (after a call that may have compiled one)."""
        function = self.method.__func__
        entries = []
        for entry in torch._C._dynamo.eval_frame._debug_get_cache_entry_list(function.__code__):
            check = getattr(entry.guard_manager, "check", None)
            if check is None or entry.code.co_freevars:  # a form this shortcut does not know: leave it to dynamo
                entries = []
                break
            run = types.FunctionType(entry.code, function.__globals__, function.__name__)
            entries.append(_Entry(check, _inputs_only(entry.guard_manager, self.names[1:]), run))
        self.entries, self._trusted = entries, None

    def __call__(self, *args: object) -> object | None:
        owner = self.method.__self__
        frame = dict(zip(self.names, (owner, *args)))
        marker = frame.get(self.per)
        if self._trusted is not None:
            held, entry = self._trusted
            if held() is marker and entry.check_inputs(frame):
                return entry.run(owner, *args)
        for entry in self.entries:
            if entry.check(frame):
                self._trusted = _trust(marker, entry)
                return entry.run(owner, *args)
        return None


def _trust(marker: object, entry: _Entry) -> tuple[weakref.ref, _Entry] | None:
    if entry.check_inputs is None or marker is None:
        return None
    try:
        return weakref.ref(marker), entry
    except TypeError:  # not weakly referable: every guard, every step
        return None


def _inputs_only(manager: object, inputs: tuple[str, ...]) -> Callable[[dict], bool] | None:
    """The check of a copy of the guard tree without the guards that hang from `self` (the model)."""
    roots = tuple(f"L['{name}']" for name in inputs)

    def keep(node: object) -> bool:
        source = node.get_source()
        return source in ("", "L") or any(source == r or source.startswith((r + ".", r + "[")) for r in roots)

    try:
        clone = manager.root.clone_manager(keep)
    except (AttributeError, RuntimeError, TypeError):  # another guard tree: every guard, every step
        return None
    return None if clone is None else clone.check
