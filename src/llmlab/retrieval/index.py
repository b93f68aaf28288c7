"""Build an index, add to it, load it and search it: the API a retrieval-augmented step calls.

    build_index(["docs/"], load_embedder("all-MiniLM-L6-v2"), "my-index")
    index = Index.load("my-index")
    for hit in index.search("who booked the flight?", k=5, mode="hybrid"):
        print(hit.score, hit.source, hit.text)

Dense search embeds the query with the index's own embedder (its weights' fingerprint is checked);
BM25 matches words; hybrid fuses the two rankings by reciprocal rank.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.checkpoint.lock import RunLock
from llmlab.errors import LlmlabError
from llmlab.progress import ProgressLine
from llmlab.retrieval.chunking import Chunk, ChunkSettings, chunk_documents
from llmlab.retrieval.documents import Document, read_documents
from llmlab.retrieval.embedder import Embedder, load_embedder
from llmlab.retrieval.fusion import RRF_K, reciprocal_rank_fusion
from llmlab.retrieval.lexical import Bm25
from llmlab.retrieval.store import IndexData, read_index, read_meta, require_writable, write_index
from llmlab.retrieval.vectors import (
    KINDS,
    HnswSettings,
    add_to_hnsw,
    build_hnsw,
    exact_search,
    hnsw_from_bytes,
    hnsw_search,
    hnsw_to_bytes,
)

MODES = ("dense", "bm25", "hybrid")
CANDIDATES = 100  # hybrid: how deep each ranking is read before fusing


@dataclass(frozen=True)
class Hit:
    """One search result: a chunk, where it came from, and its score (a cosine, a BM25 score, or a fused
    reciprocal-rank score, by mode)."""

    rank: int
    score: float
    text: str
    source: str
    id: str | None
    span: tuple[int, int]  # token span [start, end) in its document
    chunk: int  # row in the index


@dataclass(frozen=True)
class BuildReport:
    """What a build or an add did, with the time spent embedding and indexing apart."""

    path: Path
    documents: int
    chunks: int
    total_chunks: int
    embed_seconds: float
    index_seconds: float


def build_index(
    paths: Iterable[str | Path],
    embedder: Embedder,
    out: str | Path,
    settings: ChunkSettings = ChunkSettings(),
    kind: str = "hnsw",
    text_field: str = "text",
    id_field: str | None = None,
    overwrite: bool = False,
    hnsw: HnswSettings = HnswSettings(),
    progress: ProgressLine | None = None,
    batch_size: int = 32,
) -> BuildReport:
    """Read, chunk, embed and index the documents into the folder `out` (written atomically)."""
    if kind not in KINDS:
        raise LlmlabError(f"unknown index kind {kind!r}", f"use one of {', '.join(KINDS)}")
    out = require_writable(out, overwrite)
    with RunLock(out):
        documents = read_documents(paths, text_field, id_field)
        _refuse_duplicates(documents, set())
        chunks = _chunks(documents, embedder, settings, progress)
        vectors, embed_seconds = _embed(embedder, chunks, progress, batch_size)
        started = time.perf_counter()
        graph = hnsw_to_bytes(build_hnsw(vectors, hnsw)) if kind == "hnsw" else None
        index_seconds = time.perf_counter() - started
        meta = {
            "embedder": embedder.describe(),
            "dims": int(vectors.shape[1]),
            "chunking": {**settings.to_dict(), "text_field": text_field, "id_field": id_field},
            "counts": {"documents": len(documents), "chunks": len(chunks)},
            "kind": kind,
        }
        if kind == "hnsw":
            meta["hnsw"] = hnsw.to_dict()
        write_index(out, IndexData(meta, vectors, chunks, graph))
    return BuildReport(out, len(documents), len(chunks), len(chunks), embed_seconds, index_seconds)


def add_documents(
    path: str | Path,
    paths: Iterable[str | Path],
    embedder: Embedder | None = None,
    device: str = "cpu",
    progress: ProgressLine | None = None,
    batch_size: int = 32,
    text_field: str | None = None,
    id_field: str | None = None,
) -> BuildReport:
    """Add documents to an existing index with its own chunk settings and embedder (another model's
    weights are refused); JSONL fields are the build's unless given. The new folder replaces the old
    in one rename: a failure changes nothing."""
    path = Path(path)
    read_meta(path)
    with RunLock(path):
        data = read_index(path)
        meta = data.meta
        embedder = embedder or _index_embedder(meta, device)
        embedder.require(meta["embedder"]["fingerprint"], path)
        chunking = meta["chunking"]
        settings = ChunkSettings(chunking["chunk_tokens"], chunking["overlap_tokens"])
        documents = read_documents(paths, text_field or chunking["text_field"], id_field or chunking["id_field"])
        _refuse_duplicates(documents, {c.source for c in data.chunks})
        chunks = _chunks(documents, embedder, settings, progress)
        vectors, embed_seconds = _embed(embedder, chunks, progress, batch_size)
        started = time.perf_counter()
        graph = None
        if meta["kind"] == "hnsw":
            index = hnsw_from_bytes(data.hnsw)
            add_to_hnsw(index, vectors)
            graph = hnsw_to_bytes(index)
        index_seconds = time.perf_counter() - started
        counts = meta["counts"]
        meta = {**meta, "counts": {"documents": counts["documents"] + len(documents),
                                   "chunks": counts["chunks"] + len(chunks)}}  # fmt: skip
        all_vectors = np.concatenate([data.vectors, vectors])
        write_index(path, IndexData(meta, all_vectors, data.chunks + chunks, graph))
    return BuildReport(path, len(documents), len(chunks), len(all_vectors), embed_seconds, index_seconds)


def _refuse_duplicates(documents: list[Document], indexed: set[str]) -> None:
    """The same file or record twice would be found twice: refuse it instead."""
    seen = set(indexed)
    for document in documents:
        if document.source in seen:
            raise LlmlabError(f"{document.source} is already in the index", "leave it out (each source once)")
        seen.add(document.source)


def _chunks(
    documents: list[Document], embedder: Embedder, settings: ChunkSettings, progress: ProgressLine | None
) -> list[Chunk]:
    chunks = chunk_documents(documents, embedder.checkpoint.tokenizer, settings, embedder.context)
    if progress is not None:
        progress.message(
            f"{len(documents):,} documents -> {len(chunks):,} chunks of at most {settings.chunk_tokens} tokens, "
            f"{settings.overlap_tokens} shared between neighbours"
        )
    return chunks


def _embed(
    embedder: Embedder, chunks: list[Chunk], progress: ProgressLine | None, batch_size: int
) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    vectors = embedder.embed([c.text for c in chunks], batch_size, progress).numpy()
    return vectors, time.perf_counter() - started


def _index_embedder(meta: dict, device: str) -> Embedder:
    """The embedder index.json names, or one line saying how to name another copy of it."""
    source = meta["embedder"]["source"]
    try:
        return load_embedder(source, device)
    except LlmlabError as exc:
        raise LlmlabError(f"cannot load the index's embedder {source}: {exc.what}",
                          "pass --embedder with a copy of the same model") from None  # fmt: skip


class Index:
    """A loaded index. The embedder is loaded on the first dense query (BM25 needs none), and the BM25
    index is built on the first lexical one."""

    def __init__(self, path: Path, data: IndexData, embedder: Embedder | None = None, device: str = "cpu") -> None:
        self.path = path
        self.meta = data.meta
        self.vectors = data.vectors
        self.chunks = data.chunks
        self.device = device
        self._graph = hnsw_from_bytes(data.hnsw) if data.hnsw is not None else None
        self._embedder = embedder
        self._bm25: Bm25 | None = None
        if embedder is not None:
            embedder.require(self.meta["embedder"]["fingerprint"], path)

    @classmethod
    def load(cls, path: str | Path, embedder: Embedder | str | Path | None = None, device: str = "cpu") -> Index:
        """The index at `path`, its files checked; `embedder` (a loaded one or a source) replaces the one
        index.json names, as long as its weights are the same."""
        data = read_index(path)
        if embedder is not None and not isinstance(embedder, Embedder):
            embedder = load_embedder(embedder, device)
        return cls(Path(path), data, embedder, device)

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            embedder = _index_embedder(self.meta, self.device)
            embedder.require(self.meta["embedder"]["fingerprint"], self.path)
            self._embedder = embedder
        return self._embedder

    @property
    def bm25(self) -> Bm25:
        if self._bm25 is None:
            self._bm25 = Bm25([c.text for c in self.chunks])
        return self._bm25

    def embed_queries(self, queries: list[str], batch_size: int = 64) -> np.ndarray:
        """(queries, dims) unit vectors from the index's embedder."""
        return self.embedder.embed(queries, batch_size).numpy()

    def dense(self, query_vectors: np.ndarray, k: int, exact: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk rows), each (queries, min(k, chunks)): the HNSW graph unless `exact` or the index
        is of kind exact, then every vector scored."""
        if self._graph is None or exact:
            return exact_search(self.vectors, query_vectors, k)
        return hnsw_search(self._graph, query_vectors, k, self.meta["hnsw"]["ef_search"])

    def search(self, query: str, k: int = 5, mode: str = "dense", rrf_k: int = RRF_K, exact: bool = False) -> list[Hit]:
        """The k best chunks for `query`, best first."""
        if k < 1:
            raise LlmlabError(f"k must be >= 1, got {k}", "pass e.g. -k 5")
        if mode not in MODES:
            raise LlmlabError(f"unknown search mode {mode!r}", f"use one of {', '.join(MODES)}")
        if not query.strip():
            raise LlmlabError("the query is empty", "pass some text to search for")
        if mode == "bm25":
            scores, rows = self.bm25.search(query, k)
            return self._hits(rows.tolist(), scores.tolist())
        scores, rows = self.dense(self.embed_queries([query]), max(k, CANDIDATES) if mode == "hybrid" else k, exact)
        dense_rows = [r for r in rows[0].tolist() if r >= 0]  # faiss pads a short result with -1
        if mode == "dense":
            return self._hits(dense_rows[:k], scores[0].tolist()[:k])
        _, lexical_rows = self.bm25.search(query, CANDIDATES)
        fused = reciprocal_rank_fusion([dense_rows, lexical_rows.tolist()], rrf_k)[:k]
        return self._hits([row for row, _ in fused], [score for _, score in fused])

    def _hits(self, rows: list[int], scores: list[float]) -> list[Hit]:
        hits = []
        for rank, (row, score) in enumerate(zip(rows, scores), 1):
            c = self.chunks[row]
            hits.append(Hit(rank, float(score), c.text, c.source, c.id, (c.start, c.end), int(row)))
        return hits
