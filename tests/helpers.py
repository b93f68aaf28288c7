"""Helpers the tests share: the shared data folder, a sample text, tiny models, running the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from llmlab.cli import main
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model import LanguageModel, build_model


def data_dir() -> Path:
    return Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def require_data(relative: str) -> Path:
    """The shared data file, or a skip (a failure under CI=true, where the data must be present)."""
    path = data_dir() / relative
    if not path.exists():
        message = f"{path} is absent: set LLMLAB_DATA to the shared data folder"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


SAMPLE_TEXT = (
    "def add(a, b):\n    return a + b\n\n"
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
    "    def push(self, item):\n        self.items.append(item)\n"
) * 3


def tiny_model(style: str = "llama", vocab_size: int = 64, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    fields = dict(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=vocab_size)
    fields.update(overrides)
    return build_model(ModelConfig.from_preset(f"{style}-nano", **fields)).eval()


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """`llmlab ARGS` in this process: (exit code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert " — " in lines[0]  # what was wrong — what to do
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


SRC = Path(__file__).resolve().parents[1] / "src"


def wait_for_line(stream, starts: str, timeout: float) -> str | None:
    """The first line of `stream` that starts with `starts`, or None if none came within `timeout` seconds
    (read on a thread, so a child that prints nothing cannot hang the test)."""
    found: list[str] = []

    def read() -> None:
        for line in stream:
            if line.startswith(starts):
                found.append(line)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return found[0] if found else None


def start_llmlab(*args: str, until: str, timeout: float = 120) -> subprocess.Popen:
    """`python -m llmlab ARGS` in a new process, returned once a stderr line starts with `until`
    (e.g. "step 5": it is training). The caller stops it and reads the rest of its stderr."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "llmlab", *args], stderr=subprocess.PIPE, text=True, env=env)
    line = wait_for_line(proc.stderr, until, timeout)
    if line is None:
        proc.kill()
        raise AssertionError(f"`llmlab {' '.join(args[:1])}` printed no line starting with {until!r} in {timeout} s")
    proc.until_line = line  # e.g. the address a server printed
    return proc


def refusal(call) -> tuple[str, str]:
    """What a call refused with: the LlmlabError's (what, fix), for tests that check them word for word."""
    with pytest.raises(LlmlabError) as caught:
        call()
    return caught.value.what, caught.value.fix
