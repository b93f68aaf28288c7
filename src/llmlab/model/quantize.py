"""Weight-only quantization: int8 per output channel, int4 per group, computed from the integer weights.

int8 layers keep `int8` weights and one scale per output row (absmax) or a scale and a zero point
(zero-point); on the CPU they multiply with PyTorch's fused weight-only int8 kernel
(`aten._weight_int8pack_mm`, activations in bf16), elsewhere by dequantizing one layer at a time.
int4 layers keep two 4-bit values per byte with a scale and a zero point per group of input columns
and multiply with PyTorch's fused CPU int4 kernel (`aten._weight_int4pack_mm_for_cpu`), elsewhere
by dequantizing one layer at a time inside forward (never the whole model at load).
Norms stay in 16-bit; the embedding and output head too, unless `embeddings=True` quantizes them
(a tied pair shares one quantized table).
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import LlmlabError

FORMATS = ("fp16", "bf16", "int8", "int4")
SCHEMES = ("absmax", "zeropoint")


@dataclass
class QuantizationSpec:
    """What `llmlab quantize` did, stored in config.json so loading can rebuild the same layers."""

    format: str
    scheme: str = "absmax"
    group_size: int = 128
    skip: list[str] = field(default_factory=list)  # fnmatch patterns of module names kept in 16-bit
    embeddings: bool = False  # also quantize the token embedding and the output head

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise LlmlabError(f"unknown format {self.format!r}", f"use one of: {', '.join(FORMATS)}")
        if self.scheme not in SCHEMES:
            raise LlmlabError(f"unknown scheme {self.scheme!r}", f"use one of: {', '.join(SCHEMES)}")
        if self.group_size < 2 or self.group_size & (self.group_size - 1):
            raise LlmlabError(f"group size must be a power of two >= 2, got {self.group_size}", "use 32, 64 or 128")

    def to_dict(self) -> dict:
        return asdict(self)


def quantize_rows_int8(w: torch.Tensor, scheme: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """int8 codes, per-row scales and (zero-point scheme) per-row zero points, with w ~ (q - z) * s."""
    w = w.float()
    if scheme == "absmax":
        scale = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
        return torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8), scale, None
    lo, hi = w.amin(dim=1), w.amax(dim=1)
    scale = ((hi - lo) / 255).clamp(min=1e-12)
    zero = torch.round(-lo / scale) - 128
    q = torch.clamp(torch.round(w / scale[:, None]) + zero[:, None], -128, 127).to(torch.int8)
    return q, scale, zero


def quantize_groups_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit codes 0..15 per group of `group_size` input columns, w ~ (q - z) * s (asymmetric)."""
    out_features, in_features = w.shape
    if in_features % group_size:
        raise LlmlabError(
            f"input width {in_features} is not a multiple of group size {group_size}",
            "choose a group size that divides the layer width, or --skip the layer",
        )
    groups = w.float().reshape(out_features, in_features // group_size, group_size)
    lo, hi = groups.amin(dim=2), groups.amax(dim=2)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(groups / scale[..., None]) + zero[..., None], 0, 15).to(torch.uint8)
    return q.reshape(out_features, in_features), scale, zero


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: even columns in the low nibble, odd columns in the high nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


class Int8Linear(nn.Module):
    """Weight-only int8 linear layer computing from its int8 weights."""

    def __init__(self, in_features: int, out_features: int, bias: bool, scheme: str) -> None:
        super().__init__()
        self.in_features, self.out_features, self.scheme = in_features, out_features, scheme
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scales", torch.ones(out_features))
        self.register_buffer("zeros", torch.zeros(out_features) if scheme == "zeropoint" else None)
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str) -> Int8Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme)
        q, scale, zero = quantize_rows_int8(linear.weight.detach(), scheme)
        layer.weight_int8.copy_(q)
        layer.scales = scale.to(linear.weight.dtype)
        if zero is not None:
            layer.zeros = zero.to(linear.weight.dtype)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight_int8.to(dtype)
        if self.zeros is not None:
            w = w - self.zeros.to(dtype)[:, None]
        return w * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm"):
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # the kernel needs it
            scales = self.scales.to(torch.bfloat16)
            y = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, scales)
            if self.zeros is not None:  # x @ ((q - z) s)^T = x @ (q s)^T - sum(x) * (z s)
                y = y - flat.sum(dim=1, keepdim=True) * (self.zeros.to(torch.bfloat16) * scales)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.dequantized(x.dtype))
        return y if self.bias is None else y + self.bias.to(y.dtype)


