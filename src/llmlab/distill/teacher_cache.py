"""The teacher's top-k logits cached on disk, one safetensors file per training batch.

A batch is a pure function of (seed, step, micro-step) and the data, so the teacher's output on it is too:
a second distillation with the same data, seed and batch shape (another student size, alpha, temperature
or learning rate: the usual sweep) reads the teacher's targets instead of running the teacher. Only the k
largest logits of each labelled position are kept (values as fp16, token ids as int32): k = 32 of an 8,192
vocabulary is 0.4% of the full row and, for a trained teacher, nearly all of its probability mass. The
soft target is then the teacher's distribution renormalised over those k tokens (forward KL only: reverse
KL and JSD need the student's mass where the teacher's is unknown). A k of at least the vocabulary (a
character model's 92 symbols) keeps whole rows, in vocabulary order and without ids: the teacher's whole
distribution (fp16 logits), at a third of the bytes top-k with ids would take. The batch is drawn, and the
teacher run on it, before the step's autocast: the cached logits are the fp32 teacher's.

The folder is named by a hash of everything that decides the batches and the teacher (the teacher's path,
weights size and modification time, data options, seed, batch shape, objective, k, ranks), so a cache is
never read for another run's batches.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llmlab.data.objectives import Batch

BATCH_FIELDS = ("data", "glob", "text_field", "curate", "family", "objective", "mask_probability",
                "noise_density", "mean_span_length", "tokenizer", "vocab_size", "val_fraction", "block_size",
                "batch_size", "seed")  # fmt: skip
Targets = tuple[torch.Tensor, torch.Tensor | None]  # (values, ids), (N, k) each; ids None: whole rows
BatchSource = Callable[[bool, int, int], Batch]


@dataclass
class TopKBatch(Batch):
    """A training batch with the teacher's top-k logits at its labelled positions, (N, k) each (ids None:
    the whole (N, V) rows)."""

    teacher_values: torch.Tensor | None = None
    teacher_ids: torch.Tensor | None = None

    def to(self, device: torch.device) -> TopKBatch:
        moved = super().to(device)
        ids = None if self.teacher_ids is None else self.teacher_ids.to(device)
        return TopKBatch(moved.inputs, moved.labels, moved.attention_mask, moved.decoder_inputs,
                         self.teacher_values.to(device), ids)  # fmt: skip


def teacher_identity(path: str) -> dict[str, Any]:
    """The teacher as the cache key sees it: its path and the size and time of its weight files."""
    folder = Path(path)
    weights = sorted(folder.glob("*.safetensors")) if folder.is_dir() else []
    return {"teacher": str(folder.resolve()) if folder.exists() else path,
            "weights": [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights]}  # fmt: skip


class TeacherCache:
    def __init__(self, root: str | Path, key: dict[str, Any]) -> None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = Path(root) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "key.json").write_text(json.dumps(key, indent=1, sort_keys=True, default=str))
        self.hits = self.misses = 0

    def targets(self, step: int, micro: int, rank: int, compute: Callable[[], Targets]) -> Targets:
        """(values, ids) of batch (step, micro) on this rank: read, or computed and written atomically."""
        from safetensors.torch import load_file, save_file

        path = self.folder / f"{step:08d}-{micro:03d}-{rank:03d}.safetensors"
        if path.exists():
            self.hits += 1
            tensors = load_file(str(path))
            return tensors["values"].float(), tensors["ids"].long() if "ids" in tensors else None
        self.misses += 1
        values, ids = compute()
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        stored = {"values": values.half().contiguous().cpu()}
        if ids is not None:
            stored["ids"] = ids.int().contiguous().cpu()
        save_file(stored, str(tmp))
        os.replace(tmp, path)
        # as a later read will see them: runs agree exactly
        return values.half().float(), None if ids is None else ids.long()


def cached_batches(inner: BatchSource, cache: TeacherCache, top_k: int,
                   teacher_logits: Callable[[Batch], torch.Tensor], rank: int) -> BatchSource:  # fmt: skip
    """The recipe's batch source with the teacher's targets attached to training batches (validation batches
    are scored with the teacher on the fly, as before)."""

    def batches(validation: bool, step: int, micro: int) -> Batch:
        batch = inner(validation, step, micro)
        if validation:
            return batch

        def compute() -> Targets:
            with torch.no_grad():
                logits = teacher_logits(batch).float()
            if top_k >= logits.shape[-1]:
                return logits, None  # whole rows: nothing to select, no ids to keep
            return logits.topk(top_k, dim=-1)

        values, ids = cache.targets(step, micro, rank, compute)
        return TopKBatch(batch.inputs, batch.labels, batch.attention_mask, batch.decoder_inputs, values, ids)

    return batches
