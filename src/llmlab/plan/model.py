"""Parameters by component, from the config alone: what a model costs before it is built."""

from __future__ import annotations

from llmlab.config import ModelConfig


def parameter_breakdown(config: ModelConfig) -> dict[str, int]:
    """Parameters of embeddings, attention, feed-forward, norms and output head (tied head = 0)."""
    d, L = config.n_embd, config.n_layer
    bias = 1 if config.bias else 0
    qkv_out = (config.n_head + 2 * config.n_kv_head) * config.head_dim
    width = config.intermediate_size * (2 if config.mlp == "swiglu" else 1)
    norm = d * (2 if config.norm == "layernorm" and config.bias else 1)
    return {
        "embeddings": config.vocab_size * d + (config.block_size * d if config.positions == "learned" else 0),
        "attention": L * (d * qkv_out + bias * qkv_out + d * d + bias * d),
        "feed_forward": L * (d * width + bias * width + config.intermediate_size * d + bias * d),
        "norms": (2 * L + 1) * norm,
        "head": 0 if config.tie_embeddings else config.vocab_size * d,
    }
