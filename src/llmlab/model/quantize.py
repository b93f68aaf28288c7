"""Weight-only quantization: int8 per output channel, int4 and NF4 per group, computed from the stored codes.

int8 layers keep `int8` weights and one scale per output row (absmax) or a scale and a zero point
(zero-point); on AVX-512 CPUs they multiply with llmlab's own int8 kernel (llmlab/kernels), on other CPUs
with PyTorch's fused weight-only int8 kernel (`aten._weight_int8pack_mm`, activations in bf16), elsewhere
by dequantizing one layer at a time.
int4 layers keep two 4-bit values per byte with a scale and a zero point per group of input columns
and multiply with PyTorch's fused CPU int4 kernel (`aten._weight_int4pack_mm_for_cpu`), elsewhere
by dequantizing one layer at a time inside forward (never the whole model at load).
NF4 layers (QLoRA's 4-bit NormalFloat, Dettmers et al. 2023) keep two 4-bit indices into a table of
normal-distribution quantiles per byte and an fp32 absmax per block of input columns; they always
dequantize one layer at a time (no fused kernel), which also makes them a frozen base for LoRA.
Norms stay in 16-bit; the embedding and output head too, unless `embeddings=True` quantizes them
(a tied pair shares one quantized table).
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.kernels import kernels_ready
from llmlab.model.surgery import Select, in_blocks, replace_linears  # in_blocks is imported from here too

FORMATS = ("fp16", "bf16", "int8", "int4", "nf4")
SCHEMES = ("absmax", "zeropoint")
KERNEL_GROUP_SIZES = (32, 64, 128, 256)  # what PyTorch's CPU int4 kernel takes; others dequantize instead
DEFAULT_GROUP_SIZES = {"nf4": 64}  # QLoRA's block size; every other format: 128

# The 16 NF4 values as published (QLoRA appendix; bitsandbytes' table). Quantization uses these, so
# codes match other NF4 implementations; `nf4_code_values` derives them and a test checks the two agree.
NF4_VALUES = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
NF4_OFFSET = 0.9677083  # the outermost quantile's probability: the mean of 1 - 1/(2*15) and 1 - 1/(2*16)


@dataclass
class QuantizationSpec:
    """What `llmlab quantize` did, stored in config.json so loading can rebuild the same layers."""

    format: str
    scheme: str = "absmax"
    group_size: int | None = None  # int4/nf4: the group size asked for (None: 128, nf4 64), used where it fits
    skip: list[str] = field(default_factory=list)  # fnmatch patterns of module names kept in 16-bit
    embeddings: bool = False  # also quantize the token embedding and the output head
    group_sizes: dict[str, int] = field(default_factory=dict)  # int4/nf4: layers that got a smaller group

    def __post_init__(self) -> None:
        if self.group_size is None:  # resolved here so config.json always records the number
            self.group_size = DEFAULT_GROUP_SIZES.get(self.format, 128)

    def validate(self) -> None:
        if self.format not in FORMATS:
            raise LlmlabError(f"unknown format {self.format!r}", f"use one of: {', '.join(FORMATS)}")
        if self.scheme not in SCHEMES:
            raise LlmlabError(f"unknown scheme {self.scheme!r}", f"use one of: {', '.join(SCHEMES)}")
        for name, size in {"": self.group_size, **self.group_sizes}.items():
            if not _power_of_two(size):
                where = f" of {name}" if name else ""
                raise LlmlabError(f"group size{where} must be a power of two >= 2, got {size!r}", "use 32, 64 or 128")

    def to_dict(self) -> dict:
        return asdict(self)

    def layer_group_size(self, name: str) -> int:
        """The int4 group size (nf4: block size) layer `name` was quantized with."""
        return self.group_sizes.get(name, self.group_size)


def _power_of_two(size: object) -> bool:
    return isinstance(size, int) and not isinstance(size, bool) and size >= 2 and not size & (size - 1)


def _fitting_group_sizes(in_features: int, requested: int) -> list[int]:
    """The powers of two <= `requested` that divide the width, largest first; an error if none does."""
    fitting = [g for g in (requested >> i for i in range(requested.bit_length())) if g >= 2 and in_features % g == 0]
    if not fitting:
        raise LlmlabError(
            f"input width {in_features} is not a multiple of any group size from {requested} down to 2",
            "--skip the layer (odd widths cannot be packed two values to a byte)",
        )
    return fitting


def int4_group_size(in_features: int, requested: int) -> int:
    """The group size for a layer `in_features` wide: the largest power of two <= `requested` that
    divides the width, preferring one the CPU kernel takes (so 128 asked, width 192: 64)."""
    fitting = _fitting_group_sizes(in_features, requested)
    return next((g for g in fitting if g in KERNEL_GROUP_SIZES), fitting[0])


def nf4_block_size(in_features: int, requested: int = 64) -> int:
    """The NF4 block size for a layer `in_features` wide: the largest power of two <= `requested`
    that divides the width (no kernel to prefer sizes for), so 64 asked, width 96: 32."""
    return _fitting_group_sizes(in_features, requested)[0]


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


def _in_groups(w: torch.Tensor, size: int, what: str) -> torch.Tensor:
    """(out, in) -> fp32 (out, in / size, size): runs of `size` input columns that share a scale."""
    out_features, in_features = w.shape
    if in_features % size:
        raise LlmlabError(
            f"input width {in_features} is not a multiple of {what} size {size}",
            f"choose a {what} size that divides the layer width, or --skip the layer",
        )
    return w.float().reshape(out_features, in_features // size, size)


def quantize_groups_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """4-bit codes 0..15 per group of `group_size` input columns, w ~ (q - z) * s (asymmetric)."""
    out_features, in_features = w.shape
    groups = _in_groups(w, group_size, "group")
    lo, hi = groups.amin(dim=2), groups.amax(dim=2)
    scale = ((hi - lo) / 15).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(groups / scale[..., None]) + zero[..., None], 0, 15).to(torch.uint8)
    return q.reshape(out_features, in_features), scale, zero


def nf4_code_values(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The NF4 table from its definition (QLoRA section 3): quantiles of N(0, 1), so that each code is
    equally likely for normally distributed weights. 8 quantiles for the positive half and 7 for the
    negative one, plus an exact 0 (padding and zeros stay exact with an even number of codes); the
    outermost at probability `offset`, not 1 where the quantile is infinite; scaled to [-1, 1]."""
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (values / values.abs().max()).float()


