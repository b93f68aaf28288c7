"""Continuation log-probabilities: how likely a model finds each answer after its prompt.

Classification by rank scores every label this way; lm-eval's `loglikelihood` requests too.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from llmlab.data.collate import pad_rows
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.model import LanguageModel
from llmlab.tokenizer import TextTokenizer


class ContinuationScore(NamedTuple):
    logprob: float  # sum over the continuation's tokens
    tokens: int
    greedy: bool  # whether greedy decoding would have produced exactly this continuation


class Scorer:
    """Token counts and continuation log-probabilities for decoder and encoder-decoder models."""

    def __init__(self, model: LanguageModel, tokenizer: TextTokenizer, batch_size: int = 16) -> None:
        self.family = family_spec(model.config)
        self.family.require_generates(
            "encoder-only models cannot be prompted", "evaluate a decoder or encoder-decoder model"
        )
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.seq2seq = self.family.seq2seq
        self.block = model.config.block_size

    def prompt_ids(self, text: str) -> list[int]:
        """What the model reads for a prompt: the tokenizer's prefix (decoder) or end-of-sequence (seq2seq)."""
        return self.family.prompt_ids(self.tokenizer, self.tokenizer.encode(text))

    def count_tokens(self, text: str) -> int:
        return len(self.prompt_ids(text))

    def budget(self, reserve: int) -> int:
        """Prompt tokens allowed when `reserve` tokens are kept for the answer."""
        if reserve >= self.block:
            raise LlmlabError(
                f"{reserve} tokens reserved for the answer leave no room in the {self.block}-token window",
                "lower --max-new-tokens",
            )
        return self.block if self.seq2seq else self.block - reserve

    @torch.inference_mode()
    def logprobs(self, contexts: list[str], continuations: list[str]) -> list[ContinuationScore]:
        """Log-probability, token count and greediness of each continuation after its context."""
        results: list[ContinuationScore] = []
        for start in range(0, len(contexts), self.batch_size):
            pairs = list(zip(contexts[start : start + self.batch_size], continuations[start : start + self.batch_size]))
            results += self._seq2seq_batch(pairs) if self.seq2seq else self._decoder_batch(pairs)
        return results

    def _decoder_batch(self, pairs: list[tuple[str, str]]) -> list[ContinuationScore]:
        rows, lengths = [], []
        for context, continuation in pairs:
            cont = self.tokenizer.encode(continuation)
            ids = (self.prompt_ids(context) + cont)[-(self.block + 1) :]  # the continuation always survives
            rows.append(ids)
            lengths.append(len(cont))
        x, _ = pad_rows([r[:-1] for r in rows], self.family.pad_id(self.tokenizer))  # causal: padding unseen
        logp = F.log_softmax(self.model(x.to(self.model.device)).float(), dim=-1).cpu()
        out = []
        for i, (r, n) in enumerate(zip(rows, lengths)):
            positions, target = torch.arange(len(r) - 1 - n, len(r) - 1), torch.tensor(r[-n:])
            out.append(_score(logp[i, positions], target))
        return out

    def _seq2seq_batch(self, pairs: list[tuple[str, str]]) -> list[ContinuationScore]:
        sources = [self.prompt_ids(c)[-self.block :] for c, _ in pairs]
        targets = [self.tokenizer.encode(t)[: self.block] for _, t in pairs]
        pad = self.family.pad_id(self.tokenizer)
        src, mask = pad_rows(sources, pad)
        tgt, _ = pad_rows(targets, pad)
        start = torch.full((len(pairs), 1), self.family.start_id(self.model.config, self.tokenizer))
        decoder_in = torch.cat([start, tgt[:, :-1]], dim=1)
        device = self.model.device
        logp = F.log_softmax(self.model(src.to(device), decoder_in.to(device), mask.to(device)).float(), -1).cpu()
        return [_score(logp[i, : len(t)], torch.tensor(t)) for i, t in enumerate(targets)]


def _score(logp: torch.Tensor, target: torch.Tensor) -> ContinuationScore:
    """A continuation's score from the (n, V) log-probabilities at its n positions."""
    greedy = bool((logp.argmax(-1) == target).all())
    return ContinuationScore(float(logp.gather(1, target[:, None]).sum()), len(target), greedy)
