"""The building blocks every family is made of: norms, positions, attention, feed-forward, blocks
and the stack of blocks. A family (model/transformer.py) is an embedding, one or two stacks and a head."""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from llmlab.config import ModelConfig
from llmlab.model.cache import KVCache


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


# -- positions ---------------------------------------------------------------------------------------


def rope_frequencies(head_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Rotation frequencies theta^(-2i/d), optionally rescaled for longer contexts: `linear` divides them
    all by the factor; `llama3` (Llama 3.1) divides only the low ones (wavelengths beyond the original
    context / low_freq_factor), keeps the high ones, and blends smoothly in between."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
        context = scaling["original_max_position_embeddings"]
        wavelength = 2 * math.pi / inv_freq
        scaled = torch.where(wavelength > context / low, inv_freq / factor, inv_freq)
        smooth = (context / wavelength - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelength >= context / high) & (wavelength <= context / low)
        return torch.where(medium, blended, scaled)
    return inv_freq


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (RoFormer), rotating halves of each head as in Llama."""

    def __init__(self, head_dim: int, max_positions: int, theta: float, scaling: dict | None = None) -> None:
        super().__init__()
        inv_freq = rope_frequencies(head_dim, theta, scaling)
        angles = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, T, H, D), heads before their dimensions as the projection writes them; positions: (B, T)
        or (T,). The rotated copy keeps that layout, so its (B, H, T, D) view for attention is free and the
        attention output comes back in it too: no copy before the output projection."""
        cos = self.cos[positions].to(x.dtype).unsqueeze(-2)  # (..., T, 1, D/2): the same for every head
        sin = self.sin[positions].to(x.dtype).unsqueeze(-2)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def sinusoidal_table(max_positions: int, width: int) -> torch.Tensor:
    """The original Transformer's fixed positions: sin on even, cos on odd dims, wavelengths up to 10000*2pi."""
    position = torch.arange(max_positions, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, width, 2, dtype=torch.float32) * (-math.log(10000.0) / width))
    table = torch.zeros(max_positions, width)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)
    return table


def relative_position_bucket(
    relative: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's buckets for key position minus query position: exact for small distances, logarithmic up
    to max_distance, one shared bucket beyond. Bidirectional buckets split the range by direction."""
    bucket = torch.zeros_like(relative)
    if bidirectional:
        num_buckets //= 2
        bucket = bucket + (relative > 0).long() * num_buckets
        distance = relative.abs()
    else:
        distance = (-relative).clamp(min=0)  # a causal query only looks back
    exact = num_buckets // 2
    logarithmic = (
        exact
        + (
            torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (num_buckets - exact)
        ).long()
    )
    logarithmic = logarithmic.clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, logarithmic)


class RelativePositionBias(nn.Module):
    """A learned bias per head and distance bucket, added to the attention scores of every layer."""

    def __init__(self, config: ModelConfig, bidirectional: bool) -> None:
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets, self.max_distance = config.relative_buckets, config.relative_max_distance
        self.bias = nn.Embedding(config.relative_buckets, config.n_head)

    def forward(self, query_slots: torch.Tensor, key_slots: torch.Tensor) -> torch.Tensor:
        """(T,) or per row (B, T) query positions and (S,) key positions -> (1 or B, H, T, S) additive scores."""
        relative = key_slots - query_slots[..., None]
        buckets = relative_position_bucket(relative, self.bidirectional, self.num_buckets, self.max_distance)
        scores = self.bias(buckets)  # (..., T, S, H)
        return scores.permute(2, 0, 1).unsqueeze(0) if scores.dim() == 3 else scores.permute(0, 3, 1, 2)


# -- attention ---------------------------------------------------------------------------------------


def attention_kernel(q: torch.Tensor) -> contextlib.AbstractContextManager:
    """On CPU, PyTorch's flash kernel trains short sequences slower than the plain (math) kernel:
    forward + backward at (batch 32, 4 heads, 128 positions, 64 dims) in bf16 took 39 ms vs 22 ms
    here, and the two were even at 256 positions. Elsewhere SDPA's own choice stands."""
    if q.device.type == "cpu" and q.requires_grad and q.shape[-2] <= 128:
        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    causal: bool,
    dropout: float,
    scale: float,
    record: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """softmax(scale * q k^T + mask) v for (B, H, T, D) queries and (B, H_kv, S, D) keys/values
    (scale is 1/sqrt(D) but for T5, which folds it into its initialisation).

    mask: None, boolean (True = may attend) or additive float, broadcastable to (B, H, T, S).
    With `record` set, the weights are computed explicitly and appended to it (for inspection);
    otherwise the fused kernel runs and no weights exist.
    """
    if record is None and torch.compiler.is_compiling() and _one_query(q, k, mask, causal, dropout):
        return attend_one_query(q, k, v, mask, scale)
    if record is None:
        with attention_kernel(q):
            return F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=dropout,
                is_causal=causal,
                scale=scale,
                enable_gqa=k.shape[1] != q.shape[1],
            )
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)).float() * scale
    if causal:
        T, S = scores.shape[-2:]
        scores = scores.masked_fill(~torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = scores.softmax(dim=-1)
    record.append(weights.detach())
    return weights.to(v.dtype) @ v


def _one_query(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, causal: bool, dropout: float) -> bool:
    """A decoding step's attention: one query per row, no gradient, a key mask shared by the heads, if any."""
    one_mask = mask is None or (mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1:3] == (1, 1))
    return q.shape[2] == 1 and not q.requires_grad and dropout == 0.0 and one_mask and (not causal or k.shape[2] == 1)


