"""Shared fixtures: private caches and tiny tokenizers. Shared helpers live in tests/helpers.py."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def private_caches(tmp_path_factory, monkeypatch):
    """Token caches and compile caches go to a temporary folder, never the user's home; nothing compiles
    unless asked."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("LLMLAB_CACHE", str(root / "llmlab-cache"))
    # native kernels are built once per machine for every test session and worker (~20 s), not per session
    kernels = os.environ.get("LLMLAB_TEST_KERNELS_DIR", str(Path(tempfile.gettempdir()) / "llmlab-test-kernels"))
    monkeypatch.setenv("LLMLAB_KERNELS_DIR", kernels)
    # a mutation run (bench/mutate.py) shares one compile cache across its thousands of short sessions
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("LLMLAB_TEST_INDUCTOR_CACHE", str(root / "inductor")))
    # decoding steps are compiled only where a test asks (compile="on"): a compile takes seconds
    monkeypatch.setenv("LLMLAB_COMPILE", "off")


@pytest.fixture(scope="session")
def char_tokenizer():
    return train_tokenizer([SAMPLE_TEXT + "xyz!?"], kind="char")


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300)
