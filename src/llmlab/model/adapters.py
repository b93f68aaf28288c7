"""What an adapter run trains, whatever the method: LoRA's A and B matrices and a soft prompt, as one
dict of tensors to save and load."""

from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.lora import load_lora_state, lora_state

SOFT_PROMPT = "soft_prompt"


TASK_HEAD = "task_head."  # a task head trained with LoRA is new, so it is saved with the adapter


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    tensors = lora_state(model)
    head = getattr(model, "task_head", None)
    if head is not None:
        tensors.update({f"{TASK_HEAD}{k}": v.detach() for k, v in head.state_dict().items()})
    prompt = getattr(model, SOFT_PROMPT, None)
    if prompt is not None:
        tensors[SOFT_PROMPT] = prompt.detach()
    return tensors


def load_adapter_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    tensors = dict(tensors)
    head = {k[len(TASK_HEAD) :]: tensors.pop(k) for k in list(tensors) if k.startswith(TASK_HEAD)}
    if head:
        own = getattr(model, "task_head", None)
        fits = own is not None and all(k in own.state_dict() and own.state_dict()[k].shape == v.shape
                                       for k, v in head.items())  # fmt: skip
        if not fits:
            raise LlmlabError(
                "the adapter's task head does not fit this model", "load it on the base it was trained on"
            )
        own.load_state_dict(head)
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
