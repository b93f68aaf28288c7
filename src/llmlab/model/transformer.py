"""The three families, each an embedding, one or two Stacks of the same blocks, and a head:

DecoderLM          GPT/Llama: causal stack, next-token head (causal LM)
EncoderLM          BERT: bidirectional stack, masked-LM head tied to the embedding
EncoderDecoderLM   T5/original Transformer: bidirectional encoder, causal decoder with
                   cross-attention, one shared embedding, next-token head
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model.cache import KVCache, SlotCache
from llmlab.model.heads import build_task_head
from llmlab.model.layers import Stack, init_weights, make_norm
from llmlab.model.soft_prompt import after_prompt, prepend, prompt_length


def _default_positions(T: int, cache: KVCache | None, device: torch.device) -> torch.Tensor:
    start = cache.length if cache is not None else 0
    return torch.arange(start, start + T, device=device)


def _key_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) with True for real tokens -> (B, 1, 1, S) boolean mask for attention, None if all real."""
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


class LanguageModel(nn.Module):
    """What every family shares: the token embedding, parameter count, device and dtype."""

    config: ModelConfig

    def _init(self, config: ModelConfig, n_layer: int) -> None:
        init_weights(self, n_layer)
        if config.positions == "sinusoidal":  # the paper's scale: embeddings * sqrt(d) ~ unit size
            nn.init.normal_(self.embed.weight, std=config.n_embd**-0.5)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once

    @property
    def a_norm(self) -> nn.Module:
        """Any norm of the model: every family has them, in every format (quantization keeps them)."""
        return next(m for m in self.modules() if isinstance(m, (nn.LayerNorm, nn.RMSNorm)))

    @property
    def device(self) -> torch.device:
        return self.a_norm.weight.device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype activations run in: the norms' (quantized models keep their norms in 16-bit)."""
        return self.a_norm.weight.dtype


