"""The search arithmetic on its own: exact top-k, faiss HNSW, BM25 and reciprocal-rank fusion."""

from __future__ import annotations

import numpy as np
import pytest

from llmlab.errors import LlmlabError
from llmlab.retrieval.fusion import reciprocal_rank_fusion
from llmlab.retrieval.lexical import Bm25
from llmlab.retrieval.vectors import (
    HnswSettings,
    add_to_hnsw,
    build_hnsw,
    exact_search,
    hnsw_from_bytes,
    hnsw_search,
    hnsw_to_bytes,
    top_k,
)


def unit_rows(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_exact_search_is_a_brute_force_ranking():
    vectors, queries = unit_rows(300, 24, 0), unit_rows(7, 24, 1)
    scores, ids = exact_search(vectors, queries, 10)
    reference = queries.astype(np.float64) @ vectors.T.astype(np.float64)
    for q in range(len(queries)):
        expected = np.argsort(-reference[q], kind="stable")[:10]
        assert ids[q].tolist() == expected.tolist()
        np.testing.assert_allclose(scores[q], reference[q, expected], rtol=1e-5)
    assert exact_search(vectors[:3], queries, 10)[1].shape == (7, 3)  # k beyond the index: all of it


def test_top_k_orders_equal_scores_by_column():
    scores, ids = top_k(np.array([[0.5, 0.9, 0.5, 0.1, 0.9]]), 4)
    assert ids.tolist() == [[1, 4, 0, 2]] and scores.tolist() == [[0.9, 0.9, 0.5, 0.5]]


def test_hnsw_finds_the_exact_top_1_and_survives_serialisation():
    vectors = unit_rows(500, 32, 2)
    queries = vectors[::25] + 0.05 * unit_rows(20, 32, 3)  # near a known vector each
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    graph = build_hnsw(vectors, HnswSettings())
    exact_ids = exact_search(vectors, queries, 1)[1][:, 0]
    assert exact_ids.tolist() == list(range(0, 500, 25))
    scores, ids = hnsw_search(graph, queries, 1, ef_search=64)
    assert ids[:, 0].tolist() == exact_ids.tolist()
    data = hnsw_to_bytes(graph)
    assert data.dtype == np.uint8
    again = hnsw_from_bytes(data)
    np.testing.assert_array_equal(hnsw_search(again, queries, 5, 64)[1], hnsw_search(graph, queries, 5, 64)[1])
    add_to_hnsw(again, unit_rows(10, 32, 4))  # new rows are numbered after the old ones
    assert again.ntotal == 510 and hnsw_search(again, unit_rows(10, 32, 4)[:1], 1, 64)[1][0, 0] == 500


def test_bm25_ranks_the_document_with_the_rare_query_word_first():
    texts = [
        "the meeting is on monday and the report is due on monday",
        "the report about the meeting was long and the meeting was dull",
        "Xylophone lessons start after the meeting",
        "nothing in common here",
    ]
    bm25 = Bm25(texts)
    scores, ids = bm25.search("the meeting xylophone", 4)
    assert ids[0] == 2  # "xylophone" is in one text only: it outweighs the common "meeting"
    assert 3 not in ids.tolist() and (scores > 0).all()  # no shared word: not a result
    assert bm25.search("unknownword", 3)[1].size == 0 and bm25.scores("").sum() == 0
    assert Bm25(["room 5 on floor B", "room 6 on floor C"]).search("room 5", 1)[1].tolist() == [0]  # numbers count


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]], k=60)
    expected = {
        "a": 1 / 61 + 1 / 62,
        "b": 1 / 62,
        "c": 1 / 63 + 1 / 61,
        "d": 1 / 63,
    }
    assert [item for item, _ in fused] == ["a", "c", "b", "d"]
    for item, score in fused:
        assert score == pytest.approx(expected[item], abs=1e-15)
    assert reciprocal_rank_fusion([[1, 2], [2, 1]], k=0) == [(1, 1.5), (2, 1.5)]  # a tie keeps first appearance
    with pytest.raises(LlmlabError, match="must be >= 0"):
        reciprocal_rank_fusion([[1]], k=-1)