class Int4Linear(nn.Module):
    """Weight-only int4 linear layer: packed 4-bit weights, a scale and zero point per group."""

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group_size = in_features, out_features, group_size
        groups = in_features // group_size
        self.register_buffer("weight_int4", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("scales", torch.ones(out_features, groups))
        self.register_buffer("zeros", torch.zeros(out_features, groups))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, group_size: int) -> Int4Linear:
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, group_size)
        q, scale, zero = quantize_groups_int4(linear.weight.detach(), group_size)
        layer.weight_int4.copy_(pack_int4(q))
        layer.scales, layer.zeros = scale.to(linear.weight.dtype), zero.to(linear.weight.dtype)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        q = unpack_int4(self.weight_int4).to(dtype).reshape(self.out_features, -1, self.group_size)
        w = (q - self.zeros.to(dtype)[..., None]) * self.scales.to(dtype)[..., None]
        return w.reshape(self.out_features, self.in_features)

    def _cpu_kernel_operands(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights in the layout of PyTorch's CPU int4 kernel, built once (and again if the tensors change).
        The kernel computes w = (q - 8) * scale + offset, so offset = (8 - zero) * scale."""
        version = (self.weight_int4._version, self.scales._version, self.zeros._version)
        if getattr(self, "_kernel_version", None) != version:
            codes = unpack_int4(self.weight_int4).to(torch.int32)
            self._kernel_weight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
            offset = (8 - self.zeros.float()) * self.scales.float()
            pairs = torch.stack([self.scales.float(), offset], dim=-1)  # [out, groups, 2]
            self._kernel_scales = pairs.transpose(0, 1).contiguous().to(torch.bfloat16)
            self._kernel_version = version
        return self._kernel_weight, self._kernel_scales

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # PyTorch's CPU int4 kernel needs the output width to be a multiple of 16
        if (
            x.device.type == "cpu"
            and self.out_features % 16 == 0
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        ):
            weight, scales = self._cpu_kernel_operands()
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # the kernel needs it
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, weight, self.group_size, scales)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.dequantized(x.dtype))  # one layer at a time, freed right after
        return y if self.bias is None else y + self.bias.to(y.dtype)


class QuantizedEmbedding(nn.Module):
    """A token embedding read from a quantized table (int8 rows or int4 groups), one row per token.
    With tied embeddings the same table is the output head, so it is stored and kept once."""

    def __init__(self, table: Int8Linear | Int4Linear) -> None:
        super().__init__()
        self.table = table

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.table
        if isinstance(t, Int8Linear):
            rows = t.weight_int8[idx].to(torch.bfloat16)
            if t.zeros is not None:
                rows = rows - t.zeros[idx].to(torch.bfloat16)[..., None]
            return rows * t.scales[idx].to(torch.bfloat16)[..., None]
        codes = unpack_int4(t.weight_int4[idx.flatten()]).to(torch.bfloat16)
        codes = codes.reshape(idx.numel(), -1, t.group_size)
        rows = (codes - t.zeros[idx.flatten()].to(torch.bfloat16)[..., None]) * t.scales[idx.flatten()].to(
            torch.bfloat16
        )[..., None]
        return rows.reshape(*idx.shape, t.in_features)


def _quantize_embeddings(model: nn.Module, spec: QuantizationSpec, empty: bool) -> None:
    """Replace embedding (and head) by quantized tables; tied models share one table."""
    if model.config.family != "decoder":
        raise LlmlabError(
            f"quantizing the embeddings of {model.config.family} models is not supported",
            "leave out --embeddings (the blocks' linear layers are still quantized)",
        )
    weight = model.embed.weight

    def table_from(w: torch.Tensor) -> nn.Module:
        vocab, width = w.shape
        if empty:
            if spec.format == "int8":
                return Int8Linear(width, vocab, False, spec.scheme)
            return Int4Linear(width, vocab, False, spec.group_size)
        linear = nn.Linear(width, vocab, bias=False)
        linear.weight = nn.Parameter(w.detach())
        if spec.format == "int8":
            return Int8Linear.from_linear(linear, spec.scheme)
        return Int4Linear.from_linear(linear, spec.group_size)

    table = table_from(weight)
    model.embed = QuantizedEmbedding(table)
    model.lm_head = table if model.config.tie_embeddings else table_from(model.lm_head.weight)


def in_blocks(name: str) -> bool:
    """True for a module or parameter inside a stack's transformer blocks (any family)."""
    return ".blocks." in f".{name}"


def _quantizable(model: nn.Module, spec: QuantizationSpec) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, linear) for every linear layer to quantize: inside the blocks, not skipped."""
    found = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if (
                isinstance(child, nn.Linear)
                and in_blocks(full)
                and not any(fnmatch.fnmatch(full, pattern) for pattern in spec.skip)
            ):
                found.append((module, child_name, child))
    return found


def quantize_model(model: nn.Module, spec: QuantizationSpec) -> nn.Module:
    """Quantize a model in place: 16-bit formats cast everything, int formats replace the blocks'
    linear layers and keep the rest in bf16."""
    spec.validate()
    if spec.format in ("fp16", "bf16"):
        return model.to(torch.float16 if spec.format == "fp16" else torch.bfloat16)
    for parent, attr, linear in _quantizable(model, spec):
        if spec.format == "int8":
            setattr(parent, attr, Int8Linear.from_linear(linear, spec.scheme))
        else:
            setattr(parent, attr, Int4Linear.from_linear(linear, spec.group_size))
    if spec.embeddings:
        _quantize_embeddings(model, spec, empty=False)
    return model.to(torch.bfloat16)


def prepare_quantized_structure(model: nn.Module, spec: QuantizationSpec) -> nn.Module:
    """Empty quantized layers in the right places, for loading a quantized checkpoint's tensors."""
    if spec.format in ("fp16", "bf16"):
        return model.to(torch.float16 if spec.format == "fp16" else torch.bfloat16)
    for parent, attr, linear in _quantizable(model, spec):
        bias = linear.bias is not None
        if spec.format == "int8":
            setattr(parent, attr, Int8Linear(linear.in_features, linear.out_features, bias, spec.scheme))
        else:
            setattr(parent, attr, Int4Linear(linear.in_features, linear.out_features, bias, spec.group_size))
    if spec.embeddings:
        _quantize_embeddings(model, spec, empty=True)
    return model.to(torch.bfloat16)
