"""LoRA (Hu et al. 2021): a frozen linear layer plus a trainable low-rank update, y = W x + s * B A x.

Written here rather than taken from PEFT because it is the subject being taught: the update is two
small matrices (A: r x in, B: out x r, B starting at zero so training starts from the base model), the
scale s is alpha / r (or alpha / sqrt(r) with rsLoRA, Kalajdzievski 2023), and after training B A can
be added into W (merged) so inference costs nothing extra. The frozen base may be an `nn.Linear` or a
quantized layer with `dequantized(dtype)` (QLoRA: a 4-bit base with 16/32-bit adapters).

A fused layer of ours (attention's q|k|v, a gated MLP's gate|up) carries one adapter; exported to PEFT it
becomes one adapter per part with the same A and the matching rows of B, which is the same update.
"""

from __future__ import annotations

import contextlib
import fnmatch
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.surgery import find_linears, in_blocks, replace_linears

# --lora-targets groups: the last two parts of our layer names (inside the blocks)
TARGET_GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("attn.qkv", "attn.proj", "cross.q", "cross.kv", "cross.proj"),
    "qv": ("attn.qkv", "cross.q", "cross.kv"),  # the original paper's choice (q and v; ours are fused)
    "mlp": ("mlp.up", "mlp.down"),
    "all-linear": ("*",),
}


@dataclass(frozen=True)
class LoraSpec:
    """Rank, scale, dropout and which layers; the adapter folder stores it as JSON."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("attention",)
    rslora: bool = False

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def validate(self) -> None:
        if self.r < 1:
            raise LlmlabError(f"--lora-r must be at least 1, got {self.r}", "use e.g. --lora-r 8")
        if self.alpha <= 0:
            raise LlmlabError(f"--lora-alpha must be positive, got {self.alpha}", "use e.g. --lora-alpha 16 (2 x r)")
        if not 0.0 <= self.dropout < 1.0:
            raise LlmlabError(f"--lora-dropout must be in [0, 1), got {self.dropout}", "use e.g. 0.05")
        if not self.targets:
            raise LlmlabError("--lora-targets is empty", f"use one of {', '.join(TARGET_GROUPS)} or layer names")

    def to_dict(self) -> dict:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout, "targets": list(self.targets),
                "rslora": self.rslora}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> LoraSpec:
        return cls(int(data["r"]), float(data["alpha"]), float(data.get("dropout", 0.0)),
                   tuple(data["targets"]), bool(data.get("rslora", False)))  # fmt: skip


class _LowRankUpdate(torch.autograd.Function):
    """s * (x A^T) B^T with its own backward, for one reason: autograd computes B's gradient as
    grad_out^T @ h, a (out x tokens) @ (tokens x r) product that this CPU's fp32 GEMM runs ~9x slower than
    the same numbers as (h^T @ grad_out)^T (2048 x 2048 x 8: 10.7 ms against 1.2 ms), ~100 ms of a 1.35 s
    LoRA step on llama-mini. Used in training without autocast (fp32, or bf16 weights); the values are
    the same products either way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        h = flat @ A.t()  # (tokens, r)
        ctx.save_for_backward(flat, h, A, B)
        ctx.scaling, ctx.shape = scaling, x.shape
        return (h @ B.t()).mul_(scaling).view(*x.shape[:-1], B.shape[0])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        flat, h, A, B = ctx.saved_tensors
        g = grad_out.reshape(-1, grad_out.shape[-1])
        grad_h = (g @ B).mul_(ctx.scaling)  # (tokens, r)
        grad_B = (h.t() @ g).t().mul_(ctx.scaling) if ctx.needs_input_grad[2] else None  # (out, r), the fast way
        grad_A = grad_h.t() @ flat if ctx.needs_input_grad[1] else None  # (r, in): already the fast orientation
        grad_x = (grad_h @ A).view(ctx.shape) if ctx.needs_input_grad[0] else None
        return grad_x, grad_A, grad_B, None


