"""Nearest vectors by inner product (cosine, for unit vectors): exact, or approximate with faiss HNSW.

Exact search is one matrix product and a top-k: the reference, and fast enough for tens of thousands of
chunks. HNSW (a graph walked greedily from coarse layers to fine ones) answers in time that grows
slowly with the index, at the price of sometimes missing a true neighbour; `ef_search` trades speed for
recall. Its graph is stored as faiss's own serialised bytes (a flat byte array, not pickle) in a
safetensors file, because rebuilding it costs seconds per thousands of vectors at every load.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

KINDS = ("hnsw", "exact")


@dataclass(frozen=True)
class HnswSettings:
    """M: graph neighbours per node; ef_construction / ef_search: candidate list sizes when building / searching."""

    m: int = 32
    ef_construction: int = 200
    ef_search: int = 128

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the k highest scores and their columns, best first (equal scores: the lower column first)."""
    n = scores.shape[1]
    k = min(k, n)
    if k < n:
        columns = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        columns = np.broadcast_to(np.arange(n), scores.shape)
    picked = np.take_along_axis(scores, columns, axis=1)
    order = np.lexsort((columns, -picked), axis=1)
    ids = np.take_along_axis(columns, order, axis=1)
    return np.take_along_axis(scores, ids, axis=1), ids


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (queries, min(k, N)): every vector scored, the best k kept."""
    return top_k(queries.astype(np.float32) @ vectors.T, k)


def build_hnsw(vectors: np.ndarray, settings: HnswSettings):
    """A faiss HNSW index over the rows of `vectors` (row i is id i), inner-product metric."""
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], settings.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.ef_construction
    add_to_hnsw(index, vectors)
    return index


def add_to_hnsw(index, vectors: np.ndarray) -> None:
    """New rows, numbered after the ones already in the graph."""
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))


def hnsw_search(index, queries: np.ndarray, k: int, ef_search: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) like `exact_search`; the candidate list is at least k long, so k results come back."""
    index.hnsw.efSearch = max(ef_search, k)
    scores, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, index.ntotal))
    return scores, ids


def hnsw_to_bytes(index) -> np.ndarray:
    """faiss's serialisation of the index as a uint8 array (its own binary format, read without pickle)."""
    import faiss

    return faiss.serialize_index(index)


def hnsw_from_bytes(data: np.ndarray):
    import faiss

    return faiss.deserialize_index(np.ascontiguousarray(data, dtype=np.uint8))
