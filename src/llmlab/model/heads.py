"""Task heads on an encoder's contextual vectors, laid out as transformers' BERT heads so that a
fine-tuned classifier or tagger exports to `BertForSequenceClassification` / `BertForTokenClassification`
with the same logits.

- Sequence tasks (classify, multilabel, regress) read the first token ([CLS]) through BERT's pooler
  (dense + tanh), then dropout and one linear layer: one logit per label, or one score.
- Token tasks (tag) put dropout and one linear layer on every position: one logit per tag.
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


def build_task_head(config: ModelConfig) -> nn.Module | None:
    """The head `config.task` names, freshly initialised, or None."""
    if config.task is None:
        return None
    return SequenceHead(config) if config.task in SEQUENCE_TASKS else TokenHead(config)
