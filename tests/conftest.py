"""Shared fixtures: private caches, tiny models, and the shared data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from llmlab.config import ModelConfig
from llmlab.model import LanguageModel, build_model
from llmlab.tokenizer import train_tokenizer


@pytest.fixture(autouse=True)
def private_caches(tmp_path_factory, monkeypatch):
    """Token caches and compile caches go to a temporary folder, never the user's home."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("LLMLAB_CACHE", str(root / "llmlab-cache"))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(root / "inductor"))


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


@pytest.fixture(scope="session")
def char_tokenizer():
    return train_tokenizer([SAMPLE_TEXT + "xyz!?"], kind="char")


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300)


def tiny_model(style: str = "llama", vocab_size: int = 64, **overrides) -> LanguageModel:
    torch.manual_seed(0)
    fields = dict(n_layer=2, n_head=4, n_embd=32, block_size=64, vocab_size=vocab_size)
    fields.update(overrides)
    return build_model(ModelConfig.from_preset(f"{style}-nano", **fields)).eval()
