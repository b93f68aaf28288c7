"""The sandbox that runs model-written programs: output comes back, and an endless loop, a network call,
a memory bomb, a crash or a flood of output are each a clean result, never a hang or an exception here."""

from __future__ import annotations

import os
import time

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
    network = run_python("import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=3)")
    assert not network.ok and ("OSError" in network.error() or "unreachable" in network.error())
    memory = run_python("x = bytearray(4 * 1024**3)", memory_mb=256)
    assert not memory.ok and "MemoryError" in memory.error()
    crash = run_python("1 / 0")
    assert not crash.ok and crash.error() == "ZeroDivisionError: division by zero"
    flood = run_python("print('x' * 10_000_000)", output_bytes=1000)
    assert len(flood.stdout) <= 1000
