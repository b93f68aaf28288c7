"""The FLOPs one training step really costs, term by term: what `C = 6 N D` approximates.

A matmul of an (m x k) input by a (k x n) weight costs 2mkn FLOPs forward and twice that backward (the
input's and the weight's gradients): 6 per weight per token that passes through it. Attention adds
its two batched matmuls (scores, weighted sum), 4 x queries x keys x width forward, 12 with backward
(PaLM's `6N + 12 L H Q T` per token, the model-FLOPs convention of MFU). Embedding lookups, norms,
activations and the softmax are not counted (nor are they by `C = 6ND`): they are a small fraction.

So `6ND` is exact for a decoder's matmul weights, and counts the token embedding once as the (tied)
head; an encoder-decoder's tokens pass through one stack each, hence T5's "~3 N per token".
"""

from __future__ import annotations

from llmlab.config import ModelConfig
from llmlab.family import family_spec
from llmlab.plan.memory import masked_positions


def matmul_weights(config: ModelConfig) -> dict[str, int]:
    """Weights a token multiplies by, per kind of layer: a block's self-attention and feed-forward,
    a decoder block's cross-attention query side (per target token) and key/value side (per source
    token), the output head (V x h, tied or not), BERT's head transform."""
    d, hd = config.n_embd, config.head_dim
    q_out, kv_out = config.n_head * hd, config.n_kv_head * hd
    width = config.intermediate_size * (2 if config.gated_mlp else 1)
    return {
        "block": d * (q_out + 2 * kv_out) + q_out * d + d * width + config.intermediate_size * d,
        "cross_query": d * q_out + q_out * d,
        "cross_key_value": d * 2 * kv_out,
        "head": config.vocab_size * d,
        "head_transform": d * d,
    }


def step_flops(config: ModelConfig, batch: int, seq_len: int, target_len: int | None = None) -> dict[str, float]:
    """Forward + backward FLOPs of one batch, as matmul terms (6 x weights x tokens) and attention terms
    (12 x queries x keys x attention width, the full score matrix: model FLOPs count it whole even when
    causal). Encoder-decoders: `seq_len` input and `target_len` target positions; masked LMs run their
    head at the masked 15% only."""
    w, b, width = matmul_weights(config), batch, config.n_head * config.head_dim
    L, spec = config.n_layer, family_spec(config)
    if spec.causal:
        matmuls = 6 * b * seq_len * (L * w["block"] + w["head"])
        attention = 12 * b * L * seq_len * seq_len * width
    elif spec.masked_lm:
        masked = b * masked_positions(seq_len)
        matmuls = 6 * b * seq_len * L * w["block"] + 6 * masked * (w["head"] + w["head_transform"])
        attention = 12 * b * L * seq_len * seq_len * width
    else:
        S, T, Ld = seq_len, target_len or seq_len, config.n_decoder_layer
        encoder = S * L * w["block"]
        decoder = T * (Ld * (w["block"] + w["cross_query"]) + w["head"]) + S * Ld * w["cross_key_value"]
        matmuls = 6 * b * (encoder + decoder)
        attention = 12 * b * width * (L * S * S + Ld * T * T + Ld * T * S)
    return {"matmuls": float(matmuls), "attention": float(attention)}


def flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """A decoder's training FLOPs per token at a context of `seq_len`: 6 x matmul weights + 12 L s h."""
    flops = step_flops(config, 1, seq_len)
    return (flops["matmuls"] + flops["attention"]) / seq_len
