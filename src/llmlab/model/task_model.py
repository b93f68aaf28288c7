"""An encoder given a task head: the same weights, a new head (model/heads.py), no masked-LM head."""

from __future__ import annotations

import dataclasses

from torch import nn

from llmlab.model import build_model


def with_task_head(model: nn.Module, task: str, labels: list[str]) -> nn.Module:
    """A copy of `model` with a fresh `task` head over `labels` (an encoder loses its masked-LM head; a
    decoder keeps its language-model head, unused by the task)."""
    encoder = model.config.family == "encoder"
    config = dataclasses.replace(model.config, task=task, labels=list(labels),
                                 mlm_head=False if encoder else model.config.mlm_head)  # fmt: skip
    tasked = build_model(config)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(("mlm_head.", "task_head."))}
    missing, unexpected = tasked.load_state_dict(own, strict=False)
    if unexpected or any(not k.startswith("task_head.") for k in missing):
        raise RuntimeError(f"the encoder's weights do not fit its task model: {missing[:2]}, {unexpected[:2]}")
    return tasked
