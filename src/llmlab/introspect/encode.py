"""What an encoder gives besides text: fill-in-the-blank predictions and sentence vectors.

`fill_mask` asks a masked-LM (BERT-like) model for the likeliest tokens at each [MASK]; `embed`
mean-pools the last hidden states of any family (the encoder's for encoder-decoder models) over the
real tokens, as sentence-transformers does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmlab.data.collate import pad_rows
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.model import LanguageModel
from llmlab.tokenizer import TextTokenizer


@dataclass
class Filler:
    token: str
    token_id: int
    probability: float
    text: str  # the input with this token in place of the [MASK]


def model_input(model: LanguageModel, tokenizer: TextTokenizer, text: str) -> list[int]:
    """Token ids the model was trained to read: [CLS] text [SEP] (encoder), text </s> (encoder-decoder),
    or the text itself (decoder); refuses text longer than the context window."""
    ids = family_spec(model.config).text_ids(tokenizer, tokenizer.encode(text))
    if not ids:
        raise LlmlabError("the text is empty", "pass some text")
    if len(ids) > model.config.block_size:
        raise LlmlabError(
            f"the text has {len(ids)} tokens but the model reads at most {model.config.block_size}",
            "shorten the text",
        )
    return ids


@torch.inference_mode()
def fill_mask(model: LanguageModel, tokenizer: TextTokenizer, text: str, top_k: int = 5) -> list[list[Filler]]:
    """For each [MASK] in `text`, the top_k tokens with their probabilities (most likely first)."""
    if not family_spec(model.config).masked_lm:
        raise LlmlabError(
            f"fill-mask needs an encoder (masked-LM) model, this is a {model.config.family} model",
            "train one with llmlab pretrain --family encoder",
        )
    mask_id = tokenizer.require("mask", "for fill-mask")
    if top_k < 1:
        raise LlmlabError(f"top-k must be >= 1, got {top_k}", "pass e.g. --top-k 5")
    ids = model_input(model, tokenizer, text)
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        raise LlmlabError(
            f"the text has no {tokenizer.inner.id_to_token(mask_id)} token", "write it where a word is missing"
        )
    x = torch.tensor([ids], device=model.device)
    probs = model(x)[0, positions].float().softmax(dim=-1)
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    results = []
    for position, row_p, row_i in zip(positions, values.tolist(), indices.tolist()):
        fillers = []
        for p, i in zip(row_p, row_i):
            filled = list(ids)
            filled[position] = i
            fillers.append(Filler(tokenizer.decode([i]), i, p, tokenizer.decode(filled[1:-1])))  # no [CLS]/[SEP]
        results.append(fillers)
    return results


@torch.inference_mode()
def embed(model: LanguageModel, tokenizer: TextTokenizer, texts: list[str], normalize: bool = True) -> torch.Tensor:
    """(N, width) mean-pooled sentence vectors, unit length unless normalize=False."""
    if not texts:
        raise LlmlabError("no text to embed", "pass --text (repeatable) or --file")
    rows = [model_input(model, tokenizer, t) for t in texts]
    spec = family_spec(model.config)
    ids, real = pad_rows(rows, spec.pad_id(tokenizer))  # right padding: a causal decoder's real tokens never see it
    ids, real = ids.to(model.device), real.to(model.device)
    if spec.seq2seq:
        hidden = model.encode(ids, real)
    elif spec.causal:
        hidden = model.hidden_states(ids)
    else:
        hidden = model.hidden_states(ids, real)
    weights = real[..., None].to(hidden.dtype)
    vectors = ((hidden * weights).sum(dim=1) / weights.sum(dim=1)).float()
    return F.normalize(vectors, dim=-1) if normalize else vectors
