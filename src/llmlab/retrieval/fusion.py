"""Reciprocal-rank fusion: one ranking from several, by ranks alone.

A dense score (a cosine) and a BM25 score are on scales that cannot be added; ranks can. An item's fused
score is the sum over the rankings of 1 / (k + its rank there) (rank 1 is the best); `k` (60, from
Cormack, Clarke and Büttcher, 2009) keeps one list's first place from outweighing agreement between lists.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from llmlab.errors import LlmlabError

RRF_K = 60


def reciprocal_rank_fusion(rankings: Sequence[Sequence[Hashable]], k: int = RRF_K) -> list[tuple[Hashable, float]]:
    """(item, fused score) best first; an item missing from a ranking gets nothing from it. Equal scores
    keep the order in which the items first appear (the first ranking's order before the second's)."""
    if k < 0:
        raise LlmlabError(f"the RRF constant must be >= 0, got {k}", "pass e.g. --rrf-k 60")
    fused: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda pair: -pair[1])  # sorted() is stable: first appearance breaks ties
