"""Word-level tagging data: CoNLL column files and JSONL `tokens`/`tags` records, with the tags checked
as BIO / IOB2 (the scheme seqeval and CoNLL-2003's common release use) before any training.

A CoNLL file has one token per line, its tag in the last column (CoNLL-2003: word, POS, chunk, NER),
blank lines between sentences and optional `-DOCSTART-` lines, which are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmlab.errors import LlmlabError

CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio")


@dataclass(frozen=True)
class TaggedSentence:
    words: list[str]
    tags: list[str]


def read_conll(path: str | Path) -> list[TaggedSentence]:
    """Sentences of a CoNLL column file; a line with fewer than two columns is an error naming it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise LlmlabError(f"cannot read {path}: {exc}", "pass a UTF-8 CoNLL file (token ... tag per line)") from None
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[str] = []
    for number, line in enumerate(lines, start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append(TaggedSentence(words, tags))
                words, tags = [], []
            continue
        if len(columns) < 2:
            raise LlmlabError(f"{path}:{number}: {line.strip()!r} has no tag column",
                              "write one token per line with its tag last, separated by whitespace")  # fmt: skip
        words.append(columns[0])
        tags.append(columns[-1])
    if words:
        sentences.append(TaggedSentence(words, tags))
    if not sentences:
        raise LlmlabError(f"{path} holds no tagged sentence", "pass a CoNLL file with token and tag columns")
    return sentences


def tagged_records(records: list[dict], source: str) -> list[TaggedSentence]:
    """Sentences from JSONL-style records with `tokens` and `tags` lists of equal length."""
    sentences = []
    for number, record in enumerate(records, start=1):
        words, tags = record.get("tokens"), record.get("tags")
        if not isinstance(words, list) or not isinstance(tags, list):
            raise LlmlabError(f"{source}: record {number} lacks a `tokens` or `tags` list",
                              'write records like {"tokens": ["John", "lives"], "tags": ["B-PER", "O"]}')  # fmt: skip
        if len(words) != len(tags):
            raise LlmlabError(f"{source}: record {number} has {len(words)} tokens but {len(tags)} tags",
                              "give one tag per token")  # fmt: skip
        sentences.append(TaggedSentence([str(w) for w in words], [str(t) for t in tags]))
    return sentences


def check_bio(sentences: list[TaggedSentence], source: str) -> list[str]:
    """The tag set, O first then entity tags sorted by type (B before I); tags that are not O, B-TYPE or
    I-TYPE are refused naming the first one."""
    seen: set[str] = set()
    for number, sentence in enumerate(sentences, start=1):
        for tag in sentence.tags:
            prefix, _, kind = tag.partition("-")
            if tag != "O" and not (prefix in ("B", "I") and kind):
                fix = "use O, B-TYPE and I-TYPE tags (IOB2), as CoNLL-2003's common release does"
                raise LlmlabError(f"{source}: sentence {number} has the tag {tag!r}, which is not BIO", fix)
            seen.add(tag)
    entity = sorted((t for t in seen if t != "O"), key=lambda t: (t[2:], t[0]))
    return ["O", *entity] if "O" in seen else entity


@dataclass(frozen=True)
class Span:
    """An entity: its type and the words [start, end) it covers."""

    type: str
    start: int
    end: int


def bio_spans(tags: list[str]) -> list[Span]:
    """Entities of a BIO tag sequence, read as CoNLL's evaluation (and seqeval by default) reads them:
    an entity starts at B-X, or at I-X after O or after another type, and goes on while I-X follows."""
    spans: list[Span] = []
    kind, start = None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, tag_type = tag.partition("-")
        continues = prefix == "I" and tag_type == kind
        if kind is not None and not continues:
            spans.append(Span(kind, start, i))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = tag_type, i
    return spans
