"""Near-duplicate detection: MinHash signatures over word n-grams, LSH bands, Jaccard verified.

Written here rather than taken from datasketch because the algorithm is the lesson (Broder 1997;
bands and rows as in Leskovec, Rajaraman and Ullman, Mining of Massive Datasets, ch. 3): two documents
whose shingle sets have Jaccard similarity s agree on one MinHash value with probability s, on a band of
r values with probability s^r, and become candidates when any of b bands agree, 1 - (1 - s^r)^b. With the
default 14 bands x 8 rows that S-curve crosses 1/2 near s = 0.72. Candidates are then kept only when the
share of equal signature values (an unbiased estimate of s) reaches the threshold, which trades a little
recall at the curve's edge for precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmlab.curate.shingles import ngram_hashes

LOW32 = np.uint64(0xFFFFFFFF)
BLOCK = 4096  # shingles per pass, so a 100k-word document needs 4096 x perms values at a time, not all


@dataclass(frozen=True)
class Permutations:
    """`count` hash functions x -> mix(x xor key): splitmix64's finaliser (Steele et al. 2014), a bijection
    on 64-bit words whose output bits all depend on all input bits, keyed by a random word per function.

    Not the textbook (a*x + b) mod p: with x < 2^32 a multiplier small enough to avoid uint64 overflow
    makes the result wrap only a few times, nearly monotone in x, so every function ranks the shingles
    alike and the minima agree far more often than the similarity says (a test caught exactly that)."""

    keys: np.ndarray

    @classmethod
    def make(cls, count: int, seed: int) -> Permutations:
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, np.iinfo(np.uint64).max, size=count, dtype=np.uint64, endpoint=True))

    def __len__(self) -> int:
        return len(self.keys)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """[len(x), count] hash values (uint64 arithmetic wraps mod 2^64, as the mixer intends)."""
        z = x[:, None] ^ self.keys[None, :]
        with np.errstate(over="ignore"):
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def signature(hashes: np.ndarray, ngram: int, perms: Permutations) -> np.ndarray:
    """The MinHash signature (the low 32 bits of each function's minimum) of a document's word hashes."""
    shingles = np.unique(ngram_hashes(hashes, ngram))
    best = np.full(len(perms), np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(shingles), BLOCK):
        np.minimum(best, perms.apply(shingles[start : start + BLOCK]).min(axis=0), out=best)
    return (best & LOW32).astype(np.uint32)


def candidate_probability(similarity: float, bands: int, rows: int) -> float:
    """P(two documents of Jaccard `similarity` share at least one band): the LSH S-curve."""
    return 1.0 - (1.0 - similarity**rows) ** bands


class LshIndex:
    """Kept documents' signatures, findable by any equal band; the first (oldest) match wins, so the
    result does not depend on how the stream was split between processes."""

    def __init__(self, bands: int, rows: int, threshold: float) -> None:
        self.bands, self.rows, self.threshold = bands, rows, threshold
        self.tables: list[dict[bytes, int]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []
        self.ids: list[int] = []

    def band_keys(self, sig: np.ndarray) -> list[bytes]:
        return [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]

    def query(self, sig: np.ndarray) -> tuple[int, float] | None:
        """(id of the earliest kept document this one duplicates, estimated Jaccard), or None."""
        slots = sorted({table[key] for table, key in zip(self.tables, self.band_keys(sig)) if key in table})
        for slot in slots:
            similarity = float(np.mean(self.signatures[slot] == sig))
            if similarity >= self.threshold:
                return self.ids[slot], similarity
        return None

    def add(self, doc_id: int, sig: np.ndarray) -> None:
        slot = len(self.ids)
        self.ids.append(doc_id)
        self.signatures.append(sig)
        for table, key in zip(self.tables, self.band_keys(sig)):
            table.setdefault(key, slot)
