"""Progress for long jobs: one live line (loss, tokens/s, ETA) and JSON lines in metrics.jsonl."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressLine:
    """Rewrites one line on a terminal; prints whole lines when the output is a file or a pipe."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty()
        self.width = 0

    def update(self, text: str) -> None:
        if self.live:
            self.stream.write("\r" + text.ljust(self.width))
            self.width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line that stays (an eval result, a checkpoint), printed above the live line."""
        if self.live and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


class MetricsLog:
    """Appends one JSON object a line; on resume, forgets lines past the checkpoint's step."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        self.listeners: list[Callable[[dict[str, Any]], None]] = []  # each record also goes to these (trackers)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record: Any) -> None:
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception as exc:  # noqa: BLE001 - a tracker that fails (a server gone) must not stop training
                self.listeners.remove(listener)
                print(f"warning: a metrics tracker failed and is off for the rest of the run: {exc}", file=sys.stderr)

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]
