"""Ctrl-C as a request, not an exception: an exception in the middle of `optimizer.step()` could leave
weights half-updated, so the first Ctrl-C lets the step finish and the run save; a second one aborts."""

from __future__ import annotations

import signal


class AbortRequested(KeyboardInterrupt):
    """The second Ctrl-C: stop now, without saving (the weights may be half-updated)."""


class StopRequest:
    """First Ctrl-C asks the loop to stop after the current step and save; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C is not ours to handle
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise AbortRequested
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