def quantize_blocks_nf4(w: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """NF4 codes 0..15 (indices into NF4_VALUES) and the fp32 absmax of each block of `block_size`
    input columns, w ~ NF4_VALUES[q] * absmax: each value scaled into [-1, 1] goes to the nearest
    code value (a tie to the lower one). Symmetric, so no zero point; an all-zero block stays zero."""
    out_features, in_features = w.shape
    blocks = _in_groups(w, block_size, "block")
    absmax = blocks.abs().amax(dim=2)
    scaled = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[..., None]
    table = torch.tensor(NF4_VALUES, device=w.device)
    q = torch.bucketize(scaled, (table[1:] + table[:-1]) / 2, out_int32=True)  # nearest: between midpoints
    return q.to(torch.uint8).reshape(out_features, in_features), absmax


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, block_size: int) -> torch.Tensor:
    """fp32 rows from packed NF4 codes ([rows, width / 2]) and their absmax ([rows, width / block_size])."""
    codes = unpack_int4(packed).int()  # int, not uint8: a uint8 index would be read as a mask
    values = torch.tensor(NF4_VALUES, device=packed.device)[codes]
    rows = values.reshape(packed.shape[0], -1, block_size) * absmax.float()[..., None]
    return rows.reshape(packed.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte: even columns in the low nibble, odd columns in the high nibble."""
    return (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)


def _int8_kernel(x: torch.Tensor) -> bool:
    """Whether `x` goes through PyTorch's fused int8 kernel: on the CPU, where PyTorch has it (tests turn it off)."""
    return x.device.type == "cpu" and hasattr(torch.ops.aten, "_weight_int8pack_mm")


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

    def _own_kernel(self, x: torch.Tensor) -> bool:
        """llmlab's kernel serves inference on x86 CPUs (it has no backward) for widths it handles."""
        return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
                and not (x.requires_grad and torch.is_grad_enabled())
                and self.in_features <= 32768 and kernels_ready())  # fmt: skip

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        w = self.weight_int8.to(dtype)
        if self.zeros is not None:
            w = w - self.zeros.to(dtype)[:, None]
        return w * self.scales.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._own_kernel(x):  # llmlab/kernels: each weight read once per call, whatever the rows
            flat = x.reshape(-1, self.in_features)
            scales = self.scales.float()  # itself when already fp32
            y = torch.ops.llmlab_kernels.int8_linear(flat, self.weight_int8, scales)
            if self.zeros is not None:  # x @ ((q - z) s)^T = x @ (q s)^T - sum(x) * (z s)
                y = y - flat.sum(dim=1, keepdim=True).to(y.dtype) * (self.zeros.float() * scales).to(y.dtype)
            y = y.reshape(*x.shape[:-1], self.out_features)
        elif _int8_kernel(x):
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
        if in_features % group_size:
            raise LlmlabError(
                f"input width {in_features} is not a multiple of group size {group_size}",
                "choose a group size that divides the layer width, or --skip the layer",
            )
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
        # PyTorch's CPU int4 kernel needs the output width to be a multiple of 16 and groups of 32 to 256
        if (
            x.device.type == "cpu"
            and self.out_features % 16 == 0
            and self.group_size in KERNEL_GROUP_SIZES
            and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        ):
            weight, scales = self._cpu_kernel_operands()
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # the kernel needs it
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, weight, self.group_size, scales)
            y = y.to(x.dtype).reshape(*x.shape[:-1], self.out_features)
        else:
            y = F.linear(x, self.dequantized(x.dtype))  # one layer at a time, freed right after
        return y if self.bias is None else y + self.bias.to(y.dtype)


