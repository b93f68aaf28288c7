"""Perplexity: exp of the mean negative log-likelihood of the scored tokens, the one core (`Nll`) behind
a text's sliding-window perplexity (`llmlab evaluate --perplexity`, lm-eval's rolling log-likelihood)
and the perplexity over sampled token windows of the quantization report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.data.objectives import IGNORE
from llmlab.data.tokens import get_batch
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.model import LanguageModel
from llmlab.tokenizer import TextTokenizer


@dataclass
class Nll:
    """Negative log-likelihood summed over the scored tokens (targets that are not IGNORE)."""

    total: float = 0.0
    tokens: int = 0

    def add(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Score (..., V) logits against (...) targets."""
        flat = logits.float().flatten(0, -2)
        self.total += float(F.cross_entropy(flat, targets.flatten(), ignore_index=IGNORE, reduction="sum"))
        self.tokens += int((targets != IGNORE).sum())

    @property
    def mean(self) -> float:
        return self.total / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean)


@torch.inference_mode()
def text_nll(model: LanguageModel, tokenizer: TextTokenizer, text: str, stride: int | None = None) -> Nll:
    """A text's negative log-likelihood with a sliding window of the model's context.

    Each window scores only the tokens the previous one did not, so every token is predicted once,
    from up to block_size - stride tokens of preceding context (stride defaults to half the window).
    """
    spec = family_spec(model.config)
    if not spec.causal:
        raise LlmlabError("perplexity is defined here for decoder-only models", "evaluate a decoder checkpoint")
    ids = spec.prompt_ids(tokenizer, tokenizer.encode(text))
    block = model.config.block_size
    stride = stride or max(1, block // 2)
    if not 0 < stride <= block:
        raise LlmlabError(f"--stride must be in 1..{block}, got {stride}", "use e.g. half the context")
    if len(ids) < 2:
        raise LlmlabError("the text has fewer than two tokens", "pass more text")
    nll, end = Nll(), 1  # tokens [1, end) are scored
    while end < len(ids):
        new_end = min(end + stride, len(ids))
        begin = max(0, new_end - block - 1)
        window = torch.tensor([ids[begin:new_end]], device=model.device)
        targets = window[:, 1:].clone()
        targets[:, : end - begin - 1] = IGNORE  # predicted by an earlier window
        nll.add(model(window[:, :-1]), targets)
        end = new_end
    return nll


def text_perplexity(
    model: LanguageModel, tokenizer: TextTokenizer, text: str, stride: int | None = None
) -> tuple[float, int]:
    """(perplexity, tokens scored) of a text, with a sliding window (see `text_nll`)."""
    nll = text_nll(model, tokenizer, text, stride)
    return nll.perplexity, nll.tokens


def text_loglikelihood(model: LanguageModel, tokenizer: TextTokenizer, text: str) -> float:
    """Total log-probability of a text (lm-eval's rolling log-likelihood); 0 when nothing can be scored."""
    if len(family_spec(model.config).prompt_ids(tokenizer, tokenizer.encode(text))) < 2:
        return 0.0
    return -text_nll(model, tokenizer, text).total


@torch.no_grad()
def window_perplexity(model: LanguageModel, ids: np.ndarray, batches: int, batch_size: int, block: int) -> float:
    """Perplexity over `batches` seeded batches of next-token windows of a token stream: the same
    windows for every model, so formats of one checkpoint compare."""
    nll = Nll()
    for i in range(batches):
        x, y = get_batch(ids, batch_size, block, seed=1234, step=i)
        nll.add(model(x.to(model.device)), y.to(model.device))
    return nll.perplexity


@torch.no_grad()
def span_perplexity(
    model: LanguageModel, tokenizer: TextTokenizer, text: str, batches: int = 20, batch_size: int = 8
) -> float:
    """An encoder-decoder's perplexity on its pre-training objective (T5 span corruption) over fixed,
    seeded batches of a text's windows: the same batches for every model of one tokenizer."""
    from llmlab.data.objectives import span_batch

    ids = np.array(tokenizer.encode(text), dtype=np.int64)
    block = min(model.config.block_size, 256)
    if len(ids) <= block:
        raise LlmlabError(f"the text has {len(ids)} tokens, fewer than one {block}-token window", "pass more text")
    start = family_spec(model.config).start_id(model.config, tokenizer)
    nll = Nll()
    for step in range(batches):
        batch = span_batch(ids, tokenizer, batch_size, block, start, 1234, step).to(model.device)
        nll.add(model(batch.inputs, batch.decoder_inputs, batch.attention_mask), batch.labels)
    return nll.perplexity
