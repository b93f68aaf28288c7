"""The per-document stages, run in worker processes on slices of a shard: normalise, quality, language,
toxicity, decontamination, PII; then the keys deduplication compares (a digest and a MinHash signature).

Everything here depends on one document alone, so any split of the stream between processes gives the
same answers; the stages that compare documents with each other run afterwards, in order, in the main
process (pipeline.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmlab.curate.config import CurateConfig
from llmlab.curate.decontaminate import EvalIndex
from llmlab.curate.minhash import Permutations, signature
from llmlab.curate.normalize import normalize
from llmlab.curate.shingles import ngram_hashes, word_hashes


@dataclass
class Judged:
    """One document after the per-document stages."""

    id: int
    text: str  # the text so far (dropped: as it was when dropped)
    chars: list[int]  # characters after each stage it passed, "read" first
    stage: str = ""  # where it was dropped ("" = kept so far)
    reason: str = ""
    kind: str = ""
    language: str = ""
    edits: dict[str, int] = field(default_factory=dict)  # "stage:what" -> count
    contamination: dict[str, int] = field(default_factory=dict)
    digest: bytes = b""
    signature: np.ndarray | None = None
    tokens: list[int] = field(default_factory=list)  # [as read, as kept] with the job's tokenizer, if any

    def drop(self, stage: str, reason: str) -> None:
        self.stage, self.reason = stage, reason

    def passed(self, text: str) -> None:
        self.text = text
        self.chars.append(len(text))


class Judge:
    """The per-document stages, built once per worker process (the language model loads once)."""

    def __init__(self, cfg: CurateConfig, eval_index: EvalIndex | None, tokenizer: str | None = None) -> None:
        self.cfg, self.eval_index = cfg, eval_index
        self.count_tokens = token_counter(tokenizer) if tokenizer else None
        self.perms = Permutations.make(cfg.dedup.bands * cfg.dedup.rows, cfg.dedup.seed)
        self.languages = None
        if cfg.language.enabled:
            from llmlab.curate.language import LanguageIdentifier

            self.languages = LanguageIdentifier(cfg.language)

    def __call__(self, docs: list[tuple[int, str]]) -> list[Judged]:
        judged = [Judged(i, text, [len(text)]) for i, text in docs]
        if self.count_tokens:
            for doc in judged:
                doc.tokens = [self.count_tokens(doc.text)]
        alive = self._normalize(judged)
        alive = self._quality(alive)
        alive = self._language(alive)
        alive = self._toxicity(alive)
        alive = self._decontaminate(alive)
        for doc in self._pii(alive):
            self._keys(doc)
            if self.count_tokens:
                doc.tokens.append(self.count_tokens(doc.text))
        return judged

    def _normalize(self, docs: list[Judged]) -> list[Judged]:
        cfg = self.cfg.normalize
        for doc in docs:
            text = normalize(doc.text, cfg) if cfg.enabled else doc.text
            doc.drop("normalize", "normalize.empty") if not text.strip() else doc.passed(text)
        return [d for d in docs if not d.stage]

    def _quality(self, docs: list[Judged]) -> list[Judged]:
        if not self.cfg.quality.enabled:
            return _skip(docs)
        from llmlab.curate.quality import judge

        for doc in docs:
            verdict = judge(doc.text, self.cfg.quality)
            doc.kind = verdict.kind
            if verdict.text is None:
                doc.drop("quality", f"quality.{verdict.reason}")
                continue
            doc.edits.update({f"quality:{k}": v for k, v in verdict.line_reasons.items() if v})
            doc.passed(verdict.text)
        return [d for d in docs if not d.stage]

    def _language(self, docs: list[Judged]) -> list[Judged]:
        prose = [d for d in docs if d.kind != "code"]  # code is judged by its own profile, not as a language
        if self.languages is None or not prose:
            return _skip(docs)
        for doc, (language, confidence) in zip(prose, self.languages.identify([d.text for d in prose])):
            doc.language = language
            reason = self.languages.reason(language, confidence)
            if reason:
                doc.drop("language", reason)
        return _skip(docs)

    def _toxicity(self, docs: list[Judged]) -> list[Judged]:
        if not self.cfg.toxicity.enabled or not docs:
            return _skip(docs)
        from llmlab.curate.toxicity import offensive_probability, toxicity_reason

        for doc, probability in zip(docs, offensive_probability([d.text for d in docs])):
            reason = toxicity_reason(probability, self.cfg.toxicity)
            if reason:
                doc.drop("toxicity", reason)
        return _skip(docs)

    def _decontaminate(self, docs: list[Judged]) -> list[Judged]:
        index = self.eval_index
        if index is None:
            return _skip(docs)
        for doc in docs:
            doc.contamination = index.matches(ngram_hashes(word_hashes(doc.text), index.ngram, short=False))
            if doc.contamination and self.cfg.decontaminate.action == "remove":
                doc.drop("decontaminate", "decontaminate." + "+".join(sorted(doc.contamination)))
        return _skip(docs)

    def _pii(self, docs: list[Judged]) -> list[Judged]:
        if not self.cfg.pii.enabled:
            return _skip(docs)
        from llmlab.curate.pii import scrub_pii

        for doc in docs:
            text, counts = scrub_pii(doc.text, self.cfg.pii)
            doc.edits.update({f"pii:{k}": v for k, v in counts.items()})
            doc.passed(text)
        return docs

    def _keys(self, doc: Judged) -> None:
        dedup = self.cfg.dedup
        doc.digest = hashlib.blake2b(doc.text.encode("utf-8"), digest_size=16).digest()
        if dedup.near:
            doc.signature = signature(word_hashes(doc.text), dedup.ngram, self.perms)


def _skip(docs: list[Judged]) -> list[Judged]:
    """The documents still alive, each having passed this stage unchanged."""
    alive = [d for d in docs if not d.stage]
    for doc in alive:
        doc.chars.append(len(doc.text))
    return alive


def token_counter(path: str) -> Callable[[str], int]:
    """Tokens per text with a checkpoint's (llmlab or Hugging Face folder) or a tokenizer.json's tokenizer."""
    from pathlib import Path

    from llmlab.errors import LlmlabError
    from llmlab.hf.importer import read_hf_tokenizer
    from llmlab.tokenizer import TextTokenizer

    where = Path(path)
    if where.is_file():
        tokenizer = TextTokenizer.load(where)
    elif where.is_dir():  # llmlab and Hugging Face folders alike: roles do not matter for counting
        tokenizer = read_hf_tokenizer(where)
    else:
        raise LlmlabError(f"tokenizer {path} not found", "pass a checkpoint folder or a tokenizer.json")
    return lambda text: len(tokenizer.encode_document(text))
