"""The teacher cache's files: top k with ids, or whole rows without them when k covers the vocabulary."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from llmlab.data.objectives import Batch
from llmlab.distill.teacher_cache import TeacherCache, cached_batches

VOCAB = 12


def batch_at(validation: bool, step: int, micro: int) -> Batch:
    generator = torch.Generator().manual_seed(step * 10 + micro)
    inputs = torch.randint(0, VOCAB, (2, 5), generator=generator)
    return Batch(inputs, inputs.roll(-1, dims=1))


def logits_of(batch: Batch) -> torch.Tensor:
    return torch.sin(batch.inputs.flatten()[:, None] * torch.arange(1, VOCAB + 1)).float()


@pytest.mark.parametrize("top_k", [4, VOCAB, 50])
def test_cache_keeps_top_k_with_ids_or_whole_rows_without(tmp_path, top_k):
    calls = []

    def teacher(batch: Batch) -> torch.Tensor:
        calls.append(1)
        return logits_of(batch)

    cache = TeacherCache(tmp_path, {"k": top_k})
    source = cached_batches(batch_at, cache, top_k, teacher, rank=0)
    written = source(False, 3, 0)
    read = cached_batches(batch_at, TeacherCache(tmp_path, {"k": top_k}), top_k, teacher, rank=0)(False, 3, 0)
    assert len(calls) == 1  # the second source read the file
    expected = logits_of(batch_at(False, 3, 0)).half().float()
    with safe_open(str(next(cache.folder.glob("*.safetensors"))), "pt") as f:
        stored = set(f.keys())
    for got in (written, read, read.to(torch.device("cpu"))):
        if top_k >= VOCAB:
            assert stored == {"values"} and got.teacher_ids is None
            torch.testing.assert_close(got.teacher_values, expected, rtol=0, atol=0)
        else:
            assert stored == {"values", "ids"}
            values, ids = expected.topk(top_k, dim=-1)
            torch.testing.assert_close(got.teacher_values, values, rtol=0, atol=0)
            assert torch.equal(got.teacher_ids, ids)
    assert source(True, 3, 0).__class__ is Batch  # validation batches carry no targets