class DecoderLM(LanguageModel):
    """Token embedding -> causal stack -> vocabulary logits."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.decoder = Stack(config, config.n_layer, causal=True)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.task_head = build_task_head(config)
        self._init(config, config.n_layer)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def task_logits(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The sequence head's logits (B, labels) at each row's last real token (rows right-padded)."""
        if self.task_head is None:
            raise LlmlabError("this decoder has no task head", "fine-tune it with --task classify first")
        last = (attention_mask.sum(dim=1) - 1 if attention_mask is not None
                else torch.full((idx.shape[0],), idx.shape[1] - 1, device=idx.device))  # fmt: skip
        return self.task_head(self.hidden_states(idx), last)

    def hidden_states(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = self.embed(idx)
        if prompt_length(self):  # prompt tuning's vectors (model/soft_prompt.py)
            return self._after_soft_prompt(x, positions, cache, mask)
        if positions is None:
            positions = _default_positions(idx.shape[1], cache, idx.device)
        return self.decoder(x, positions, cache, mask)

    def _after_soft_prompt(self, x, positions, cache, mask) -> torch.Tensor:
        """The stack with the soft prompt read first (on the first call; a cache keeps it after), the
        prompt's outputs left out."""
        P = self.soft_prompt.shape[0]
        if cache is None or cache.length == 0:
            x, positions, mask = prepend(self.soft_prompt, x, positions, mask)
            return self.decoder(x, positions, cache, mask)[:, P:]
        positions, mask = after_prompt(P, positions, mask)
        if positions is None:
            positions = _default_positions(x.shape[1], cache, x.device)
        return self.decoder(x, positions, cache, mask)

    def forward(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        last_only: bool = False,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """idx: (B, T) token ids. positions: (T,) or (B, T); default 0..T-1 after the cache.

        mask: optional boolean (B, 1, T, S) attention mask (True = may attend); None means causal.
        Returns logits (B, T, vocab), or (B, 1, vocab) with last_only, or with a boolean (B, T) `select`
        only those positions' logits (N, vocab): the head's cost where a loss scores few positions.
        """
        x = self.hidden_states(idx, positions, cache, mask)
        if last_only:
            x = x[:, -1:]
        if select is not None:
            x = x[select]
        return self.lm_head(x)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        c, slots = self.config, max_len + prompt_length(self)
        return KVCache(c.n_layer, batch, c.n_kv_head, slots, c.head_dim, dtype or self.compute_dtype, self.device)


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + norm, then scores against the (tied) token embedding."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.norm = make_norm(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.dense(x)))
        return F.linear(h, embedding, self.bias)


class EncoderLM(LanguageModel):
    """Token embedding -> bidirectional stack -> masked-LM head (BERT-like)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.type_embed = nn.Embedding(config.type_vocab_size, config.n_embd) if config.type_vocab_size else None
        self.encoder = Stack(config, config.n_layer, causal=False)
        self.mlm_head = MaskedLMHead(config) if config.mlm_head else None
        self.task_head = build_task_head(config)
        self._init(config, config.n_layer)

    def task_logits(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, token_types: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The task head's logits: (B, labels) for a sequence task, (B, T, labels) for tagging."""
        if self.task_head is None:
            raise LlmlabError("this encoder has no task head", "fine-tune it with --task classify or --task tag first")
        return self.task_head(self.hidden_states(idx, attention_mask, token_types))

    def hidden_states(
        self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None, token_types: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) ids, optional (B, T) real-token mask and segment ids -> (B, T, C) contextual vectors."""
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.embed(idx)
        if self.type_embed is not None:  # one segment unless told otherwise: type 0 everywhere
            x = x + (self.type_embed(token_types) if token_types is not None else self.type_embed.weight[0])
        return self.encoder(x, positions, mask=_key_mask(attention_mask))

    def forward(
        self,
        idx: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab); with a boolean (B, T) `select`, only those positions' logits (N, vocab),
        which is what masked-LM training needs (15% of positions) at a fraction of the head's cost."""
        if self.mlm_head is None:
            raise LlmlabError(
                "this encoder has no masked-LM head (it was imported from a bare encoder)",
                "use it for embeddings (llmlab embed), or import a checkpoint with its masked-LM head",
            )
        h = self.hidden_states(idx, attention_mask)
        return self.mlm_head(h if select is None else h[select], self.embed.weight)


class EncoderDecoderLM(LanguageModel):
    """Shared embedding -> bidirectional encoder; decoder with causal self-attention and cross-attention
    to the encoder output -> vocabulary logits (T5-like; a tied head is scaled by 1/sqrt(d) as in T5)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.n_embd)
        self.encoder = Stack(config, config.n_layer, causal=False)
        self.decoder = Stack(config, config.n_decoder_layer, causal=True, cross=True)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self._init(config, config.n_layer + config.n_decoder_layer)
        scaled = config.tie_embeddings if config.scale_decoder_outputs is None else config.scale_decoder_outputs
        self.head_scale = config.n_embd**-0.5 if scaled else 1.0
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) ids, optional (B, S) real-token mask -> (B, S, C) encoder output."""
        x = self.embed(src)
        if prompt_length(self):  # prompt tuning: the encoder reads the soft prompt first
            x = prepend(self.soft_prompt, x, None, None)[0]
            if src_mask is not None:
                src_mask = torch.cat([src_mask.new_ones(src.shape[0], self.soft_prompt.shape[0]), src_mask], dim=1)
        positions = torch.arange(x.shape[1], device=src.device)
        return self.encoder(x, positions, mask=_key_mask(src_mask))

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """Decoder logits (B, T, vocab) for target ids `tgt` given the encoder output."""
        positions = _default_positions(tgt.shape[1], cache, tgt.device)
        if src_mask is not None and src_mask.shape[1] < memory.shape[1]:  # the soft prompt's outputs: visible
            src_mask = torch.cat(
                [src_mask.new_ones(src_mask.shape[0], memory.shape[1] - src_mask.shape[1]), src_mask], 1
            )
        x = self.decoder(self.embed(tgt), positions, cache, None, memory, _key_mask(src_mask))
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x * self.head_scale)

    def decode_slots(self, tgt: torch.Tensor, positions: torch.Tensor, cache: SlotCache, mask: torch.Tensor,
                     last_only: bool = False) -> torch.Tensor:  # fmt: skip
        """A continuous-batching step: each row's token at its own position and self-attention mask, its
        cross-attention reading its own sequence's encoder keys/values, stored in the cache at its prefill."""
        x = self.decoder(self.embed(tgt), positions, cache, mask, None, cache.cross.mask(tgt.shape[0]))
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x * self.head_scale)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher forcing: logits (B, T, vocab) for decoder inputs `tgt` (start token + shifted targets)."""
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        c = self.config
        return KVCache(
            c.n_decoder_layer, batch, c.n_kv_head, max_len, c.head_dim, dtype or self.compute_dtype, self.device
        )


MODEL_CLASSES: dict[str, type[LanguageModel]] = {
    "decoder": DecoderLM,
    "encoder": EncoderLM,
    "encoder-decoder": EncoderDecoderLM,
}


def build_model(config: ModelConfig) -> LanguageModel:
    """The model class of the config's family, freshly initialised."""
    return MODEL_CLASSES[config.family](config)