class _FrozenWeightLinear(torch.autograd.Function):
    """x W^T for a frozen 4-bit W that is dequantized again in backward rather than kept: F.linear would
    save each layer's 16-bit copy for the input's gradient, which is most of what 4-bit storage saves."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, layer: NF4Linear) -> torch.Tensor:
        ctx.layer = layer
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        return F.linear(x.to(dtype), layer.dequantized(dtype))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad @ ctx.layer.dequantized(grad.dtype), None


class NF4Linear(nn.Module):
    """Weight-only NF4 linear layer: packed 4-bit indices into NF4_VALUES, an fp32 absmax per block.

    Everything is a buffer (codes, scales, bias), so the layer has no parameters: a LoRA adapter can
    wrap it as a frozen base (QLoRA) and gradients still reach its input. Forward dequantizes the
    weight to the input's dtype and calls F.linear. QLoRA's double quantization (8-bit absmax in
    blocks of 256, 0.5 -> 0.127 bits per weight at blocks of 64) is not done: the scales stay fp32,
    which costs 0.5 bits per weight but keeps a layer one table lookup and one multiply."""

    def __init__(self, in_features: int, out_features: int, bias: bool, block_size: int = 64) -> None:
        super().__init__()
        if not _power_of_two(block_size) or in_features % block_size:
            raise LlmlabError(
                f"input width {in_features} is not a multiple of block size {block_size}",
                "choose a power-of-two block size that divides the layer width, or --skip the layer",
            )
        self.in_features, self.out_features, self.block_size = in_features, out_features, block_size
        self.register_buffer("weight_nf4", torch.zeros(out_features, in_features // 2, dtype=torch.uint8))
        self.register_buffer("absmax", torch.ones(out_features, in_features // block_size, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, block_size: int = 64) -> NF4Linear:
        """`linear` in NF4, with the largest power-of-two block <= `block_size` that divides its width."""
        block = nf4_block_size(linear.in_features, block_size)
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, block)
        q, absmax = quantize_blocks_nf4(linear.weight.detach(), block)
        layer.weight_nf4.copy_(pack_int4(q))
        layer.absmax.copy_(absmax)
        if linear.bias is not None:
            layer.bias = linear.bias.detach().clone()
        return layer

    def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize_nf4(self.weight_nf4, self.absmax, self.block_size).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:  # QLoRA: the gradient flows through to the adapters below
            y = _FrozenWeightLinear.apply(x, self)
        else:
            y = F.linear(x, self.dequantized(x.dtype))  # one layer at a time, freed right after
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> NF4Linear:
        """Keep the absmax fp32 through `model.to(torch.bfloat16)` (as QLoRA does): a bf16 scale would
        shift every weight of its block by up to 0.4%. Moves between devices still apply."""
        absmax = self.absmax
        super()._apply(fn, recurse)
        if self.absmax.dtype != torch.float32:
            self.absmax = absmax.to(self.absmax.device, torch.float32)
        return self


class QuantizedEmbedding(nn.Module):
    """A token embedding read from a quantized table (int8 rows, int4 or NF4 groups), one row per token.
    With tied embeddings the same table is the output head, so it is stored and kept once."""

    def __init__(self, table: Int8Linear | Int4Linear | NF4Linear) -> None:
        super().__init__()
        self.table = table

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = self.table
        if isinstance(t, Int8Linear):
            rows = t.weight_int8[idx].to(torch.bfloat16)
            if t.zeros is not None:
                rows = rows - t.zeros[idx].to(torch.bfloat16)[..., None]
            return rows * t.scales[idx].to(torch.bfloat16)[..., None]
        if isinstance(t, NF4Linear):
            rows = dequantize_nf4(t.weight_nf4[idx.flatten()], t.absmax[idx.flatten()], t.block_size)
            return rows.to(torch.bfloat16).reshape(*idx.shape, t.in_features)
        codes = unpack_int4(t.weight_int4[idx.flatten()]).to(torch.bfloat16)
        codes = codes.reshape(idx.numel(), -1, t.group_size)
        rows = (codes - t.zeros[idx.flatten()].to(torch.bfloat16)[..., None]) * t.scales[idx.flatten()].to(
            torch.bfloat16
        )[..., None]
        return rows.reshape(*idx.shape, t.in_features)


def _quantize_embeddings(model: nn.Module, spec: QuantizationSpec, empty: bool) -> None:
    """Replace embedding (and head) by quantized tables; tied models share one table."""
    if not family_spec(model.config).causal:
        raise LlmlabError(
            f"quantizing the embeddings of {model.config.family} models is not supported",
            "leave out --embeddings (the blocks' linear layers are still quantized)",
        )

    def table_from(w: torch.Tensor, name: str) -> nn.Module:
        vocab, width = w.shape
        linear = nn.Linear(width, vocab, bias=False, device="meta") if empty else nn.Linear(width, vocab, bias=False)
        if not empty:
            linear.weight = nn.Parameter(w.detach())
        return _quantized_layer(spec, name, linear, empty)

    table = table_from(model.embed.weight, "embed.table")
    model.embed = QuantizedEmbedding(table)
    model.lm_head = table if model.config.tie_embeddings else table_from(model.lm_head.weight, "lm_head")


def _quantized_layer(spec: QuantizationSpec, name: str, linear: nn.Linear, empty: bool) -> nn.Module:
    """The int8, int4 or nf4 stand-in for `linear`: quantized from it, or `empty` (to load tensors into).
    int4/nf4 layers quantized here get the group size that fits them, recorded in spec.group_sizes;
    empty ones take the recorded one."""
    bias = linear.bias is not None
    if spec.format == "int8":
        if empty:
            return Int8Linear(linear.in_features, linear.out_features, bias, spec.scheme)
        return Int8Linear.from_linear(linear, spec.scheme)
    cls = NF4Linear if spec.format == "nf4" else Int4Linear
    if empty:
        group = spec.layer_group_size(name)
        if linear.in_features % group:
            raise LlmlabError(
                f"{spec.format} group size {group} of {name} does not divide its width {linear.in_features}",
                "re-quantize the full-precision checkpoint",
            )
        return cls(linear.in_features, linear.out_features, bias, group)
    fit = nf4_block_size if spec.format == "nf4" else int4_group_size
    try:
        group = fit(linear.in_features, spec.group_size)
    except LlmlabError as exc:
        raise LlmlabError(f"{name}: {exc.what}", exc.fix) from None
    if group != spec.group_size:
        spec.group_sizes[name] = group
    return cls.from_linear(linear, group)


def _selected(spec: QuantizationSpec) -> Select:
    """The layers to quantize: linear layers inside the blocks that no --skip pattern names."""

    def select(name: str, linear: nn.Linear) -> bool:
        return in_blocks(name) and not any(fnmatch.fnmatch(name, pattern) for pattern in spec.skip)

    return select


def quantize_model(model: nn.Module, spec: QuantizationSpec) -> nn.Module:
    """Quantize a model in place: 16-bit formats cast everything, 8/4-bit formats replace the blocks'
    linear layers and keep the rest in bf16 (NF4's absmax stays fp32). int4/nf4 layers whose width the
    group size does not divide get a smaller one: recorded in `spec.group_sizes` (so save `spec.to_dict()`
    after this) and warned about."""
    spec.validate()
    if spec.format in ("fp16", "bf16"):
        return model.to(torch.float16 if spec.format == "fp16" else torch.bfloat16)
    spec.group_sizes = {}
    replace_linears(model, _selected(spec), lambda name, linear: _quantized_layer(spec, name, linear, empty=False))
    if spec.embeddings:
        _quantize_embeddings(model, spec, empty=False)
    if note := smaller_groups_note(spec):
        warnings.warn(note, stacklevel=2)
    return model.to(torch.bfloat16)


def smaller_groups_note(spec: QuantizationSpec) -> str | None:
    """One line saying which int4/nf4 layers got a smaller group than asked for, or None if none did."""
    if not spec.group_sizes:
        return None
    by_size: dict[int, list[str]] = {}
    for name, size in spec.group_sizes.items():
        by_size.setdefault(size, []).append(name)
    parts = [
        f"{size} for {len(names)} layer{'s' * (len(names) > 1)} (e.g. {names[0]})"
        for size, names in sorted(by_size.items(), reverse=True)
    ]
    head = f"{spec.format} group size {spec.group_size} does not fit every layer; smaller groups, kept in config.json"
    return f"{head}: {', '.join(parts)}"


def prepare_quantized_structure(model: nn.Module, spec: QuantizationSpec) -> nn.Module:
    """Empty quantized layers in the right places, for loading a quantized checkpoint's tensors."""
    if spec.format in ("fp16", "bf16"):
        return model.to(torch.float16 if spec.format == "fp16" else torch.bfloat16)
    replace_linears(model, _selected(spec), lambda name, linear: _quantized_layer(spec, name, linear, empty=True))
    if spec.embeddings:
        _quantize_embeddings(model, spec, empty=True)
    return model.to(torch.bfloat16)
