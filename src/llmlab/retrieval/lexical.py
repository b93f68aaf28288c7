"""Lexical search: BM25 over the chunks' words, with `bm25s`.

BM25 scores a chunk by the query words it contains, weighting rare words (high inverse document
frequency) and damping repeats and long chunks. It finds what a dense embedding blurs: names, numbers,
rare terms. The index is rebuilt from chunks.jsonl when first needed (a second or two for ten thousand
chunks, and never for dense-only queries) rather than stored: nothing to keep in step, nothing pickled.
"""

from __future__ import annotations

import numpy as np

from llmlab.retrieval.vectors import top_k

TOKEN_PATTERN = r"(?u)\b\w+\b"  # single characters too: "5", "B" can be what the query is about


def words(texts: list[str]) -> list[list[str]]:
    """Lowercased words without English stopwords, the same for chunks and queries."""
    import bm25s

    return bm25s.tokenize(texts, token_pattern=TOKEN_PATTERN, stopwords="en", return_ids=False, show_progress=False)


class Bm25:
    """BM25 (Lucene's variant, k1=1.5, b=0.75) over a list of texts; row i of a result is text i."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        import bm25s

        self.size = len(texts)
        self.retriever = bm25s.BM25(k1=k1, b=b)
        self.retriever.index(words(texts), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """The query's score for every text (0 where no query word occurs)."""
        ids = self.retriever.get_tokens_ids(words([query])[0])
        if not ids:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the k best texts, best first; texts sharing no word with the query are left out."""
        scores, ids = top_k(self.scores(query)[None], k)
        keep = scores[0] > 0
        return scores[0][keep], ids[0][keep]
