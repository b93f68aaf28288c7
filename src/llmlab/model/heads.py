"""Task heads on an encoder's contextual vectors, laid out as transformers' BERT heads so that a
fine-tuned classifier or tagger exports to `BertForSequenceClassification` / `BertForTokenClassification`
with the same logits.

- Sequence tasks (classify, multilabel, regress) read the first token ([CLS]) through BERT's pooler
  (dense + tanh), then dropout and one linear layer: one logit per label, or one score.
- Token tasks (tag) put dropout and one linear layer on every position: one logit per tag.
- A decoder's sequence tasks read its last real token through one linear layer (GPT-2's and Llama's
  `...ForSequenceClassification`): with causal attention only that token has seen the whole text.
"""

from __future__ import annotations

import torch
from torch import nn

from llmlab.config import ModelConfig

SEQUENCE_TASKS = ("classify", "multilabel", "regress")


class SequenceHead(nn.Module):
    """[CLS] -> pooler (dense + tanh) -> dropout -> classifier: (B, T, C) -> (B, labels)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.pooler = nn.Linear(config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(torch.tanh(self.pooler(h[:, 0]))))


class TokenHead(nn.Module):
    """Every position -> dropout -> classifier: (B, T, C) -> (B, T, labels)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(h))


class LastTokenHead(nn.Module):
    """A decoder's sequence head, as transformers' `...ForSequenceClassification`: one linear layer
    without bias (`score`) on the last real token, the only one that has read the whole text."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)

    def forward(self, h: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        return self.score(h[torch.arange(h.shape[0], device=h.device), last])


def build_task_head(config: ModelConfig) -> nn.Module | None:
    """The head `config.task` names, freshly initialised, or None."""
    if config.task is None:
        return None
    if config.family == "decoder":
        return LastTokenHead(config)
    return SequenceHead(config) if config.task in SEQUENCE_TASKS else TokenHead(config)
