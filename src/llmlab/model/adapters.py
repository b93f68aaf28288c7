"""What an adapter run trains, whatever the method: LoRA's A and B matrices and a soft prompt, as one
dict of tensors to save and load."""

from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.lora import load_lora_state, lora_state

SOFT_PROMPT = "soft_prompt"


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    prompt = getattr(model, SOFT_PROMPT, None)
    return {**lora_state(model), **({SOFT_PROMPT: prompt.detach()} if prompt is not None else {})}


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    tensors = dict(tensors)
    if SOFT_PROMPT in tensors:
        prompt = tensors.pop(SOFT_PROMPT)
        own = getattr(model, SOFT_PROMPT, None)
        if own is None or own.shape != prompt.shape:
            raise LlmlabError(f"the adapter's soft prompt {tuple(prompt.shape)} does not fit this model",
                              "load it on the base it was trained on")  # fmt: skip
        with torch.no_grad():
            own.copy_(prompt)
    if tensors or lora_state(model):
        load_lora_state(model, tensors)
