"""One run per run folder: an exclusive lock that two runs writing the same --out cannot both hold.

The lock is an `flock` on a file next to the folder (`.NAME.lock` beside `NAME`), not inside it, so it
survives the atomic folder swaps of `save_checkpoint`. The kernel drops an flock when its holder dies,
even by kill -9, so a killed run never leaves a stale lock behind; the pid in the file is only for the message.
The file is removed on release, and a lock taken on a file that was removed meanwhile is taken again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType

from llmlab.errors import LlmlabError


def lock_path(out: Path) -> Path:
    """Where the lock of run folder `out` lives: beside it, hidden."""
    return out.parent / f".{out.name}.lock"


class RunLock:
    """Exclusive, non-blocking lock on run folder `out`, held from `acquire` (or `with`) to `release`."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        self.path = lock_path(self.out)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock or raise LlmlabError naming the pid of the run that holds it."""
        if self._fd is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise LlmlabError(
                    f"{self.out} is in use by another run (pid {holder})",
                    "wait for it to finish or choose another --out",
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if _is_current(fd, self.path):
                break
            os.close(fd)  # the holder released and removed the file between our open and flock: again
        with contextlib.suppress(OSError):  # the pid is only for the message: a full disk does not stop the run
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file, then unlock: whoever opens the path next gets a fresh file."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    """The holder's pid as written in the lock file ('unknown' in the instant before it writes it)."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return text if text.isdigit() else "unknown"


def _is_current(fd: int, path: Path) -> bool:
    """Whether the locked descriptor is still the file at `path` (not one removed by its last holder)."""
    try:
        on_disk, locked = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (locked.st_dev, locked.st_ino)