def attend_one_query(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention for one query per row (a decoding step) inside a compiled step, written as sums of products,
    which the compiler fuses into two loops. The fused CPU kernel is built for many queries: compiled in, it
    took ~150 us per layer for one query over 256 cached keys here. (Eagerly, that kernel is the faster of
    the two at the lengths a generation reads.) Grouped-query heads are reshaped onto their shared key/value
    head instead of copying the keys; scores and softmax in fp32, as the fused kernel."""
    B, H, _, D = q.shape
    kv_heads = k.shape[1]
    grouped = q.reshape(B, kv_heads, H // kv_heads, D).float()
    scores = (grouped[:, :, :, None, :] * k.float()[:, :, None, :, :]).sum(-1) * scale  # (B, H_kv, G, S)
    if mask is not None:
        scores = scores.masked_fill(~mask.reshape(mask.shape[0], 1, 1, mask.shape[-1]), float("-inf"))
    weights = scores.softmax(dim=-1)
    return (weights[..., None] * v.float()[:, :, None, :, :]).sum(-2).to(v.dtype).reshape(B, H, 1, D)


class SelfAttention(nn.Module):
    """Multi-head (or grouped-query) self-attention, causal or bidirectional."""

    def __init__(self, config: ModelConfig, layer_index: int, causal: bool) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.layer_index, self.causal = layer_index, causal
        qkv_dim = (config.n_head + 2 * config.n_kv_head) * config.head_dim
        self.qkv = nn.Linear(config.n_embd, qkv_dim, bias=config.bias)
        self.proj = nn.Linear(config.attention_width, config.n_embd, bias=config.bias)
        self.dropout, self.scale = config.dropout, config.softmax_scale
        self.record: list[torch.Tensor] | None = None  # set by llmlab.introspect.attention to keep the weights

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding | None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim], dim=-1
        )
        q = q.view(B, T, self.n_head, self.head_dim)
        k = k.view(B, T, self.n_kv_head, self.head_dim)
        v = v.view(B, T, self.n_kv_head, self.head_dim)
        if rope is not None:
            q, k = rope(q, positions), rope(k, positions)
            if torch.is_grad_enabled():  # v alone would keep the whole fused q|k|v output alive for the backward
                v = v.contiguous()
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.update(self.layer_index, k, v)
        # With a cache and no mask, a single new query may see every cached key: no causal mask needed.
        causal = self.causal and mask is None and (cache is None or T > 1)
        dropout = self.dropout if self.training else 0.0
        y = attend(q, k, v, mask, causal, dropout, self.scale, self.record)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class CrossAttention(nn.Module):
    """Decoder queries attending to the encoder's output; its keys/values are computed once per input."""

    def __init__(self, config: ModelConfig, layer_index: int) -> None:
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        self.layer_index = layer_index
        self.q = nn.Linear(config.n_embd, config.n_head * config.head_dim, bias=config.bias)
        self.kv = nn.Linear(config.n_embd, 2 * config.n_kv_head * config.head_dim, bias=config.bias)
        self.proj = nn.Linear(config.attention_width, config.n_embd, bias=config.bias)
        self.dropout, self.scale = config.dropout, config.softmax_scale
        self.record: list[torch.Tensor] | None = None

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor,
        memory_mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if cache is not None and self.layer_index in cache.cross:
            k, v = cache.cross[self.layer_index]
        else:
            S = memory.shape[1]
            k, v = self.kv(memory).view(B, S, 2, self.n_kv_head, self.head_dim).permute(2, 0, 3, 1, 4)
            if cache is not None:
                cache.cross[self.layer_index] = (k, v)
        y = attend(q, k, v, memory_mask, False, self.dropout if self.training else 0.0, self.scale, self.record)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


# -- feed-forward and blocks -------------------------------------------------------------------------


class FeedForward(nn.Module):
    """GELU (GPT-2, BERT) or ReLU (original Transformer, T5 v1.0) MLP, or a gated one: SwiGLU (Llama),
    GEGLU (T5 v1.1). Gated variants compute gate and up projections as one matrix."""

    ACTIVATIONS = {
        "gelu": lambda x: F.gelu(x, approximate="tanh"),
        "gelu-erf": F.gelu,
        "relu": F.relu,
        "swiglu": F.silu,
        "geglu": lambda x: F.gelu(x, approximate="tanh"),
    }

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gated = config.gated_mlp
        self.act = self.ACTIVATIONS[config.mlp]
        width = config.intermediate_size * (2 if self.gated else 1)
        self.up = nn.Linear(config.n_embd, width, bias=config.bias)
        self.down = nn.Linear(config.intermediate_size, config.n_embd, bias=config.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            return self.down(self.act(gate) * up)
        return self.down(self.act(h))


class Block(nn.Module):
    """Transformer block. Pre-norm: x + attn(norm(x)), [x + cross(norm(x), memory)], x + mlp(norm(x)).
    Post-norm (BERT, the original Transformer): norm(x + attn(x)), [norm(x + cross(x))], norm(x + mlp(x))."""

    def __init__(self, config: ModelConfig, layer_index: int, causal: bool, cross: bool) -> None:
        super().__init__()
        self.post_norm = config.norm_position == "post"
        self.norm1 = make_norm(config)
        self.attn = SelfAttention(config, layer_index, causal)
        self.norm_cross = make_norm(config) if cross else None
        self.cross = CrossAttention(config, layer_index) if cross else None
        self.norm2 = make_norm(config)
        self.mlp = FeedForward(config)
        self.drop = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        rope: RotaryEmbedding | None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.drop(self.attn(x, positions, rope, cache, mask)))
            if self.cross is not None:
                x = self.norm_cross(x + self.drop(self.cross(x, memory, memory_mask, cache)))
            return self.norm2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(self.norm1(x), positions, rope, cache, mask))
        if self.cross is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), memory, memory_mask, cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class Stack(nn.Module):
    """Positions + N blocks + final norm: an encoder (bidirectional), a decoder (causal), or a decoder
    with cross-attention to an encoder's output. Takes embeddings, returns normalised hidden states."""

    def __init__(self, config: ModelConfig, n_layer: int, causal: bool, cross: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.positions = config.positions
        self.scale = math.sqrt(config.n_embd) if config.positions == "sinusoidal" else 1.0
        self.pos_embed = nn.Embedding(config.block_size, config.n_embd) if config.positions == "learned" else None
        if config.positions == "sinusoidal":
            self.register_buffer("sinusoids", sinusoidal_table(config.block_size, config.n_embd), persistent=False)
        self.rope = (
            RotaryEmbedding(config.head_dim, config.block_size, config.rope_theta, config.rope_scaling)
            if config.positions == "rope"
            else None
        )
        self.rel_bias = (
            RelativePositionBias(config, bidirectional=not causal) if config.positions == "relative" else None
        )
        self.embed_norm = make_norm(config) if config.embed_norm else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i, causal, cross) for i in range(n_layer))
        self.norm = make_norm(config) if config.norm_position == "pre" else nn.Identity()  # post-norm ends normed

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, T, C) token embeddings; positions: (T,) or (B, T).

        mask: boolean (B, 1, T, S), True = may attend; None means causal (decoder) or full (encoder).
        """
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        elif self.positions == "sinusoidal":
            x = x * self.scale + self.sinusoids[positions].to(x.dtype)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        if self.rel_bias is not None:
            mask = self._with_relative_bias(x.shape[1], positions, cache, mask)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, positions, self.rope, cache, mask, memory, memory_mask)
        if cache is not None:
            cache.advance(x.shape[1])
        return self.norm(x)

    def _with_relative_bias(
        self, T: int, positions: torch.Tensor, cache: KVCache | None, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """One additive mask: the bucketed bias by cache slot (distances within a left-padded row equal
        slot distances; the cache says where its queries are), with -inf where the boolean or causal mask
        forbids attending."""
        if cache is not None:
            query_slots, key_slots = cache.relative_slots(T, positions)
        else:
            query_slots = key_slots = torch.arange(T, device=positions.device)
        bias = self.rel_bias(query_slots, key_slots)
        if mask is None and self.causal:
            mask = query_slots[..., None] >= key_slots
            mask = mask[:, None] if mask.dim() == 3 else mask  # per-row queries: (B, 1, T, S)
        return bias if mask is None else torch.where(mask, bias, float("-inf"))


def init_weights(module: nn.Module, n_layer: int) -> None:
    """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer)."""
    for name, p in module.named_parameters():
        if p.dim() < 2:
            continue
        std = 0.02 / math.sqrt(2 * n_layer) if name.endswith(("proj.weight", "down.weight")) else 0.02
        nn.init.normal_(p, mean=0.0, std=std)
    for m in module.modules():
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
