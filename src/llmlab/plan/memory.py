"""Memory before you rent: weights, gradients, optimizer states, activations and KV cache, per GPU.

Conventions, each from its source:
- Training bytes per parameter: weights + gradients in the training dtype, optimizer states in fp32
  (AdamW 8, SGD with momentum 4, 8-bit Adam 2); mixed precision keeps 16-bit weights and gradients
  plus an fp32 master copy (4) with the states: 2 + 2 + 12 = 16, the ZeRO paper's "16 psi".
- ZeRO (Rajbhandari et al.) shards across N GPUs: stage 1 the optimizer states, stage 2 also the
  gradients, stage 3 also the weights (FSDP's NO_SHARD / SHARD_GRAD_OP / FULL_SHARD are DDP / 2 / 3).
- Activations per transformer layer, 16-bit (Korthikanti et al.): s*b*h*(34 + 5*a*s/h) bytes without
  recomputation, s*b*h*34 with selective recomputation (attention scores recomputed, as
  FlashAttention does), 2*s*b*h with full recomputation (only each layer's input kept).
- Without a batch and sequence, the course's rule of thumb: 8 bytes per parameter for activations and
  temporary buffers in fp32 training (so 4 + 4 + 8 + 8 = 24 bytes, "6x" the weights).
- Data parallelism over several GPUs adds the all-reduce's flat gradient buffer: 4 bytes per parameter
  (the ZeRO paper's temporary buffer; PyTorch DDP's gradient buckets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.family import family_spec

DTYPE_BYTES = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5}
OPTIMIZER_STATE_BYTES = {"adamw": 8.0, "sgd": 4.0, "adam8bit": 2.0}
STRATEGIES = ("ddp", "zero1", "zero2", "zero3")
RECOMPUTE = ("none", "selective", "full")
COURSE_ACTIVATION_BYTES_PER_PARAM = 8.0


@dataclass
class MemoryPlan:
    """Bytes per GPU by component, and for inference."""

    training: dict[str, float] = field(default_factory=dict)
    inference: dict[str, float] = field(default_factory=dict)

    @property
    def model_states(self) -> float:
        """Weights + gradients + optimizer states: what ZeRO shards (activations are per GPU anyway)."""
        states = ("weights", "adapter weights (fp32)", "gradients", "optimizer states")
        return sum(self.training.get(k, 0.0) for k in states)

    @property
    def training_total(self) -> float:
        return sum(self.training.values())

    @property
    def inference_total(self) -> float:
        return sum(self.inference.values())


def token_bytes(config: ModelConfig) -> float:
    """16-bit bytes one transformer layer keeps per token and channel, attention weights aside
    (Korthikanti et al., 2022): 34 for a GPT block: 11 for attention, 19 for the GELU MLP (4h wide), 4
    for the two norms. Other blocks are counted the same way: an MLP of width i keeps its input and a
    dropout mask (3 per h) plus, ungated, the up projection and its activation (4i/h; ReLU's output is
    both: 2i/h) or, gated, gate, up, act(gate) and their product (8i/h); rotary positions keep q and k
    once more (4)."""
    i, h = config.intermediate_size, config.n_embd
    if config.gated_mlp:
        mlp = 3 + 8 * i / h
    else:
        mlp = 3 + (2 if config.mlp == "relu" else 4) * i / h
    return 11 + 4 + mlp + (4 if config.positions == "rope" else 0)


def cross_attention_bytes(config: ModelConfig, batch: int, target_len: int, source_len: int, recompute: str) -> float:
    """A decoder layer's cross-attention, counted like self-attention: its norm, query input, query, output,
    projection input and dropout mask on the decoder side (2+2+2+2+2+1), the memory's projection input
    and keys and values on the encoder side (2 + 4 * kv_heads/heads), and 5 bytes per attention weight."""
    b, h, a = batch, config.n_embd, config.n_head
    if recompute == "full":
        return 0.0  # the memory is kept once, by the encoder
    side = target_len * b * h * 11 + source_len * b * h * (2 + 4 * config.n_kv_head / config.n_head)
    return side + (5 * a * target_len * source_len * b if recompute == "none" else 0.0)


def activation_bytes(
    config: ModelConfig, batch: int, seq_len: int, recompute: str = "none", target_len: int | None = None
) -> float:
    """16-bit activations of all layers kept for the backward pass (Korthikanti et al., 2022):
    s*b*h*(34 + 5*a*s/h) per GPT layer without recomputation, s*b*h*34 with selective recomputation
    (attention weights recomputed, as FlashAttention does), 2*s*b*h with full recomputation (only each
    layer's input kept). Encoder-decoders: the encoder's layers at `seq_len`, the decoder's at
    `target_len` (default `seq_len`) plus their cross-attention (`cross_attention_bytes`)."""
    if recompute not in RECOMPUTE:
        raise LlmlabError(f"unknown recompute mode {recompute!r}", f"use one of: {', '.join(RECOMPUTE)}")
    b, h, a = batch, config.n_embd, config.n_head

    def layer(s: int) -> float:
        return {
            "none": s * b * h * (token_bytes(config) + 5 * a * s / h),
            "selective": token_bytes(config) * s * b * h,
            "full": 2 * s * b * h,
        }[recompute]

    if not family_spec(config).seq2seq:
        return config.n_layer * layer(seq_len)
    T = target_len or seq_len
    decoder = layer(T) + cross_attention_bytes(config, batch, T, seq_len, recompute)
    return config.n_layer * layer(seq_len) + config.n_decoder_layer * decoder


def scored_positions(config: ModelConfig, batch: int, seq_len: int, target_len: int | None = None) -> int:
    """Positions the output layer scores in training: every one (causal LM), the target's
    (encoder-decoder), the masked 15% (masked LM: its head runs only there)."""
    spec = family_spec(config)
    if spec.masked_lm:
        return batch * masked_positions(seq_len)
    if spec.seq2seq:
        return batch * (target_len or seq_len)
    return batch * seq_len


def masked_positions(seq_len: int, probability: float = 0.15) -> int:
    """Positions a masked-LM row labels (BERT: round(15%), at least one)."""
    return max(1, round(probability * seq_len))


def logits_bytes(config: ModelConfig, batch: int, seq_len: int, target_len: int | None = None) -> float:
    """The output layer's share: 16-bit logits, their fp32 copy and the fp32 log-softmax for the loss."""
    return scored_positions(config, batch, seq_len, target_len) * config.vocab_size * (2 + 4 + 4)


def kv_cache_bytes(
    config: ModelConfig, batch: int, seq_len: int, dtype: str = "bf16", target_len: int | None = None
) -> float:
    """Keys and values of every decoder layer: 2 * layers * batch * length * kv_heads * head_dim elements.
    An encoder-decoder caches its decoder's own `target_len` positions and the cross-attention's keys and
    values of the `seq_len` input; an encoder generates nothing and caches nothing."""
    kv_dtype = dtype if dtype in ("fp32", "fp16", "bf16") else "bf16"  # quantized weights, 16-bit cache
    per_position = 2 * batch * config.n_kv_head * config.head_dim * DTYPE_BYTES[kv_dtype]
    spec = family_spec(config)
    if not spec.generates:
        return 0.0
    if spec.seq2seq:
        return config.n_decoder_layer * ((target_len or seq_len) + seq_len) * per_position
    return config.n_layer * seq_len * per_position


def plan_memory(
    params: float,
    dtype: str = "fp32",
    optimizer: str = "adamw",
    mixed_precision: bool = False,
    gpus: int = 1,
    strategy: str = "ddp",
    config: ModelConfig | None = None,
    batch: int | None = None,
    seq_len: int | None = None,
    recompute: str = "none",
    target_len: int | None = None,
) -> MemoryPlan:
    """Per-GPU bytes for training under `strategy` and for inference (weights + KV cache)."""
    for value, allowed, what in (
        (dtype, DTYPE_BYTES, "dtype"),
        (optimizer, OPTIMIZER_STATE_BYTES, "optimizer"),
        (strategy, STRATEGIES, "strategy"),
    ):
        if value not in allowed:
            raise LlmlabError(f"unknown {what} {value!r}", f"use one of: {', '.join(allowed)}")
    if params <= 0:
        raise LlmlabError(f"the parameter count must be positive, got {params:g}", "pass e.g. --params 7e9")
    if gpus < 1:
        raise LlmlabError(f"--gpus must be >= 1, got {gpus}", "pass the number of GPUs")
    if mixed_precision:
        weights, grads, states = 2.0, 2.0, 4.0 + OPTIMIZER_STATE_BYTES[optimizer]  # fp32 master copy + states
    else:
        if dtype not in ("fp32", "fp16", "bf16"):
            raise LlmlabError(f"cannot train in {dtype}", "train in fp32/fp16/bf16; int8/int4 are for inference")
        weights = grads = DTYPE_BYTES[dtype]
        states = OPTIMIZER_STATE_BYTES[optimizer]
    shard = {"ddp": (1, 1, 1), "zero1": (1, 1, gpus), "zero2": (1, gpus, gpus), "zero3": (gpus, gpus, gpus)}
    w_div, g_div, s_div = shard[strategy]
    plan = MemoryPlan()
    plan.training["weights"] = params * weights / w_div
    plan.training["gradients"] = params * grads / g_div
    plan.training["optimizer states"] = params * states / s_div
    if batch and seq_len and config is not None:
        plan.training["activations"] = activation_bytes(config, batch, seq_len, recompute, target_len)
        plan.training["logits and loss"] = logits_bytes(config, batch, seq_len, target_len)
    elif not mixed_precision:  # the rule of thumb is the fp32 course table's; mixed precision needs the formula
        plan.training["activations and temporaries (rule of thumb)"] = params * COURSE_ACTIVATION_BYTES_PER_PARAM
    if strategy == "ddp" and gpus > 1:
        # the gradients flattened for the all-reduce: PyTorch DDP's buckets, the ZeRO paper's fused fp32
        # buffer ("6 GB for 1.5B parameters"); ZeRO's stages use constant-size buckets instead
        plan.training["temporary buffers (gradient all-reduce)"] = params * 4.0
    plan.inference["weights"] = params * DTYPE_BYTES[dtype]
    if batch and seq_len and config is not None and family_spec(config).generates:
        plan.inference["KV cache"] = kv_cache_bytes(config, batch, seq_len, dtype, target_len)
    return plan


def accelerate_estimate(model_bytes_fp32: float) -> dict[str, float]:
    """accelerate's `estimate-memory` convention: weights (parameters and buffers) in each dtype, and
    training with Adam as 4x the weights (weights, gradients, two states), in MiB/GiB."""
    return {
        "fp32": model_bytes_fp32,
        "fp16/bf16": model_bytes_fp32 / 2,
        "int8": model_bytes_fp32 / 4,
        "int4": model_bytes_fp32 / 8,
        "training fp32 with Adam": 4 * model_bytes_fp32,
    }


def parse_size(text: str) -> float:
    """'80GB' -> 80e9 bytes, '40GiB' -> 40 * 2**30."""
    units = {"GIB": 2**30, "MIB": 2**20, "TIB": 2**40, "GB": 1e9, "MB": 1e6, "TB": 1e12, "B": 1}
    upper = text.strip().upper()
    for unit, factor in units.items():
        if upper.endswith(unit):
            try:
                return float(upper[: -len(unit)]) * factor
            except ValueError:
                break
    raise LlmlabError(f"cannot read the size {text!r}", "write it like 80GB or 24GiB")
