"""Tokenizers trained on the user's corpus (byte-level BPE or characters), saved as tokenizer.json.

Both kinds are `tokenizers.Tokenizer` objects, so one file format and one fast encoder serve both.
Each family gets the special tokens its objective needs (see `special_tokens_for`); their roles
(end of text, padding, mask, ...) are found by name, so tokenizers from elsewhere work too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from llmlab.errors import LlmlabError

EOS = "<|endoftext|>"
UNK = "<|unk|>"
PAD, CLS, SEP, MASK = "[PAD]", "[CLS]", "[SEP]", "[MASK]"
T5_PAD = "<pad>"
SENTINELS = 100  # T5's <extra_id_0> ... <extra_id_99>
KINDS = ("bpe", "char")
CHUNK_CHARS = 1 << 16  # encoding one huge string is ~10x slower than batches of chunks

# Names a role's token goes by (llmlab's own first, then Hugging Face conventions).
ROLE_NAMES = {
    "eos": (EOS, "</s>", "<|end_of_text|>"),
    "pad": (PAD, T5_PAD),
    "mask": (MASK, "<mask>"),
    "cls": (CLS,),
    "sep": (SEP,),
    "bos": ("<s>", "<|begin_of_text|>"),
    "unk": (UNK, "<unk>", "[UNK]"),
}
ROLES = tuple(ROLE_NAMES)


def sentinel(i: int) -> str:
    return f"<extra_id_{i}>"


# Each family's special tokens (placed first in the vocabulary) and T5 sentinels (placed last);
# read through llmlab.family.FamilySpec.special_tokens.
FAMILY_SPECIAL_TOKENS: dict[str, tuple[tuple[str, ...], int]] = {
    "decoder": ((EOS,), 0),
    "encoder": ((PAD, CLS, SEP, MASK), 0),
    "encoder-decoder": ((T5_PAD, EOS), SENTINELS),
}


def special_tokens_for(family: str) -> tuple[list[str], int]:
    """(special tokens placed first in the vocabulary, number of T5 sentinels placed last)."""
    specials, sentinels = FAMILY_SPECIAL_TOKENS.get(family, FAMILY_SPECIAL_TOKENS["decoder"])
    return list(specials), sentinels


class TextTokenizer:
    """Wraps a `tokenizers.Tokenizer` with the roles of its special tokens.

    Roles are found by the usual names (ROLE_NAMES) unless `roles` names the token of a role, as an
    imported tokenizer's special_tokens_map does; explicit roles are saved with a checkpoint.
    """

    def __init__(self, tokenizer: Tokenizer, roles: dict[str, str] | None = None) -> None:
        tokenizer.no_padding()  # imported tokenizer.json files may pad or cut to a fixed length:
        tokenizer.no_truncation()  # llmlab pads batches and budgets the context window itself
        self.inner = tokenizer
        self.roles = {k: v for k, v in (roles or {}).items() if k in ROLE_NAMES and v is not None}

        def find(role: str) -> int | None:
            if role in self.roles:
                return tokenizer.token_to_id(self.roles[role])
            return next((i for n in ROLE_NAMES[role] if (i := tokenizer.token_to_id(n)) is not None), None)

        self.eos_id: int | None = find("eos")
        self.pad_id: int | None = find("pad")
        self.mask_id: int | None = find("mask")
        self.cls_id: int | None = find("cls")
        self.sep_id: int | None = find("sep")
        self.bos_id: int | None = find("bos")
        self.unk_id: int | None = find("unk")
        if self.eos_id is None and self.sep_id is None:
            raise LlmlabError(f"tokenizer has neither {EOS} nor {SEP}", "train the tokenizer with llmlab")
        self.sentinel_ids: list[int] = []  # sentinel_ids[i] is <extra_id_i>
        while (i := tokenizer.token_to_id(sentinel(len(self.sentinel_ids)))) is not None:
            self.sentinel_ids.append(i)
        self.special_ids: frozenset[int] = frozenset(
            i for i, token in tokenizer.get_added_tokens_decoder().items() if token.special
        )
        # What the tokenizer's own post-processor puts before a text (Llama's <s>): prompts get it too.
        bare = tokenizer.encode("a", add_special_tokens=False).ids
        full = tokenizer.encode("a").ids
        self.prefix_ids: list[int] = full[: full.index(bare[0])] if bare and bare[0] in full else []

    @property
    def separator_id(self) -> int:
        """The token written between documents: end-of-text, or [SEP] for BERT-style tokenizers."""
        return self.eos_id if self.eos_id is not None else self.sep_id

    def require(self, role: str, why: str) -> int:
        """The id of a role's token, or a clear error saying this tokenizer cannot do `why`."""
        value = getattr(self, f"{role}_id")
        if value is None:
            names = " or ".join(ROLE_NAMES[role])
            raise LlmlabError(
                f"the tokenizer has no {names} token, needed {why}", "use a checkpoint of a family that has it"
            )
        return value

    @property
    def vocab_size(self) -> int:
        return self.inner.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """The text's own tokens; each family adds its special tokens itself (see encode.model_input)."""
        return self.inner.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.inner.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.inner.decode(list(ids), skip_special_tokens=False)

    def encode_document(self, text: str) -> list[int]:
        """Encode text of any size in newline-aligned chunks (fast and memory-bounded)."""
        ids: list[int] = []
        for enc in self.inner.encode_batch(list(split_chunks(text)), add_special_tokens=False):
            ids.extend(enc.ids)
        return ids

    def to_json(self) -> str:
        return self.inner.to_str()

    def save(self, path: str | Path) -> None:
        self.inner.save(str(path))

    @classmethod
    def load(cls, path: str | Path, roles: dict[str, str] | None = None) -> TextTokenizer:
        try:
            return cls(Tokenizer.from_file(str(path)), roles)
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


def train_tokenizer(
    documents: list[str], kind: str = "bpe", vocab_size: int = 8192, family: str = "decoder"
) -> TextTokenizer:
    """Train a tokenizer on the documents with the special tokens of `family`. BPE is byte-level
    (lossless for any text) and its vocabulary, sentinels included, is at most `vocab_size`."""
    specials, sentinels = special_tokens_for(family)
    if kind == "bpe":
        smallest = 256 + len(specials) + sentinels + 2
        if vocab_size < smallest:
            raise LlmlabError(f"BPE vocabulary size {vocab_size} is too small", f"use at least {smallest}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - sentinels,
            special_tokens=specials,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator((c for d in documents for c in split_chunks(d)), trainer=trainer)
    elif kind == "char":
        chars = sorted(set().union(*(set(d) for d in documents)))
        vocab = {c: i for i, c in enumerate(chars)}
        vocab[UNK] = len(vocab)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
        # Split by lines so the BPE model never sees one giant "word"; no merges means one id per char.
        tok.pre_tokenizer = pre_tokenizers.Split(Regex("\n+|[^\n]+"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.add_special_tokens(specials)
    else:
        raise LlmlabError(f"unknown tokenizer kind {kind!r}", f"choose one of: {', '.join(KINDS)}")
    # T5 numbers its sentinels from the end of the vocabulary downward: <extra_id_0> is the last id.
    tok.add_special_tokens([sentinel(i) for i in reversed(range(sentinels))])
    return TextTokenizer(tok)


def tokenizer_fingerprint(tokenizer: TextTokenizer) -> str:
    """A stable description of the tokenizer, for cache keys."""
    return json.dumps(json.loads(tokenizer.to_json()), sort_keys=True)
