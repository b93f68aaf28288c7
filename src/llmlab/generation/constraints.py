"""Structured output: a grammar enforced token by token, so the text always parses.

At every step the grammar engine says which tokens may come next (a bitmask over the vocabulary); the
others get -inf before sampling, so temperature, top-k and top-p act on the allowed tokens only and the
model's own preferences choose among them. Grammars come from a JSON schema, a regex, a list of choices
or a Lark file, compiled by llguidance (the engine behind OpenAI's and vLLM's structured outputs: an
Earley parser over the tokenizer's byte trie, ~50 us a mask). Once the grammar is complete the row may
only end (end-of-sequence), so a completion is cut by the grammar, not by a stop string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.errors import LlmlabError
from llmlab.tokenizer import TextTokenizer

KINDS = ("json_schema", "regex", "choice", "lark")


def _engine():
    try:
        import llguidance
    except ImportError as exc:
        raise LlmlabError("structured output needs llguidance", "pip install 'llmlab[augment]'") from exc
    return llguidance


@dataclass(frozen=True)
class Grammar:
    """What the output must match, as llguidance's grammar text, and what it was made from (for messages)."""

    kind: str
    text: str
    source: str

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | str, source: str = "the JSON schema") -> Grammar:
        """Compact JSON (no free whitespace: fewer tokens, nothing for an untrained model to ramble in)."""
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as exc:
                raise LlmlabError(f"{source} is not JSON ({exc.msg} at line {exc.lineno})", "fix the file") from exc
        if not isinstance(schema, dict):
            raise LlmlabError(f"{source} is not a JSON object", 'a JSON schema is an object, e.g. {"type": ...}')
        _check_schema(schema, source)
        text = _engine().LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        return cls("json_schema", text, source)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        return cls("regex", _engine().LLMatcher.grammar_from_regex(pattern), f"the regex {pattern!r}")

    @classmethod
    def choice(cls, choices: list[str]) -> Grammar:
        """Exactly one of the strings (a Lark alternation of JSON-escaped literals)."""
        choices = [c for c in choices if c]
        if not choices:
            raise LlmlabError("no choices given", "pass e.g. --choice positive,negative")
        lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=True) for c in choices)
        return cls("choice", _engine().LLMatcher.grammar_from_lark(lark), f"the choices {', '.join(choices)}")

    @classmethod
    def lark(cls, text: str, source: str = "the Lark grammar") -> Grammar:
        return cls("lark", _engine().LLMatcher.grammar_from_lark(text), source)


class TokenGrammar:
    """A grammar bound to a tokenizer: checked once, then one matcher per generated row."""

    def __init__(self, grammar: Grammar, tokenizer: TextTokenizer, eos_id: int) -> None:
        llg = _engine()
        self.grammar, self.eos_id, self.vocab_size = grammar, eos_id, tokenizer.vocab_size
        self.tokenizer = engine_tokenizer(tokenizer, eos_id)
        error = llg.LLMatcher.validate_grammar(grammar.text, self.tokenizer)
        if error:
            raise LlmlabError(f"{grammar.source} does not compile: {_one_line(error)}", "fix it and run again")
        self._fresh = llg.LLMatcher(self.tokenizer, grammar.text, log_level=0)  # never advanced: copied per row
        probe = self.matcher()
        if not probe.is_accepting() and not (_allowed(probe, self.vocab_size) & ~_only(eos_id, self.vocab_size)).any():
            raise LlmlabError(f"{grammar.source} matches no text", "loosen it so that some text matches")

    def matcher(self) -> Any:
        """A matcher at the grammar's start: a copy of a compiled one (compiling again costs ~5-150 ms)."""
        return self._fresh.deep_copy()


