"""The language-model loss every family trains with (and fine-tuning reuses): cross-entropy over the
labelled positions of a batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.data.objectives import IGNORE, Batch
from llmlab.family import family_spec
from llmlab.training.distributed import unwrap


def lm_loss(model: nn.Module, batch: Batch, normalizer: float | None = None) -> torch.Tensor:
    """Cross-entropy over the labelled positions, whatever the family: their mean, or their sum divided
    by `normalizer` (a rank's share of a global batch: global labelled count / world size).

    A masked LM runs its head only where the labels are (15% of positions), so its logits come back
    already selected; the other families return logits for every position."""
    spec = family_spec(unwrap(model).config)
    reduction = "mean" if normalizer is None else "sum"
    if spec.masked_lm:
        selected = batch.labels != IGNORE
        logits = model(batch.inputs, batch.attention_mask, select=selected)
        loss = F.cross_entropy(logits.float(), batch.labels[selected], reduction=reduction)
    else:
        if spec.seq2seq:
            logits = model(batch.inputs, batch.decoder_inputs, batch.attention_mask)
        else:
            logits = model(batch.inputs)
        return token_loss(logits, batch.labels, normalizer)
    return loss if normalizer is None else loss / normalizer


def token_loss(logits: torch.Tensor, labels: torch.Tensor, normalizer: float | None = None) -> torch.Tensor:
    """(B, T, V) logits against (B, T) labels (IGNORE where none): their fp32 cross-entropy, the mean, or
    the sum divided by `normalizer`."""
    reduction = "mean" if normalizer is None else "sum"
    loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction=reduction)
    return loss if normalizer is None else loss / normalizer
