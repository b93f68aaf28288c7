"""Faster inference on CPUs: linear layers with weights pre-packed for oneDNN, in bf16 and fp32.

At batch 1 a decoder is bound by reading its weights; in eager PyTorch a bf16 `nn.Linear` at one row
runs ~2.4x slower than the same matrix pre-packed in oneDNN's blocked layout (measured: 53 us vs
23 us for 1536x384 on AVX-512-BF16), and an fp32 one ~2x slower (48 fp32 decoder matrices plus an
8,192-token head: 20.1 ms eager, 9.5 ms packed, against 8.8 ms to merely sum the same bytes).
`packed_for_inference` returns a copy of a model whose linear layers use packed weights; every other
tensor is shared with the original, which stays trainable.

The packed product is registered as the operator `llmlab::packed_linear` so that `torch.compile` keeps
it as one opaque call (inductor cannot lower oneDNN's own op with these arguments).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from llmlab.kernels import cpu_has, kernels_ready
from llmlab.model.huge_pages import into_huge_pages
from llmlab.model.surgery import every_linear, replace_linears


def can_pack(model: nn.Module) -> bool:
    p = next(model.parameters())
    return (
        p.device.type == "cpu"
        and p.dtype in (torch.bfloat16, torch.float32)
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and (p.dtype == torch.float32 or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    )


# Up to this many rows a product streams the plain weight through llmlab's own kernel (llmlab/kernels:
# 1.3x (bf16) / 1.4x (fp32) oneDNN's packed speed at one row on an 82M Llama's matrices, even at 4, behind at 8).
FEW_ROWS = 3


@torch.library.custom_op("llmlab::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  out_features: int) -> torch.Tensor:  # fmt: skip
    """x @ W^T + b: a few rows through llmlab's kernel on the plain weight, more through oneDNN's pre-packed one.
    Deciding inside the operator keeps the row count out of a compiled step's guards (`out_features` tells the
    compiler the output's width)."""
    if _few_rows(x, weight):
        return _plain_linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _few_rows(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether llmlab's kernel takes this product (as its C++ operator decides: bf16 needs AVX512-BF16)."""
    fast = x.dtype == torch.float32 or cpu_has("avx512_bf16")
    return x.numel() // x.shape[-1] <= FEW_ROWS and x.dtype == weight.dtype and fast and kernels_ready()


def _plain_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """llmlab's kernel on the plain weight, for any leading shape of x."""
    y = torch.ops.llmlab_kernels.float_linear(x.reshape(-1, x.shape[-1]), weight, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0])


@packed_linear.register_fake
def _(x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
      out_features: int) -> torch.Tensor:  # fmt: skip
    return x.new_empty((*x.shape[:-1], out_features))


class PackedLinear(nn.Module):
    """Inference-only stand-in for nn.Linear with a oneDNN pre-packed weight (bf16 or fp32)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.out_features = linear.out_features
        # the trainable weight, read again by `repack`; kept out of this module's own parameters
        object.__setattr__(self, "source", linear.weight)
        self.register_buffer("packed", self._pack(), persistent=False)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach(), persistent=False)

    def _pack(self) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(self.source.detach(), None)

    def repack(self) -> None:
        """Pack the source weight again, into the same tensor: a compiled step that holds it stays valid."""
        with torch.inference_mode():  # the buffer may have been made under it (inside a generate call)
            self.packed.copy_(self._pack())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():  # a registered operator: opaque to the compiler, deciding rows itself
            op = torch.ops.llmlab_kernels.packed_linear if kernels_ready() else packed_linear  # C++: no Python call
            return op(x, self.packed, self.source.detach(), self.bias, self.out_features)
        if _few_rows(x, self.source):  # as the operator decides; calling the kernels directly saves ~6 us a call
            return _plain_linear(x, self.source.detach(), self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def packed_for_inference(model: nn.Module) -> nn.Module:
    """A copy of `model` sharing its tensors, with every nn.Linear replaced by a PackedLinear. The model's
    large tensors move into 2 MiB pages first (model/huge_pages.py: ~1.2x the weight-reading rate here),
    in place, so the original reads them from there too."""
    kernels_ready()  # built or loaded now, eagerly: never first inside a step that torch.compile traces
    into_huge_pages(model)
    if isinstance(model, nn.Linear):
        return PackedLinear(model)
    clone = _tree_copy(model, {})
    replace_linears(clone, every_linear, lambda name, linear: PackedLinear(linear))
    return clone


def repack(packed: nn.Module) -> None:
    """Refresh a packed copy after the original's weights changed in place (a training step)."""
    for module in packed.modules():
        if isinstance(module, PackedLinear):
            module.repack()


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
