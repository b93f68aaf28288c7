"""Indexing and retrieval: documents chunked by the embedder's tokens, embedded, stored in an index
folder (safetensors + JSON), searched densely (exact or faiss HNSW), lexically (BM25) or both (RRF)."""

from llmlab.retrieval.chunking import Chunk, ChunkSettings
from llmlab.retrieval.documents import Document, read_documents
from llmlab.retrieval.embedder import Embedder, load_embedder
from llmlab.retrieval.fusion import reciprocal_rank_fusion
from llmlab.retrieval.index import BuildReport, Hit, Index, add_documents, build_index
from llmlab.retrieval.vectors import HnswSettings

__all__ = [
    "BuildReport",
    "Chunk",
    "ChunkSettings",
    "Document",
    "Embedder",
    "HnswSettings",
    "Hit",
    "Index",
    "add_documents",
    "build_index",
    "load_embedder",
    "read_documents",
    "reciprocal_rank_fusion",
]
