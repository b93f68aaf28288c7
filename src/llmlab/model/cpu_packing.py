"""Faster bf16 inference on CPUs: linear layers with weights pre-packed for oneDNN.

At batch 1 a decoder is bound by reading its weights; in eager PyTorch a bf16 `nn.Linear` at one row
runs ~2.4x slower than the same matrix pre-packed in oneDNN's blocked layout (measured: 53 us vs
23 us for 1536x384 on AVX-512-BF16). `packed_for_inference` returns a copy of a model whose linear
layers use packed weights; every other tensor is shared with the original, which stays trainable.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmlab.model.surgery import every_linear, replace_linears


def can_pack(model: nn.Module) -> bool:
    p = next(model.parameters())
    return (
        p.device.type == "cpu"
        and p.dtype == torch.bfloat16
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


class PackedLinear(nn.Module):
    """Inference-only stand-in for nn.Linear with a oneDNN pre-packed bf16 weight."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features = linear.out_features
        weight = linear.weight.detach()
        self.register_buffer("packed", torch.ops.mkldnn._reorder_linear_weight(weight, None), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def packed_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` sharing its tensors, with every nn.Linear replaced by a PackedLinear."""
    if isinstance(model, nn.Linear):
        return PackedLinear(model)
    clone = _tree_copy(model, {})
    replace_linears(clone, every_linear, lambda name, linear: PackedLinear(linear))
    return clone


def _tree_copy(module: nn.Module, copies: dict[int, nn.Module]) -> nn.Module:
    """A copy of the module tree that shares every parameter and buffer with the original (and keeps a
    module shared by two parents shared), so replacing layers in it leaves the original as it was."""
    if id(module) not in copies:
        clone = copies[id(module)] = copy.copy(module)
        clone._parameters = dict(module._parameters)
        clone._buffers = dict(module._buffers)
        clone._modules = {
            name: None if child is None else _tree_copy(child, copies) for name, child in module._modules.items()
        }
    return copies[id(module)]
