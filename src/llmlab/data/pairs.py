"""Supervised sequence-to-sequence data: JSONL lines with an input and a target field
(translation pairs, dialogue -> summary, string -> reversed string), tokenised in memory."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.data.tokens import cached_tokenizer, digest
from llmlab.errors import LlmlabError
from llmlab.tokenizer import TextTokenizer


@dataclass
class PairData:
    train_sources: list[np.ndarray]
    train_targets: list[np.ndarray]
    val_sources: list[np.ndarray]
    val_targets: list[np.ndarray]
    tokenizer: TextTokenizer
    corpus_hash: str = ""  # blake2b of every input and target text: same hash, same pairs


def read_pairs(path: str | Path, input_field: str, target_field: str) -> list[tuple[str, str]]:
    """(input, target) strings from a JSONL file; refuses a file without a single usable line."""
    path = Path(path)
    if path.suffix != ".jsonl" or not path.is_file():
        raise LlmlabError(f"{path} is not a .jsonl file", f"pass JSONL lines with {input_field!r} and {target_field!r}")
    pairs, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            source, target = record.get(input_field), record.get(target_field)
            if isinstance(source, str) and isinstance(target, str) and source.strip() and target.strip():
                pairs.append((source, target))
            else:
                skipped += 1
    if not pairs:
        raise LlmlabError(
            f"no line of {path} has both {input_field!r} and {target_field!r} as text ({skipped} lines skipped)",
            "name the fields with --input-field and --target-field",
        )
    return pairs


def prepare_pairs(
    path: str,
    input_field: str,
    target_field: str,
    tokenizer_kind: str,
    vocab_size: int,
    val_fraction: float,
    tokenizer: TextTokenizer | None,
    log: Callable[[str], None],
    family: str = "encoder-decoder",
) -> PairData:
    """Pairs -> (cached) tokenizer trained on both sides -> token ids; the last val_fraction held out."""
    if not 0.0 < val_fraction < 1.0:
        raise LlmlabError(f"val fraction must be in (0, 1), got {val_fraction}", "use e.g. 0.1")
    pairs = read_pairs(path, input_field, target_field)
    if len(pairs) < 2:
        raise LlmlabError(f"{path} has only {len(pairs)} pair", "a training and a validation pair are the least")
    texts = [text for pair in pairs for text in pair]
    corpus_hash = digest("pairs", *texts)
    if tokenizer is None:
        tokenizer = cached_tokenizer(texts, corpus_hash, tokenizer_kind, vocab_size, family, log)
    sources = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch([s for s, _ in pairs])]
    targets = [np.asarray(ids, dtype=np.int64) for ids in tokenizer.encode_batch([t for _, t in pairs])]
    n_val = max(1, int(len(pairs) * val_fraction))
    log(f"data: {path}: {len(pairs) - n_val:,} training and {n_val:,} validation pairs")
    return PairData(sources[:-n_val], targets[:-n_val], sources[-n_val:], targets[-n_val:], tokenizer, corpus_hash)
