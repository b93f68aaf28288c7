"""Tiny encoder checkpoints (the same shapes, other weights) and a small document collection."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.tokenizer import train_tokenizer
from tests.helpers import tiny_model

WORDS = (
    "the cat sat on the mat while a dog slept by the door and the bird sang in the tree "
    "stock markets fell sharply as traders sold shares and bonds rose on monday morning "
    "the recipe needs two cups of flour one egg and a pinch of salt baked for forty minutes "
)
DOCUMENTS = {
    "animals.txt": "The cat sat on the mat. The dog slept by the door. " * 6,
    "markets.md": "Stock markets fell sharply on Monday as traders sold shares. Bonds rose. " * 5,
    "nested/baking.txt": "The recipe needs two cups of flour, one egg and a pinch of salt. " * 4,
    "nested/zebra.txt": "A quagga is an extinct zebra. The cat and the dog never met one. " * 2,
}
RECORDS = [
    {"id": "r1", "body": "Monday morning the bird sang in the tree by the door."},
    {"id": "r2", "body": "Baked for forty minutes, the flour and egg became bread."},
    {"id": "r3", "body": "Traders sold bonds and shares; the markets rose on Monday."},
]


def save_encoder(folder, tokenizer, seed: int) -> None:
    """A 2-layer BERT at block size 64 (62 text tokens) whose weights depend on `seed`."""
    model = tiny_model("bert", vocab_size=tokenizer.vocab_size, block_size=64)
    if seed:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=generator) * 0.02)
    save_checkpoint(folder, model, tokenizer)


@pytest.fixture(scope="session")
def encoders(tmp_path_factory):
    """(encoder, the same shapes with other weights): two checkpoint folders sharing a tokenizer."""
    root = tmp_path_factory.mktemp("encoders")
    tokenizer = train_tokenizer([WORDS * 10], kind="bpe", vocab_size=300, family="encoder")
    save_encoder(root / "encoder", tokenizer, seed=0)
    save_encoder(root / "other", tokenizer, seed=1)
    return root / "encoder", root / "other"


@pytest.fixture
def corpus(tmp_path):
    """A folder of text files and a JSONL file beside it (fields `body` and `id`)."""
    root = tmp_path / "docs"
    for name, text in DOCUMENTS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "nested" / "ignored.bin").write_bytes(b"\x00\x01")  # not a text suffix: left out
    records = tmp_path / "records.jsonl"
    records.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return root, records
