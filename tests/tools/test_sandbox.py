"""The sandbox that runs model-written programs: output comes back, and an endless loop, a network call,
a memory bomb, a crash or a flood of output are each a clean result, never a hang or an exception here."""

from __future__ import annotations

import os
import socket
import time

import pytest

from llmlab.tools.sandbox import run_python


def test_a_program_prints_its_answer_in_an_empty_environment():
    result = run_python("import os\nprint(6 * 7)\nprint(sorted(os.environ))\nprint(os.getcwd())")
    assert result.ok and result.stdout.splitlines()[0] == "42"
    assert "LLMLAB" not in result.stdout and "PYTEST" not in result.stdout  # none of our environment
    folder = result.stdout.splitlines()[2]
    assert "llmlab-sandbox-" in folder and not os.path.exists(folder)  # a scratch folder, deleted after


def test_loops_network_memory_crashes_and_floods_are_clean_failures():
    start = time.perf_counter()
    loop = run_python("while True:\n    pass", timeout=1)
    assert loop.timed_out and not loop.ok and "out of time" in loop.error()
    assert time.perf_counter() - start < 10
    sleeper = run_python("import time\ntime.sleep(60)", timeout=1)  # wall time, not CPU time
    assert sleeper.timed_out
    with socket.socket() as server:  # a port that answers on this machine: the sandbox must not reach it
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        network = run_python(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3)")
        server.settimeout(0.2)
        with pytest.raises(TimeoutError):
            server.accept()
    assert not network.ok and "Error" in network.error() and network.isolation in ("namespace", "python")
    memory = run_python("x = bytearray(4 * 1024**3)", memory_mb=256)
    assert not memory.ok and "MemoryError" in memory.error()
    crash = run_python("1 / 0")
    assert not crash.ok and crash.error() == "ZeroDivisionError: division by zero"
    flood = run_python("print('x' * 10_000_000)", output_bytes=1000)
    assert len(flood.stdout) <= 1000


def test_a_process_that_leaves_its_session_dies_at_the_deadline_too():
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nelse:\n    time.sleep(60)"
    start = time.perf_counter()
    result = run_python(escape, timeout=1)
    assert result.timed_out and time.perf_counter() - start < 10  # not held until the grandchild wakes
    if result.isolation == "namespace":
        assert run_python("import os\nprint(os.getpid())").stdout.strip() == "1"  # first of its own PID namespace
