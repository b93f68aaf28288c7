"""Running model-written Python: a separate process with a time limit, resource limits and no network.

Program-aided answers (the model writes a program, the program computes the answer) run code nobody
reviewed, so it runs in a child interpreter in isolated mode (`-I`: no user site, no environment
variables, no current folder on the path), in an empty temporary folder that is deleted after, with
CPU time, address space, file size and open files capped by `setrlimit`, its own process group (killed
whole at the deadline), and no network: on Linux it enters new user and network namespaces (only a
loopback that is down); where the kernel refuses that, the socket module is disabled inside the child
instead and the result says so (`isolation`). The file system is not hidden: the code can read and write
what the user running llmlab can, so run untrusted models' programs as an unprivileged user."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
# Run before the user's code in the child: no sockets where the namespace could not be had.
PRELUDE = """
import socket as _s
def _refuse(*a, **k):
    raise OSError("network access is disabled in the llmlab sandbox")
_s.socket = _s.create_connection = _s.socketpair = _refuse
del _s, _refuse
"""


@dataclass
class SandboxResult:
    stdout: str
    stderr: str
    returncode: int | None
    timed_out: bool
    isolation: str  # "namespace" (no network device at all) or "python" (socket module disabled)

    @property
    def ok(self) -> bool:
        return not self.timed_out and self.returncode == 0

    def error(self) -> str:
        """One line for what went wrong (empty when it ran cleanly)."""
        if self.timed_out:
            return "the program ran out of time"
        if self.returncode != 0:
            last = (self.stderr.strip().splitlines() or [f"exit code {self.returncode}"])[-1]
            return last[:200]
        return ""


def run_python(code: str, timeout: float = 5.0, memory_mb: int = 512, output_bytes: int = 1 << 16) -> SandboxResult:
    """Run `code` in a sandboxed child interpreter; never raises for what the code does."""
    namespace = _namespaces_available()
    source = code if namespace else PRELUDE + code
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as folder:
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", source], cwd=folder, env={"PATH": "/usr/bin:/bin", "HOME": folder},
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace",
            start_new_session=True, preexec_fn=lambda: _limit(timeout, memory_mb, output_bytes, namespace),
        )  # fmt: skip
        try:
            out, err = process.communicate(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            timed_out = True
    code_ = None if timed_out else process.returncode
    return SandboxResult(
        out[:output_bytes], err[-output_bytes:], code_, timed_out, "namespace" if namespace else "python"
    )


def _limit(timeout: float, memory_mb: int, output_bytes: int, namespace: bool) -> None:
    """In the child, before exec: resource caps and, where allowed, no network."""
    cpu = max(1, int(timeout) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    if namespace:
        _unshare()


def _unshare() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNET
    if libc.unshare(flags) != 0:
        raise OSError(ctypes.get_errno(), "unshare failed")


_AVAILABLE: bool | None = None


def _namespaces_available() -> bool:
    """Whether this kernel lets us drop the network (tried once in a throwaway child)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        if not sys.platform.startswith("linux"):
            _AVAILABLE = False
        else:
            try:
                subprocess.run([sys.executable, "-I", "-c", "pass"], preexec_fn=_unshare, check=True, timeout=10,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                _AVAILABLE = True
            except (OSError, subprocess.SubprocessError):
                _AVAILABLE = False
    return _AVAILABLE
