"""The stages that compare documents with each other, in input order in one process: exact duplicates,
near duplicates, repeated boilerplate. The earliest copy is kept, so the result is the same for any number
of workers; what each shard added to the state is saved with it (safetensors), so a resumed run rebuilds
the state from its finished shards instead of recomputing them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xxhash

from llmlab.curate.config import CurateConfig
from llmlab.curate.minhash import LshIndex

PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass
class ShardKeys:
    """What one shard added to the dedup state."""

    ids: list[int] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    signatures: list[np.ndarray] = field(default_factory=list)
    units: list[int] = field(default_factory=list)  # boilerplate unit hashes first seen in this shard

    def save(self, path: Path, perms: int) -> None:
        from safetensors.numpy import save_file

        tensors = {
            "ids": np.asarray(self.ids, dtype=np.int64),
            "digests": np.frombuffer(b"".join(self.digests), dtype=np.uint8).reshape(-1, 16),
            "signatures": np.stack(self.signatures) if self.signatures else np.zeros((0, perms), np.uint32),
            "units": np.asarray(self.units, dtype=np.uint64),
        }
        save_file(tensors, str(path))

    @classmethod
    def load(cls, path: Path) -> ShardKeys:
        from safetensors.numpy import load_file

        t = load_file(str(path))
        return cls(t["ids"].tolist(), [bytes(row) for row in t["digests"]], list(t["signatures"]), t["units"].tolist())


class DedupState:
    def __init__(self, cfg: CurateConfig) -> None:
        self.cfg = cfg
        self.digests: dict[bytes, int] = {}
        self.lsh = LshIndex(cfg.dedup.bands, cfg.dedup.rows, cfg.dedup.threshold)
        self.units: set[int] = set()
        self.count_tokens: Callable[[str], int] | None = None  # set when tokens are counted

    def restore(self, keys: ShardKeys) -> None:
        for doc_id, digest in zip(keys.ids, keys.digests):
            self.digests.setdefault(digest, doc_id)
        for doc_id, sig in zip(keys.ids, keys.signatures):
            self.lsh.add(doc_id, sig)
        self.units.update(keys.units)

    def duplicate_of(self, digest: bytes, sig: np.ndarray | None) -> tuple[str, int, float] | None:
        """("exact" | "near", id of the earliest kept document it repeats, similarity), or None."""
        if self.cfg.dedup.exact and digest in self.digests:
            return "exact", self.digests[digest], 1.0
        found = self.lsh.query(sig) if self.cfg.dedup.near and sig is not None else None
        return ("near", *found) if found else None

    def remember(self, doc_id: int, digest: bytes, sig: np.ndarray | None, keys: ShardKeys) -> None:
        """A kept document becomes what later ones are compared with."""
        self.digests.setdefault(digest, doc_id)
        keys.ids.append(doc_id)
        keys.digests.append(digest)
        if self.cfg.dedup.near and sig is not None:
            self.lsh.add(doc_id, sig)
            keys.signatures.append(sig)

    def strip_boilerplate(self, text: str, keys: ShardKeys) -> tuple[str, int]:
        """The text without units (paragraphs or lines) an earlier kept document had; how many went."""
        cfg = self.cfg.boilerplate
        parts = PARAGRAPH_BREAK.split(text) if cfg.unit == "paragraph" else text.split("\n")
        kept, removed = [], 0
        for part in parts:
            if len(part.strip()) < cfg.min_chars:
                kept.append(part)
                continue
            key = xxhash.xxh64_intdigest(part.strip().encode())
            if key in self.units:
                removed += 1
                continue
            self.units.add(key)
            keys.units.append(key)
            kept.append(part)
        joiner = "\n\n" if cfg.unit == "paragraph" else "\n"
        return joiner.join(kept) if removed else text, removed