class RowConstraints:
    """The matchers of a batch's rows: the logits mask before sampling, the sampled tokens after."""

    def __init__(self, grammar: TokenGrammar, rows: int) -> None:
        self.grammar = grammar
        self.matchers = [grammar.matcher() for _ in range(rows)]

    def mask_(self, logits: torch.Tensor, active: list[bool]) -> None:
        """-inf on every token the grammar forbids, in the rows still generating (in place)."""
        with torch.inference_mode():  # the logits may be inference tensors (the server's)
            self._mask(logits, active)

    def _mask(self, logits: torch.Tensor, active: list[bool]) -> None:
        vocab = logits.shape[-1]
        for row, matcher in enumerate(self.matchers):
            if active[row]:
                allowed = _allowed(matcher, self.grammar.vocab_size)
                logits[row, : self.grammar.vocab_size].masked_fill_(~allowed.to(logits.device), float("-inf"))
                if vocab > self.grammar.vocab_size:  # an imported model's padded vocabulary
                    logits[row, self.grammar.vocab_size :] = float("-inf")

    def advance(self, tokens: list[int], active: list[bool]) -> None:
        for row, (matcher, token) in enumerate(zip(self.matchers, tokens)):
            if active[row] and not matcher.consume_token(token):  # only if the mask was not applied
                raise RuntimeError(f"row {row}: token {token} broke the grammar ({matcher.get_error()})")

    def complete(self, row: int) -> bool:
        """Whether the row's text so far is a full match of the grammar."""
        return self.matchers[row].is_accepting()


def engine_tokenizer(tokenizer: TextTokenizer, eos_id: int) -> Any:
    """llguidance's view of the tokenizer: each token's bytes. It reads a `tokenizers` JSON (byte-level
    BPE, SentencePiece); a character tokenizer (one id per character) is given as its characters."""
    llg = _engine()
    try:
        return llg.LLTokenizer(tokenizer.inner.to_str(), n_vocab=tokenizer.vocab_size, eos_token=eos_id)
    except (ValueError, RuntimeError) as first:
        decoder = (json.loads(tokenizer.inner.to_str()).get("decoder") or {}).get("type")
        if decoder != "Fuse":  # not llmlab's character tokenizer
            raise LlmlabError(f"llguidance cannot read this tokenizer ({_one_line(str(first))})",
                              "use a byte-level BPE or SentencePiece tokenizer") from first  # fmt: skip
        return llg.LLTokenizer(_CharTokenizer(tokenizer, eos_id), n_vocab=tokenizer.vocab_size)


class _CharTokenizer:
    """The TokenizerWrapper protocol for a tokenizer with one id per character: other entries (special
    tokens, the unknown-character token) are special, so a grammar never produces them."""

    def __init__(self, tokenizer: TextTokenizer, eos_id: int) -> None:
        by_id = {i: t for t, i in tokenizer.inner.get_vocab(with_added_tokens=True).items()}
        self.tokens = [by_id.get(i, "").encode() for i in range(tokenizer.vocab_size)]
        self.special_token_ids = [i for i, t in by_id.items() if len(t) != 1]
        self.eos_token_id, self.bos_token_id = eos_id, None
        self._encode = tokenizer.encode
        self.is_tokenizer_wrapper = True

    def __call__(self, text: str | bytes) -> list[int]:
        return self._encode(text.decode("utf-8", errors="replace") if isinstance(text, bytes) else text)


def _check_schema(schema: dict[str, Any], source: str) -> None:
    """The schema against its metaschema (jsonschema), so a typo is named before the engine sees it."""
    try:
        import jsonschema
    except ImportError:
        return  # the engine still refuses what it cannot compile
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "the top level"
        raise LlmlabError(f"{source} is not a valid JSON schema at {where}: {_one_line(exc.message)}",
                          "fix the schema") from None  # fmt: skip


def _allowed(matcher: Any, vocab_size: int) -> torch.Tensor:
    """The matcher's bitmask (32 tokens per int32) as one boolean per token."""
    words = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
    bits = (words[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
    return bits.flatten()[:vocab_size].bool()


def _only(token: int, vocab_size: int) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[token] = True
    return mask


def _one_line(message: str) -> str:
    return " ".join(message.split())[:300]