class LoRALinear(nn.Module):
    """A frozen base layer and its low-rank update. `lora_A`/`lora_B` are the only parameters that train."""

    def __init__(self, base: nn.Module, r: int, scaling: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.scaling = scaling
        device = next(base.buffers(), None)
        device = device.device if device is not None else base.weight.device
        dtype = base.weight.dtype if isinstance(base, nn.Linear) else torch.float32
        # A as PEFT initialises it (Kaiming-uniform, a=sqrt(5)); B zero, so the update starts at zero
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False  # `lora_disabled`: the base alone, as the reference of an alignment run
        for p in base.parameters():
            p.requires_grad_(False)

    @property
    def r(self) -> int:
        return self.lora_A.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.disabled:
            return self.base(x)
        h = self.dropout(x)
        if torch.is_grad_enabled() and h.dtype == self.lora_A.dtype and not torch.is_autocast_enabled(x.device.type):
            return self.base(x) + _LowRankUpdate.apply(h, self.lora_A, self.lora_B, self.scaling)
        update = F.linear(F.linear(h, self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base(x) + update * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """s * B A, the (out, in) change the adapter makes to the weight."""
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain linear layer with the update added into the (dequantized) base weight."""
        base = self.base
        weight = base.weight.detach() if isinstance(base, nn.Linear) else base.dequantized(torch.float32)
        bias = getattr(base, "bias", None)
        dtype = weight.dtype if isinstance(base, nn.Linear) else self.lora_A.dtype
        layer = nn.Linear(self.in_features, self.out_features, bias=bias is not None, device=weight.device,
                          dtype=dtype)  # fmt: skip
        with torch.no_grad():
            layer.weight.copy_((weight.float() + self.delta_weight()).to(dtype))
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer


def target_names(model: nn.Module) -> list[str]:
    """The distinct layer kinds inside the blocks an adapter can go on (`attn.qkv`, `mlp.down`, ...)."""
    return sorted({_kind(name) for _, _, name, _ in find_linears(model, lambda n, m: in_blocks(n))})


def _kind(name: str) -> str:
    return ".".join(name.split(".")[-2:])


def _patterns(model: nn.Module, targets: tuple[str, ...]) -> list[str]:
    """Group names expanded; every other target must match at least one layer kind or full name."""
    kinds = target_names(model)
    names = [name for _, _, name, _ in find_linears(model)]
    patterns: list[str] = []
    for target in targets:
        if target in TARGET_GROUPS:
            patterns.extend(TARGET_GROUPS[target])
        elif any(fnmatch.fnmatch(k, target) for k in kinds) or any(fnmatch.fnmatch(n, target) for n in names):
            patterns.append(target)
        else:
            raise LlmlabError(
                f"--lora-targets {target!r} matches no linear layer of this model",
                f"use a group ({', '.join(TARGET_GROUPS)}) or layer names: {', '.join(kinds)}",
            )
    return patterns


def add_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Freeze every parameter of `model`, then wrap the targeted linear layers with adapters (in place).
    Targets inside the blocks match by layer kind (`attn.qkv`); a full name (`lm_head`) reaches outside."""
    spec.validate()
    patterns = _patterns(model, spec.targets)

    def select(name: str, layer: nn.Module) -> bool:
        inside = in_blocks(name) and any(fnmatch.fnmatch(_kind(name), p) for p in patterns)
        return inside or any(p != "*" and fnmatch.fnmatch(name, p) for p in patterns)

    for p in model.parameters():
        p.requires_grad_(False)
    names = replace_linears(model, select, lambda name, layer: LoRALinear(layer, spec.r, spec.scaling, spec.dropout))
    if not names:
        raise LlmlabError(f"--lora-targets {','.join(spec.targets)} selected no layer", "use --lora-targets all-linear")
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Our module name -> adapter layer, in module order (a shared layer once)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`<layer>.lora_A` / `<layer>.lora_B` tensors: what an adapter folder stores."""
    return {f"{name}.{part}": getattr(m, part).detach() for name, m in lora_layers(model).items()
            for part in ("lora_A", "lora_B")}  # fmt: skip


def load_lora_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Put saved adapter tensors into a model that has the same adapters; a mismatch is one error."""
    expected = lora_state(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise LlmlabError(
            f"the adapter's layers do not fit this model (missing {missing[:2]}, unexpected {unexpected[:2]})",
            "load it on the base model and with the --lora-targets it was trained with",
        )
    layers = lora_layers(model)
    for name, layer in layers.items():  # only the rank may differ (an imported PEFT adapter's fused parts)
        a, b = tensors[f"{name}.lora_A"], tensors[f"{name}.lora_B"]
        if a.shape[1] != layer.in_features or b.shape[0] != layer.out_features or a.shape[0] != b.shape[1]:
            raise LlmlabError(
                f"the adapter's {name} is {tuple(b.shape)} x {tuple(a.shape)}, not for a {layer.out_features} x "
                f"{layer.in_features} layer",
                "put the adapter on the base it was trained for",
            )
    with torch.no_grad():
        for key, tensor in tensors.items():
            name, part = key.rsplit(".", 1)
            param = getattr(layers[name], part)
            if param.shape != tensor.shape:  # an imported PEFT adapter may have another rank
                setattr(layers[name], part, nn.Parameter(tensor.to(param), requires_grad=param.requires_grad))
            else:
                param.copy_(tensor)


def merge_lora(model: nn.Module) -> list[str]:
    """Replace every adapter layer by one plain linear with the update added in; returns their names."""
    merged = []
    for name, module in list(model.named_modules(remove_duplicate=False)):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
                merged.append(f"{name}.{child_name}" if name else child_name)
    return merged


@contextlib.contextmanager
def lora_disabled(model: nn.Module) -> Iterator[None]:
    """Within: the model without its adapters (the frozen base), so an alignment run's reference costs no
    second copy of the weights."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.disabled = True
    try:
        yield
    finally:
        for layer in layers:
            layer.disabled = False


def trainable_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, tied ones counted once; a quantized base counts its weights."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    total += sum(m.in_features * m.out_features for m in model.modules()
                 if not isinstance(m, (nn.Linear, LoRALinear)) and hasattr(m, "dequantized"))  # fmt: skip
    return trainable, total


class MultiLoRALinear(nn.Module):
    """A frozen layer with several adapters at once, one chosen per row of the batch (`rows`: an adapter's
    index, or -1 for the base alone): how a server decodes requests for different adapters in one step
    (as vLLM's multi-LoRA) instead of holding a merged copy of the model per adapter. Ranks are padded to
    the largest with zeros, which adds nothing to B A."""

    def __init__(self, base: nn.Module, adapters: list[tuple[torch.Tensor, torch.Tensor, float] | None]) -> None:
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        rank = max((a.shape[0] for a, _, _ in filter(None, adapters)), default=1)
        dtype, device = base.weight.dtype, base.weight.device
        A = torch.zeros(len(adapters), rank, self.in_features, dtype=dtype, device=device)
        B = torch.zeros(len(adapters), self.out_features, rank, dtype=dtype, device=device)
        scale = torch.zeros(len(adapters) + 1, dtype=dtype, device=device)  # the last: the base alone
        for i, adapter in enumerate(adapters):
            if adapter is not None:
                a, b, s = adapter
                A[i, : a.shape[0]], B[i, :, : b.shape[1]], scale[i] = a, b, s
        self.register_buffer("lora_A", A)
        self.register_buffer("lora_B", B)
        self.register_buffer("scales", scale)
        self.rows: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.rows is None:
            return y
        pick = self.rows.clamp(min=0)
        update = torch.einsum("bti,bri->btr", x, self.lora_A[pick].to(x.dtype))
        update = torch.einsum("btr,bor->bto", update, self.lora_B[pick].to(x.dtype))
        scale = self.scales[torch.where(self.rows >= 0, self.rows, len(self.scales) - 1)].to(x.dtype)
        return y + update * scale[:, None, None]


def add_multi_lora(model: nn.Module, adapters: list[dict[str, torch.Tensor]], scalings: list[float]) -> list[str]:
    """Every layer any adapter touches gets a `MultiLoRALinear` holding them all (zeros where an adapter
    leaves the layer alone); each adapter's tensors are `<layer>.lora_A` / `<layer>.lora_B` as saved."""
    targets = sorted({key.rsplit(".", 1)[0] for tensors in adapters for key in tensors})

    def build(name: str, layer: nn.Module) -> MultiLoRALinear:
        parts = [(t[f"{name}.lora_A"], t[f"{name}.lora_B"], s) if f"{name}.lora_A" in t else None
                 for t, s in zip(adapters, scalings)]  # fmt: skip
        return MultiLoRALinear(layer, parts)

    names = replace_linears(model, lambda name, layer: name in targets, build)
    if sorted(names) != targets:
        missing = sorted(set(targets) - set(names))
        raise LlmlabError(f"the adapters name layers this model does not have: {', '.join(missing[:3])}",
                          "serve adapters trained on this base")  # fmt: skip
    return names


def select_adapters(model: nn.Module, rows: torch.Tensor | None) -> None:
    """The adapter of each row of the next forward passes (-1: the base), or None: the base for all."""
    for module in model.modules():
        if isinstance(module, MultiLoRALinear):
            module.rows = rows
