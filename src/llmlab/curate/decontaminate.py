"""Benchmark decontamination: training documents that share a long word n-gram with an evaluation set.

As GPT-3 (Brown et al. 2020, appendix C): lower-cased words with punctuation ignored, 13-grams by
default; a document containing any evaluation n-gram is removed (or flagged). Evaluation examples shorter
than n words cannot be checked this way and are counted as such, never silently passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmlab.curate.config import DecontaminateConfig
from llmlab.curate.shingles import ngram_hashes, word_hashes
from llmlab.errors import LlmlabError


@dataclass
class EvalSet:
    """The texts of one evaluation set (a built-in task or a JSONL file)."""

    name: str
    texts: list[str]


@dataclass
class EvalIndex:
    """Every evaluation n-gram, sorted, with the set it came from (a bit per set)."""

    ngram: int
    names: list[str]
    hashes: np.ndarray  # uint64, sorted, unique
    owners: np.ndarray  # uint64 bitmask of sets per hash
    checked: dict[str, int] = field(default_factory=dict)  # texts per set with at least n words
    too_short: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # set -> why it could not be read

    def matches(self, hashes: np.ndarray) -> dict[str, int]:
        """Evaluation n-grams of each set found among a document's n-gram hashes."""
        if len(self.hashes) == 0 or len(hashes) == 0:
            return {}
        position = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        hit = self.hashes[position] == hashes
        if not hit.any():
            return {}
        owners = self.owners[np.unique(position[hit])]
        return {name: int(((owners >> np.uint64(i)) & np.uint64(1)).sum()) for i, name in enumerate(self.names)
                if ((owners >> np.uint64(i)) & np.uint64(1)).any()}  # fmt: skip


def task_texts(name: str) -> list[str]:
    """The evaluated examples of a built-in task (not its demonstration pool): every string field but the
    class labels (\"Positive\" is in every corpus and tells nothing)."""
    from llmlab.evaluation.tasks import load_task

    task = load_task(name)
    labels = set(task.labels or ())
    return [v for ex in task.examples for k, v in ex.items() if isinstance(v, str) and k[:1] != "_" and v not in labels]


def file_texts(path: str) -> list[str]:
    """Every string field of every record of an evaluation file (JSONL, JSON, CSV, Parquet or hf:ORG/NAME)."""
    from llmlab.data.records import read_records

    return [value for record in read_records(path, split="test") for value in record.values() if isinstance(value, str)]


def eval_sets(cfg: DecontaminateConfig) -> tuple[list[EvalSet], dict[str, str]]:
    """The configured sets; a built-in task whose data is absent is named with the reason, not fatal."""
    sets, unavailable = [], {}
    for name in cfg.tasks:
        try:
            sets.append(EvalSet(name, task_texts(name)))
        except LlmlabError as exc:
            if "unknown task" in exc.what:
                raise
            unavailable[name] = exc.what
    sets.extend(EvalSet(Path(p).name, file_texts(p)) for p in cfg.files)
    return sets, unavailable


def build_index(sets: list[EvalSet], ngram: int) -> EvalIndex:
    if len(sets) > 64:
        raise LlmlabError(f"{len(sets)} evaluation sets given", "decontaminate against at most 64 at once")
    all_hashes, all_owners, checked, too_short = [], [], {}, {}
    for i, s in enumerate(sets):
        grams = [ngram_hashes(word_hashes(t), ngram, short=False) for t in s.texts]
        checked[s.name] = sum(len(g) > 0 for g in grams)
        too_short[s.name] = len(grams) - checked[s.name]
        mine = np.unique(np.concatenate(grams)) if grams else np.empty(0, np.uint64)
        all_hashes.append(mine)
        all_owners.append(np.full(len(mine), np.uint64(1) << np.uint64(i), dtype=np.uint64))
    hashes = np.concatenate(all_hashes) if all_hashes else np.empty(0, np.uint64)
    owners = np.concatenate(all_owners) if all_owners else np.empty(0, np.uint64)
    order = np.argsort(hashes, kind="stable")
    hashes, owners = hashes[order], owners[order]
    unique, start = np.unique(hashes, return_index=True)
    merged = np.bitwise_or.reduceat(owners, start) if len(owners) else owners
    return EvalIndex(ngram, [s.name for s in sets], unique, merged, checked, too_short)


def index_for(cfg: DecontaminateConfig) -> EvalIndex:
    sets, unavailable = eval_sets(cfg)
    index = build_index(sets, cfg.ngram)
    index.unavailable = unavailable
    return index
