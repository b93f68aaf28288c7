"""Documents cut into chunks the embedder can read whole, counted in the embedder's own tokens.

A chunk is a window of `chunk_tokens` tokens; consecutive windows share `overlap_tokens`, so a passage
cut by one boundary is whole in the next chunk. The text kept is the document's own characters under
the window (not a decoding of the ids, which a lowercasing tokenizer would alter), with its token span.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.retrieval.documents import Document
from llmlab.tokenizer import TextTokenizer


@dataclass(frozen=True)
class ChunkSettings:
    """Window size and overlap in embedder tokens; stored in index.json so `add` cuts the same way."""

    chunk_tokens: int = 256  # all-MiniLM-L6-v2 was trained to read up to 256
    overlap_tokens: int = 32

    def check(self, context: int) -> None:
        """Refuse settings that would repeat forever or that the embedder cannot read in one piece."""
        if self.chunk_tokens < 1:
            raise LlmlabError(f"--chunk-tokens must be >= 1, got {self.chunk_tokens}", "pass e.g. --chunk-tokens 256")
        if not 0 <= self.overlap_tokens < self.chunk_tokens:
            raise LlmlabError(
                f"--overlap-tokens {self.overlap_tokens} must be >= 0 and below --chunk-tokens {self.chunk_tokens}",
                "pass a smaller overlap, e.g. an eighth of the chunk size",
            )
        if self.chunk_tokens > context:
            raise LlmlabError(
                f"--chunk-tokens {self.chunk_tokens} is more than the embedder reads at once ({context} tokens)",
                f"pass --chunk-tokens {context} or less",
            )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Chunk:
    """A piece of a document: its text, the document's source (and id), its token span [start, end) in
    the document's tokens and its character span [char_start, char_end)."""

    text: str
    source: str
    id: str | None
    start: int
    end: int
    char_start: int
    char_end: int

    @property
    def key(self) -> str:
        """The document this chunk belongs to: its id, or else its source."""
        return self.id if self.id is not None else self.source

    def to_dict(self) -> dict[str, Any]:
        record: dict[str, Any] = {"text": self.text, "source": self.source}
        if self.id is not None:
            record["id"] = self.id
        record["span"] = [self.start, self.end]
        record["chars"] = [self.char_start, self.char_end]
        return record

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Chunk:
        (start, end), (char_start, char_end) = record["span"], record["chars"]
        return cls(record["text"], record["source"], record.get("id"), start, end, char_start, char_end)


def windows(n_tokens: int, settings: ChunkSettings) -> list[tuple[int, int]]:
    """Token spans [start, end) covering 0..n_tokens: each at most chunk_tokens long, each overlapping the
    previous by exactly overlap_tokens, the last ending at n_tokens."""
    step = settings.chunk_tokens - settings.overlap_tokens
    spans = []
    start = 0
    while True:
        end = min(start + settings.chunk_tokens, n_tokens)
        spans.append((start, end))
        if end >= n_tokens:
            return spans
        start += step


def chunk_document(document: Document, tokenizer: TextTokenizer, settings: ChunkSettings, context: int) -> list[Chunk]:
    """The document's chunks; none for a document with no tokens. `context` is what the embedder reads:
    a chunk whose text re-tokenizes longer (a window that starts inside a word) loses tokens at its end."""
    encoding = tokenizer.inner.encode(document.text, add_special_tokens=False)
    offsets = encoding.offsets
    if not offsets:
        return []
    chunks = []
    for start, end in windows(len(offsets), settings):
        while True:
            char_start, char_end = offsets[start][0], offsets[end - 1][1]
            text = document.text[char_start:char_end]
            if end - start == 1 or len(tokenizer.encode(text)) <= context:
                break
            end -= 1
        chunks.append(Chunk(text, document.source, document.id, start, end, char_start, char_end))
    return chunks


def chunk_documents(
    documents: list[Document], tokenizer: TextTokenizer, settings: ChunkSettings, context: int
) -> list[Chunk]:
    """Every document's chunks, in document order; refuses settings the embedder cannot take."""
    settings.check(context)
    chunks = [chunk for document in documents for chunk in chunk_document(document, tokenizer, settings, context)]
    if not chunks:
        raise LlmlabError("the documents hold no tokens", "pass documents with some text")
    return chunks
