"""The decoder-only language model (GPT-2 or Llama style, chosen by ModelConfig)."""

from __future__ import annotations

import torch
from torch import nn

from llmlab.config import ModelConfig
from llmlab.model.cache import KVCache
from llmlab.model.layers import Block, RotaryEmbedding, init_weights, make_norm


class DecoderLM(nn.Module):
    """Token embedding -> N pre-norm blocks with causal self-attention -> norm -> vocabulary logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos_embed = nn.Embedding(config.block_size, config.n_embd) if config.positions == "learned" else None
        self.rope = (
            RotaryEmbedding(config.head_dim, config.block_size, config.rope_theta)
            if config.positions == "rope"
            else None
        )
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = make_norm(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        init_weights(self, config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    def forward(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """idx: (B, T) token ids. positions: (T,) or (B, T); default 0..T-1 after the cache.

        mask: optional boolean (B, 1, T, S) attention mask (True = may attend); None means causal.
        Returns logits (B, T, vocab), or (B, 1, vocab) with last_only.
        """
        T = idx.shape[1]
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.embed(idx)
        if self.pos_embed is not None:
            x = x + self.pos_embed(positions)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, positions, self.rope, cache, mask)
        if cache is not None:
            cache.advance(T)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x))

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype activations run in: the final norm's (quantized models keep their norms in 16-bit)."""
        return self.norm.weight.dtype

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch, c.n_kv_head, max_len, c.head_dim, dtype or self.compute_dtype, self.device)
