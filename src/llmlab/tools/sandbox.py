"""Running model-written Python: a separate process with a time limit, resource limits and no network.

Program-aided answers (the model writes a program, the program computes the answer) run code nobody
reviewed, so it runs in a child interpreter in isolated mode (`-I`: no user site, no environment
variables, no current folder on the path), in an empty temporary folder deleted after, with CPU time,
address space, file size (its output goes to files, so printing forever stops at the cap) and open
files limited by `setrlimit`. On Linux it is the first process of new PID and network namespaces (in a
user namespace when not root): no network device but a loopback that is down, and when it is killed at
the deadline every process it started goes with it, even one that left its session. Where the kernel
refuses namespaces, the socket module is disabled instead, which a determined program gets round, and the
result says so (`isolation` "python" rather than "namespace"). The file system is not hidden: the code
can read and write what the user running llmlab can, so run untrusted models' programs as an
unprivileged user."""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG = 1
# Run before the user's code in the child: no sockets where the namespaces could not be had (best effort:
# `_socket` or a subprocess gets round it, which is why the result names its isolation).
PRELUDE = """
import socket as _s
def _refuse(*a, **k):
    raise OSError("network access is disabled in the llmlab sandbox")
_s.socket = _s.create_connection = _s.socketpair = _refuse
del _s, _refuse
"""
# The process llmlab starts: it forks the user's program, which is the first process of the new PID namespace
# (when it ends, the kernel ends every process it started, setsid or not) and dies with this one.
WRAPPER = """
import ctypes, os, signal, sys
pid = os.fork()
if pid == 0:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    os.execv(sys.executable, [sys.executable, "-I", "-c", sys.argv[1]])
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
if code < 0:
    os.kill(os.getpid(), -code)
sys.exit(code)
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
    with tempfile.TemporaryDirectory(prefix="llmlab-sandbox-") as folder:
        out_path, err_path = Path(folder, ".stdout"), Path(folder, ".stderr")
        with out_path.open("wb") as out, err_path.open("wb") as err:  # files, not pipes: size capped by FSIZE
            argv = (
                [sys.executable, "-I", "-c", WRAPPER, code]
                if namespace
                else [sys.executable, "-I", "-c", PRELUDE + code]
            )
            process = subprocess.Popen(
                argv, cwd=folder, env={"PATH": "/usr/bin:/bin", "HOME": folder}, stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True,
                preexec_fn=lambda: _limit(timeout, memory_mb, output_bytes, namespace),
            )  # fmt: skip
            try:
                process.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)  # the PID namespace's first process dies with it, and all of it
                process.wait()
                timed_out = True
        stdout, stderr = (path.read_bytes()[:output_bytes].decode("utf-8", "replace") for path in (out_path, err_path))
    returncode = None if timed_out else process.returncode
    return SandboxResult(stdout, stderr, returncode, timed_out, "namespace" if namespace else "python")


def _limit(timeout: float, memory_mb: int, output_bytes: int, namespace: bool) -> None:
    """In the child, before exec: resource caps and, where allowed, no network."""
    cpu = max(1, int(timeout) + 1)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    resource.setrlimit(resource.RLIMIT_NPROC, (256, 256))  # a fork bomb (not enforced for root)
    if namespace:
        _unshare()


def _unshare() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = CLONE_NEWPID | CLONE_NEWNET | (0 if os.geteuid() == 0 else CLONE_NEWUSER)
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
