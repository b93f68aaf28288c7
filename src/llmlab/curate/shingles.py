"""Words and word n-grams as 64-bit hashes: what MinHash and decontamination both compare.

A document is lower-cased and cut into runs of letters and digits (punctuation and spacing never make
two texts differ, as GPT-3's decontamination did); each word is hashed once with xxhash, and the
n-grams are combined from the word hashes with numpy, so no n-gram string is ever built.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

WORD = re.compile(r"\w+")
MIX = np.uint64(0x100000001B3)  # FNV-1a's 64-bit prime: spreads each word's bits before the next is xored in


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_hashes(text: str) -> np.ndarray:
    """One uint64 per word (xxh64, seed 0: the same in every process and run)."""
    return np.fromiter((xxhash.xxh64_intdigest(w.encode()) for w in words(text)), dtype=np.uint64)


def ngram_hashes(hashes: np.ndarray, n: int, short: bool = True) -> np.ndarray:
    """A hash per run of `n` consecutive words. A text shorter than `n` words is one n-gram of all its
    words when `short` (so short documents still have a signature), none otherwise."""
    count = len(hashes) - n + 1
    if count <= 0:
        if not short or len(hashes) == 0:
            return np.empty(0, dtype=np.uint64)
        n, count = len(hashes), 1
    out = hashes[:count].copy()
    with np.errstate(over="ignore"):
        for k in range(1, n):
            out = (out * MIX) ^ hashes[k : k + count]
    return out
