"""Task heads on an encoder's contextual vectors, laid out as transformers' BERT heads so that a
fine-tuned classifier or tagger exports to `BertForSequenceClassification` / `BertForTokenClassification`
with the same logits.

- Sequence tasks (classify, multilabel, regress) read the first token ([CLS]) through BERT's pooler
  (dense + tanh), then dropout and one linear layer: one logit per label, or one score.
- Token tasks (tag) put dropout and one linear layer on every position: one logit per tag.
"""

from __future__ import annotations

import dataclasses

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


def with_task_head(model: nn.Module, task: str, labels: list[str]) -> nn.Module:
    """A copy of encoder `model` with a fresh `task` head over `labels` and no masked-LM head."""
    from llmlab.model import build_model

    config = dataclasses.replace(model.config, task=task, labels=list(labels), mlm_head=False)
    tasked = build_model(config)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(("mlm_head.", "task_head."))}
    missing, unexpected = tasked.load_state_dict(own, strict=False)
    if unexpected or any(not k.startswith("task_head.") for k in missing):
        raise RuntimeError(f"the encoder's weights do not fit its task model: {missing[:2]}, {unexpected[:2]}")
    return tasked
