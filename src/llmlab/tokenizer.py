"""Tokenizers trained on the user's corpus (byte-level BPE or characters), saved as tokenizer.json.

Both kinds are `tokenizers.Tokenizer` objects, so one file format and one fast encoder serve both.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from llmlab.errors import LlmlabError

EOS = "<|endoftext|>"
UNK = "<|unk|>"
KINDS = ("bpe", "char")
CHUNK_CHARS = 1 << 16  # encoding one huge string is ~10x slower than batches of chunks


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer` with the special tokens llmlab relies on."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.inner = tokenizer
        eos = tokenizer.token_to_id(EOS)
        if eos is None:
            raise LlmlabError(f"tokenizer has no {EOS} token", "train the tokenizer with llmlab")
        self.eos_id: int = eos

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.inner.encode_batch(texts)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.inner.decode(list(ids), skip_special_tokens=False)

    def encode_document(self, text: str) -> list[int]:
        """Encode text of any size in newline-aligned chunks (fast and memory-bounded)."""
        ids: list[int] = []
        for enc in self.inner.encode_batch(list(split_chunks(text))):
            ids.extend(enc.ids)
        return ids

    def to_json(self) -> str:
        return self.inner.to_str()

    def save(self, path: str | Path) -> None:
        self.inner.save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> TextTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # the tokenizers library raises bare Exceptions on bad JSON
            raise LlmlabError(f"cannot read tokenizer {path}: {exc}", "re-copy the checkpoint") from None

    @classmethod
    def from_json(cls, text: str) -> TextTokenizer:
        return cls(Tokenizer.from_str(text))


def split_chunks(text: str, size: int = CHUNK_CHARS) -> Iterator[str]:
    """Split text into pieces of about `size` characters, cut after a newline where possible."""
    start = 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start, end)
            if cut > start:
                end = cut + 1
        yield text[start:end]
        start = end


def train_tokenizer(documents: list[str], kind: str = "bpe", vocab_size: int = 8192) -> TextTokenizer:
    """Train a tokenizer on the documents. BPE is byte-level (lossless for any text)."""
    if kind == "bpe":
        if vocab_size < 257 + 1:
            raise LlmlabError(f"BPE vocabulary size {vocab_size} is too small", "use at least 258")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((c for d in documents for c in split_chunks(d)), trainer=trainer)
        return TextTokenizer(tok)
    if kind == "char":
        chars = sorted(set().union(*(set(d) for d in documents)))
        vocab = {c: i for i, c in enumerate(chars)}
        vocab[UNK] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
        # Split by lines so the BPE model never sees one giant "word"; no merges means one id per char.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("\n+|[^\n]+"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens([EOS])
        return TextTokenizer(tok)
    raise LlmlabError(f"unknown tokenizer kind {kind!r}", f"choose one of: {', '.join(KINDS)}")


def tokenizer_fingerprint(tokenizer: TextTokenizer) -> str:
    """A stable description of the tokenizer, for cache keys."""
    return json.dumps(json.loads(tokenizer.to_json()), sort_keys=True)
