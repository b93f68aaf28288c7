"""Parameters by component, from the config alone: what a model costs before it is built."""

from __future__ import annotations

from llmlab.config import ModelConfig
from llmlab.family import family_spec


def parameter_breakdown(config: ModelConfig) -> dict[str, int]:
    """Parameters of embeddings (tokens and positions), attention (self and cross), feed-forward,
    norms and output head (a tied head counts 0; BERT's masked-LM head counts its transform)."""
    d, bias = config.n_embd, 1 if config.bias else 0
    hd = config.head_dim
    q_out, kv_out = config.n_head * hd, config.n_kv_head * hd
    self_attention = d * (q_out + 2 * kv_out) + bias * (q_out + 2 * kv_out) + q_out * d + bias * d
    cross_attention = self_attention
    width = config.intermediate_size * (2 if config.gated_mlp else 1)
    feed_forward = d * width + bias * width + config.intermediate_size * d + bias * d
    norm = d * (2 if config.norm == "layernorm" and config.bias else 1)

    spec = family_spec(config)
    stacks = [(config.n_layer, False)]  # (blocks, with cross-attention)
    if spec.seq2seq:
        stacks.append((config.n_decoder_layer, True))
    positions = {
        "learned": config.block_size * d,
        "relative": config.relative_buckets * config.n_head,
    }.get(config.positions, 0)
    head = 0 if config.tie_embeddings else config.vocab_size * d
    if spec.masked_lm:  # dense + norm + output bias; the output matrix is the embedding
        head = d * d + bias * d + norm + config.vocab_size if config.mlm_head else 0
    final_norm = 1 if config.norm_position == "pre" else 0
    embed_norm = 1 if config.embed_norm else 0
    return {
        "embeddings": config.vocab_size * d + positions * len(stacks) + config.type_vocab_size * d,
        "attention": sum(n * (self_attention + (cross_attention if cross else 0)) for n, cross in stacks),
        "feed_forward": sum(n * feed_forward for n, _ in stacks),
        "norms": sum((n * (3 if cross else 2) + final_norm + embed_norm) * norm for n, cross in stacks),
        "head": head,
    }
