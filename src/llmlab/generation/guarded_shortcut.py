"""Running the code dynamo compiled for a decoding step without dynamo's per-call frame evaluation.

Through dynamo every call of a compiled frame pays its frame evaluation and its guard check before the graph
runs: ~0.35 ms a call here for an 82M model, and up to ~0.5 ms in a real decoding loop, where streaming
the weights has pushed the ~1,500 guards' objects out of the CPU's caches. At 200-300 tokens a second that
is a tenth of a token. `Shortcut` checks the same guards dynamo would and runs the entry whose guards pass,
so it takes the graph dynamo would have taken; where none passes (a shape never seen: a compile), the call
goes through dynamo, and the next full check reads the new entry.

Most guards are about the model (each weight's shape and dtype, each attribute the graph read as a
constant), few about the step's inputs. The model does not change between steps that share a cache (the
generator makes a cache per call; the server never changes the model it serves), so every guard is checked
on the first step with a cache, when a step's inputs fit another entry, and every FULL_CHECK_EVERY steps; the
steps between check the guards on their inputs, the global state and the shapes alone (~0.1 ms instead of
~0.4 cold). Dynamo's entries are read with `_debug_get_cache_entry_list`; on a torch without it, or with
entries of another form, every call goes through dynamo.
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


# steps on a trusted cache between two checks of every guard: a model changed while a cache is in use (a caller
# that breaks the rule above, such as code run between the pieces of a stream) decodes at most this many steps
# with the graph compiled before the change
FULL_CHECK_EVERY = 32


class Shortcut:
    """`shortcut(*args)`: the method's compiled result, or None where no compiled entry's guards pass.
    `per` names the argument whose identity marks steps between which the model does not change."""

    def __init__(self, method: Callable, names: tuple[str, ...], per: str) -> None:
        self.method, self.names, self.per = method, names, per
        self.entries: list[_Entry] = []
        self._codes: list[object] = []  # the compiled code objects the entries were read from
        self._trusted: tuple[weakref.ref, _Entry] | None = None  # (the `per` argument, its entry)
        self._trusted_steps = 0

    @staticmethod
    def of(method: Callable, per: str) -> Shortcut | None:
        """A shortcut for a bound method that torch.compile wraps, or None where this torch has no way in."""
        code = method.__func__.__code__
        if code.co_freevars or getattr(torch._C._dynamo.eval_frame, "_debug_get_cache_entry_list", None) is None:
            return None
        return Shortcut(method, code.co_varnames[: code.co_argcount], per)

    def refresh(self) -> None:
        """Read dynamo's entries for the method's code again, where they changed (a compile, a reset, an entry
        dynamo invalidated); an entry of a form this shortcut does not know leaves every call to dynamo."""
        function = self.method.__func__
        try:
            live = [e for e in torch._C._dynamo.eval_frame._debug_get_cache_entry_list(function.__code__)
                    if e.code is not None]  # fmt: skip
            if [e.code for e in live] == self._codes:
                return
            entries = []
            for entry in live:
                check = getattr(entry.guard_manager, "check", None)
                if check is None or entry.code.co_freevars:
                    entries = []
                    break
                run = types.FunctionType(entry.code, function.__globals__, function.__name__)
                entries.append(_Entry(check, _inputs_only(entry.guard_manager), run))
        except Exception:  # noqa: BLE001 - dynamo's internals as this torch has them: leave every call to dynamo
            live, entries = [], []
        self.entries, self._codes, self._trusted = entries, [e.code for e in live], None

    def __call__(self, *args: object) -> object | None:
        owner = self.method.__self__
        frame = dict(zip(self.names, (owner, *args)))
        marker = frame.get(self.per)
        if self._trusted is not None and self._trusted_steps < FULL_CHECK_EVERY:
            held, entry = self._trusted
            if held() is marker and entry.check_inputs(frame):
                self._trusted_steps += 1
                return entry.run(owner, *args)
        self.refresh()
        for entry in self.entries:
            if entry.check(frame):
                self._trusted, self._trusted_steps = _trust(marker, entry), 0
                return entry.run(owner, *args)
        return None


def _trust(marker: object, entry: _Entry) -> tuple[weakref.ref, _Entry] | None:
    if entry.check_inputs is None or marker is None:
        return None
    try:
        return weakref.ref(marker), entry
    except TypeError:  # not weakly referable: every guard, every step
        return None


def _inputs_only(manager: object) -> Callable[[dict], bool] | None:
    """The check of a copy of the guard tree without the guards on the model (every source that reads
    `self`) and on module globals: the inputs', the global state's and the shape relations' stay, in whatever
    form this torch keeps them (the periodic full check covers the rest)."""

    def keep(node: object) -> bool:
        source = node.get_source()
        return "L['self']" not in source and not source.startswith("G[")

    try:
        clone = manager.root.clone_manager(keep)
    except (AttributeError, RuntimeError, TypeError):  # another guard tree: every guard, every step
        return None
    return None if clone is None else clone.check
