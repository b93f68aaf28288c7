"""Token ids on disk: tokenised once into memory-mapped files cached by a hash of the inputs and tokenizer.

The cache lives under $LLMLAB_CACHE (default ~/.cache/llmlab); a second run on the same data with the
same tokenizer settings reuses both the trained tokenizer and the token files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmlab.data.clean import CleanReport, clean_documents
from llmlab.data.sources import SourceReport, read_documents
from llmlab.errors import LlmlabError
from llmlab.tokenizer import TextTokenizer, split_chunks, train_tokenizer

CACHE_VERSION = "1"


def cache_root() -> Path:
    return Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab"))


@dataclass
class TokenData:
    train: np.ndarray  # memory-mapped token ids
    val: np.ndarray
    tokenizer: TextTokenizer
    source: str
    documents: int = 0  # documents the corpus held after cleaning
    corpus_hash: str = ""  # the token cache's key for the text (blake2b of every document): same hash, same text


def digest(*parts: bytes | str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        b = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def load_corpus(data: str | None, glob: str, text_field: str, log: Callable[[str], None]) -> list[str]:
    """Read and clean the documents, logging what was skipped; refuses an empty result."""
    sources, cleaning = SourceReport(), CleanReport()
    docs = list(clean_documents(read_documents(data, glob, text_field, sources), cleaning))
    name = data or "the Python standard library (default corpus)"
    log(
        f"data: {name}: {sources.files_read} files read, {cleaning.kept} documents kept, "
        f"{cleaning.duplicates} duplicates and {cleaning.empty} empty dropped, "
        f"{sources.skipped_binary} binary and {sources.skipped_undecodable} non-UTF-8 files skipped"
    )
    if not docs:
        raise LlmlabError(f"no usable text in {name}", "point --data at UTF-8 text files or JSONL with text")
    return docs


def prepare_data(
    data: str | None = None,
    glob: str = "**/*",
    text_field: str = "text",
    tokenizer_kind: str = "bpe",
    vocab_size: int = 8192,
    val_fraction: float = 0.1,
    tokenizer: TextTokenizer | None = None,
    log: Callable[[str], None] = print,
    family: str = "decoder",
) -> TokenData:
    """Corpus -> (cached) tokenizer with `family`'s special tokens -> (cached) memory-mapped train/val ids."""
    if not 0.0 < val_fraction < 1.0:
        raise LlmlabError(f"val fraction must be in (0, 1), got {val_fraction}", "use e.g. 0.1")
    docs = load_corpus(data, glob, text_field, log)
    corpus_key = digest(CACHE_VERSION, *docs)
    if tokenizer is None:
        tokenizer = cached_tokenizer(docs, corpus_key, tokenizer_kind, vocab_size, family, log)
    key = digest(corpus_key, tokenizer.to_json(), str(val_fraction))
    folder = cache_root() / "tokens" / key
    if not (folder / "meta.json").exists():
        _write_tokens(docs, tokenizer, val_fraction, folder, log)
    else:
        log(f"data: reusing token cache {folder}")
    meta = json.loads((folder / "meta.json").read_text())
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")
    log(f"data: {len(train):,} training and {len(val):,} validation tokens (vocabulary {tokenizer.vocab_size:,})")
    return TokenData(
        train=train,
        val=val,
        tokenizer=tokenizer,
        source=data or "python-stdlib",
        documents=len(docs),
        corpus_hash=corpus_key,
    )


def cached_tokenizer(docs: list[str], corpus_key: str, kind: str, vocab_size: int, family: str, log) -> TextTokenizer:
    path = cache_root() / "tokenizers" / f"{digest(corpus_key, kind, str(vocab_size), family)}.json"
    if path.exists():
        log(f"tokenizer: reusing {path}")
        return TextTokenizer.load(path)
    start = time.perf_counter()
    tokenizer = train_tokenizer(docs, kind, vocab_size, family)
    log(f"tokenizer: trained {kind} with {tokenizer.vocab_size:,} tokens in {time.perf_counter() - start:.1f}s")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tokenizer.save(tmp)
    os.replace(tmp, path)
    return tokenizer


def _write_tokens(docs: list[str], tokenizer: TextTokenizer, val_fraction: float, folder: Path, log) -> None:
    start = time.perf_counter()
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    chunks, ends = [], set()
    for doc in docs:  # each document ends with end-of-text ([SEP] for BERT) so the model learns where texts stop
        chunks.extend(split_chunks(doc))
        ends.add(len(chunks) - 1)
    pieces, eos = [], np.array([tokenizer.separator_id], dtype=dtype)
    for first in range(0, len(chunks), 512):  # batches across documents keep every core busy
        for i, ids in enumerate(tokenizer.encode_batch(chunks[first : first + 512]), first):
            pieces.append(np.asarray(ids, dtype=dtype))
            if i in ends:
                pieces.append(eos)
    ids = np.concatenate(pieces)
    n_val = max(1, int(len(ids) * val_fraction))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        ids[:-n_val].tofile(tmp / "train.bin")
        ids[-n_val:].tofile(tmp / "val.bin")
        (tmp / "meta.json").write_text(json.dumps({"dtype": np.dtype(dtype).name, "tokens": int(len(ids))}))
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").exists():  # another process may have won the race
            raise
    elapsed = time.perf_counter() - start
    log(f"data: tokenised {len(ids):,} tokens in {elapsed:.1f}s ({len(ids) / max(elapsed, 1e-9):,.0f} tokens/s)")


def sample_windows(
    ids: np.ndarray, batch_size: int, length: int, seed: int, step: int, micro: int = 0, rows: slice | None = None
) -> np.ndarray:
    """(batch_size, length) int64 windows at random offsets, a pure function of (seed, step, micro).

    Making the batch depend only on these numbers is what lets a resumed run see the same data.
    `rows` reads only those rows of the batch (one rank's share): the offsets are drawn for all.
    """
    if len(ids) <= length:
        raise LlmlabError(
            f"only {len(ids)} tokens to draw windows of {length} from",
            "use more data, a smaller --block-size or a smaller --val-fraction",
        )
    rng = np.random.default_rng([seed, step, micro])
    offsets = rng.integers(0, len(ids) - length, size=batch_size)[rows or slice(None)]
    return np.stack([np.asarray(ids[o : o + length], dtype=np.int64) for o in offsets])


def get_batch(
    ids: np.ndarray, batch_size: int, block_size: int, seed: int, step: int, micro: int = 0, rows: slice | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows (inputs, next-token targets) for causal LM, a pure function of (seed, step, micro)."""
    t = torch.from_numpy(sample_windows(ids, batch_size, block_size + 1, seed, step, micro, rows))
    return t[:, :-1], t[:, 1:]
