"""The peak of one LoRA / QLoRA fine-tuning step: what freezing the base changes in `plan/peak.py`'s count.

- Model states: the frozen weights stay as they are stored (fp32 in `llmlab finetune`; QLoRA's block
  layers as NF4: half a byte per weight plus an fp32 absmax per block); gradients and AdamW's two
  states exist for the adapters' A and B only, so they shrink by the trainable fraction.
- Activations: a matmul keeps its input only to compute its weight's gradient, so a frozen layer keeps
  nothing of its own (its 16-bit weight copy stays under autocast: the input's gradient needs it); an
  adapter keeps its input once (for A's gradient) and A's output (r per token, for B's); a frozen
  RMSNorm gain no longer keeps its normalised output (CPU); the frozen output head keeps no input; and
  nothing before the first adapter keeps anything, since the graph starts there.
- QLoRA's 4-bit layers keep no weight copy at all: they dequantize again in backward
  (`model.quantize._FrozenWeightLinear`), one layer at a time.
The three high points of a step are pre-training's (see plan/peak.py), without the shared embedding's
second gradient (the embedding is frozen).
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.plan.peak import (
    DEVICES,
    PRECISIONS,
    StepPeak,
    _score_bytes,
    _width,
    activations_kept,
    layer_activation_bytes,
    norm_kept_bytes,
)

METHODS = ("lora", "qlora")
# a block's layers in the order a forward reaches them: what comes before the first adapter keeps nothing
SELF_ORDER = ("attn.qkv", "attn.proj", "mlp.up", "mlp.down")
NF4_BLOCK = 64  # QLoRA's block size, as `quantize --to nf4` uses it


@dataclass(frozen=True)
class AdapterShape:
    """What the peak needs to know of an adapted model beyond its config (a meta-device model serves)."""

    method: str
    r: int
    dropout: float
    adapted: frozenset[str]  # layer kinds inside the blocks that carry an adapter (`attn.qkv`, `mlp.down`)
    trainable: int  # the adapters' parameters
    largest_trainable: int
    frozen_params: int  # the base's weights, all frozen
    nf4_params: int  # QLoRA: those of them stored in NF4 (the block layers); 0 for LoRA
    nf4_bytes: float  # their codes and fp32 absmax per block
    copied_matrices: int  # frozen 2-D weights that autocast copies to 16 bits and backward keeps
    largest_block_matrix: int  # elements of the largest block layer: QLoRA dequantizes one at a time

    @classmethod
    def of(cls, config: ModelConfig, method: str, r: int, targets: tuple[str, ...], dropout: float = 0.0):
        """Build the adapted model on the meta device (shapes only) and read its parameters."""
        import torch
        from torch import nn

        from llmlab.model import build_model
        from llmlab.model.lora import LoraSpec, add_lora, lora_layers
        from llmlab.model.quantize import nf4_block_size

        if method not in METHODS:
            raise LlmlabError(f"no adapter plan for --method {method!r}", f"use one of: {', '.join(METHODS)}")
        with torch.device("meta"):
            model = build_model(config)
            add_lora(model, LoraSpec(r=r, alpha=2.0 * r, dropout=dropout, targets=targets))
        layers = lora_layers(model)
        frozen = [(n, p) for n, p in model.named_parameters() if not p.requires_grad]
        trainable = [p.numel() for p in model.parameters() if p.requires_grad]
        block_matrices = [(n, p) for n, p in frozen if ".blocks." in f".{n}" and p.dim() == 2]
        # every linear layer's weight is read by a matmul (the output head's too, tied or not)
        copied = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
        nf4_params, nf4_bytes = 0, 0.0
        if method == "qlora":  # the block layers in NF4 (codes, an fp32 absmax per block), the rest 16-bit
            for _, p in block_matrices:
                out, width = p.shape
                nf4_params += p.numel()
                nf4_bytes += out * width / 2 + 4.0 * out * width / nf4_block_size(width, NF4_BLOCK)
            copied = 0  # 4-bit layers dequantize again in backward; the 16-bit head needs no copy
        return cls(
            method=method,
            r=r,
            dropout=dropout,
            adapted=frozenset(".".join(n.split(".")[-2:]) for n in layers if ".blocks." in f".{n}"),
            trainable=sum(trainable),
            largest_trainable=max(trainable),
            frozen_params=sum(p.numel() for _, p in frozen),
            nf4_params=nf4_params,
            nf4_bytes=nf4_bytes,
            copied_matrices=copied,
            largest_block_matrix=max(p.numel() for _, p in block_matrices),
        )


def frozen_weight_bytes(shape: AdapterShape, bytes_per_weight: float) -> float:
    """The frozen base with its weights at `bytes_per_weight`, QLoRA's NF4 layers as they are."""
    return shape.nf4_bytes + bytes_per_weight * (shape.frozen_params - shape.nf4_params)


def run_frozen_bytes(shape: AdapterShape) -> float:
    """The frozen base as `llmlab finetune` holds it: fp32 for LoRA; for QLoRA NF4 block layers and,
    as `quantize` leaves them, 16-bit embeddings, head and norms."""
    return frozen_weight_bytes(shape, 2.0 if shape.method == "qlora" else 4.0)


def frozen_layer_savings(config: ModelConfig, shape: AdapterShape, device: str, precision: str) -> float:
    """Bytes per token and channel one self-attention block keeps less than in full training: the inputs
    of its frozen matmuls and the normalised outputs of its frozen RMSNorm gains, less what its adapters
    add (A's output, r per token, and a dropout mask of the input)."""
    w, h, adapted, r = _width(precision), config.n_embd, shape.adapted, shape.r
    inputs = {
        "attn.qkv": 2.0 * w,
        "attn.proj": 2.0 * w * config.attention_width / h,
        "mlp.up": 2.0 * w,
        "mlp.down": 0.0 if config.mlp == "relu" else 2.0 * w * config.intermediate_size / h,  # ReLU keeps it anyway
    }
    widths = {"attn.qkv": h, "attn.proj": config.attention_width, "mlp.up": h, "mlp.down": config.intermediate_size}
    saved = sum(b for kind, b in inputs.items() if kind not in adapted)
    saved += 2 * _normalised_output_bytes(config, device)
    added = sum(2.0 * w * r / h + mask_bytes(kind, precision, shape) * widths[kind] / h
                for kind in adapted if kind in widths)  # fmt: skip
    return saved - added


NORM_FED = ("attn.qkv", "mlp.up", "cross.q", "cross.kv")  # layers reading a norm's (fp32) output under autocast


def mask_bytes(kind: str, precision: str, shape: AdapterShape) -> float:
    """An adapter's dropout keeps its mask for backward, in the input's dtype (x * mask / (1 - p)): fp32
    for what follows a norm under autocast, 16-bit after a matmul (attention output, MLP product) and
    everywhere in QLoRA's 16-bit model."""
    if shape.dropout == 0:
        return 0.0
    if shape.method == "qlora":
        return 2.0
    return 4.0 if precision == "fp32" or kind in NORM_FED else 2.0


def _normalised_output_bytes(config: ModelConfig, device: str) -> float:
    """What a norm keeps only for its gain's gradient: CPU RMSNorm's fp32 normalised output."""
    return norm_kept_bytes(config, device) - 4.0


def before_first_adapter(config: ModelConfig, shape: AdapterShape, batch: int, s: int, device: str,
                         precision: str) -> float:  # fmt: skip
    """Bytes the first block keeps in full training before its first adapted layer: with a frozen
    embedding nothing there needs a gradient. Pre-norm blocks: the first norm's input, then (adapters
    from the MLP on) the attention's tensors and the second norm's input; and the first adapter's
    dropout mask (its input needs no gradient either)."""
    if config.norm_position != "pre":
        return 0.0
    first = next((kind for kind in SELF_ORDER if kind in shape.adapted), None)
    norm_input = 4.0
    width = {"mlp.down": config.intermediate_size, "attn.proj": config.attention_width}.get(first, config.n_embd)
    mask = mask_bytes(first, precision, shape) * width / config.n_embd if first else 0.0
    if first in (None, "attn.qkv"):
        per_token = norm_input + mask
    else:
        mlp = _mlp_bytes(config, precision)
        full_layer = layer_activation_bytes(config, batch, s, device, precision) / (batch * s * config.n_embd)
        attention = full_layer - mlp - 2 * norm_kept_bytes(config, device)
        per_token = norm_input + attention + (norm_input if first.startswith("mlp") else 0.0) + mask
    return per_token * batch * s * config.n_embd


def _mlp_bytes(config: ModelConfig, precision: str) -> float:
    """The MLP's share of a block's kept bytes per token and channel (its input and inner tensors)."""
    i, h = config.intermediate_size, config.n_embd
    inner = 8 * i / h if config.gated_mlp else (2 if config.mlp == "relu" else 4) * i / h
    return (2 + inner) * _width(precision)


def cross_savings(config: ModelConfig, shape: AdapterShape, batch: int, target_len: int, source_len: int,
                  precision: str) -> float:  # fmt: skip
    """A decoder layer's cross-attention: its frozen query and output projections keep no input, its
    frozen key/value projection no 16-bit copy of the encoder output (under autocast); adapters add A's output."""
    w, h, adapted = _width(precision), config.n_embd, shape.adapted
    adapter = lambda kind: 2.0 * w * shape.r / h + mask_bytes(kind, precision, shape)  # noqa: E731
    target = sum(2.0 * w if kind not in adapted else -adapter(kind) for kind in ("cross.q", "cross.proj"))
    source = (2.0 if precision == "autocast" else 0.0) if "cross.kv" not in adapted else -adapter("cross.kv")
    return (target * target_len + source * source_len) * batch * h


def adapter_activations(config: ModelConfig, shape: AdapterShape, batch: int, seq_len: int,
                        target_len: int | None, device: str, precision: str) -> float:  # fmt: skip
    """`activations_kept` of full training, less what freezing frees (see the module doc)."""
    full = activations_kept(config, batch, seq_len, target_len, device, precision)
    b, h = batch, config.n_embd
    savings = lambda s: frozen_layer_savings(config, shape, device, precision) * s * b * h  # noqa: E731
    cast = 2.0 if precision == "autocast" else 4.0
    spec = family_spec(config)
    if spec.causal:
        stacks = [(config.n_layer, seq_len)]
        head = seq_len
    else:
        T = target_len or seq_len
        stacks = [(config.n_layer, seq_len), (config.n_decoder_layer, T)]
        head = T
        full -= config.n_decoder_layer * cross_savings(config, shape, b, T, seq_len, precision)
        full -= frozen_bias_savings(config, config.n_layer, b, seq_len, device, precision, False)
        full -= frozen_bias_savings(config, config.n_decoder_layer, b, T, device, precision, True)
    for layers, s in stacks:
        full -= layers * savings(s) + before_first_adapter(config, shape, b, s, device, precision)
        full -= _normalised_output_bytes(config, device) * s * b * h  # the final norm's frozen gain
    return full - cast * head * b * h  # the frozen head keeps no input


def norm_inputs(config: ModelConfig, seq_len: int, target_len: int | None) -> float:
    """Positions times norms that keep their input for backward: every norm of every stack (the blocks',
    the final one, an embedding norm) but the first block's first, which comes before any adapter."""
    stacks = [(config.n_layer, seq_len, 2)]
    if family_spec(config).seq2seq:
        stacks.append((config.n_decoder_layer, target_len or seq_len, 3))
    pre = config.norm_position == "pre"
    ends = int(pre) + int(config.embed_norm) - int(pre)  # a final norm; the first block's first norm keeps nothing
    return sum((layers * norms + ends) * s for layers, s, norms in stacks)


def fused_kernel(config: ModelConfig, device: str, s: int) -> bool:
    """A frozen relative bias needs no gradient, so past 128 positions PyTorch's fused CPU kernel takes
    the attention (a learned one keeps the math kernel, and its weights, at any length)."""
    return config.positions == "relative" and device == "cpu" and s > 128


def frozen_bias_savings(config: ModelConfig, layers: int, batch: int, s: int, device: str, precision: str,
                        causal: bool) -> float:  # fmt: skip
    """T5's learned position bias, frozen: its tables are not kept for backward (`relative_bias_bytes`),
    except the mask the fused kernel keeps (each layer's 16-bit copy, or the one fp32 table), and past
    128 positions the attention weights are not kept either."""
    from llmlab.plan.peak import relative_bias_bytes

    if config.positions != "relative":
        return 0.0
    full = relative_bias_bytes(config, layers, s, precision, causal)
    if not fused_kernel(config, device, s):
        return full
    scores = config.n_head * s * s
    masks = 2.0 * scores * layers if precision == "autocast" else 4.0 * scores
    return full - masks + layers * _score_bytes(precision) * scores * batch


def adapter_step_peak(
    config: ModelConfig,
    shape: AdapterShape,
    batch: int,
    seq_len: int,
    device: str = "cuda",
    precision: str = "autocast",
    target_len: int | None = None,
    ddp: bool = False,
) -> StepPeak:
    """Bytes at each high point of a steady-state LoRA/QLoRA step with AdamW on the adapters."""
    from llmlab.plan.memory import scored_positions

    if device not in DEVICES or precision not in PRECISIONS:
        raise LlmlabError(
            f"no peak model for device {device!r} with precision {precision!r}",
            f"use a device of {', '.join(DEVICES)} and a precision of {', '.join(PRECISIONS)}",
        )
    frozen = run_frozen_bytes(shape)
    weights = frozen + 4.0 * shape.trainable
    gradients = 4.0 * shape.trainable
    states = 8.0 * shape.trainable
    # autocast's 16-bit copies: the frozen matrices' (made at each use, kept for the input's gradient) and
    # the adapters' (cached for the forward)
    copies = 2.0 * (shape.copied_matrices + shape.trainable) if precision == "autocast" else 0.0
    if shape.method == "qlora":  # a 16-bit model whatever the precision: the residual stream is 16-bit too
        precision = "autocast"
        activations = adapter_activations(config, shape, batch, seq_len, target_len, device, precision)
        activations -= 2.0 * norm_inputs(config, seq_len, target_len) * batch * config.n_embd
    else:
        activations = adapter_activations(config, shape, batch, seq_len, target_len, device, precision)
    loss_path = 12.0 * scored_positions(config, batch, seq_len, target_len) * config.vocab_size
    # QLoRA: one block layer dequantizing (model.quantize.dequantize_nf4): its codes as int32, their fp32
    # values and the scaled fp32 rows, 12 bytes per weight for a moment, in forward and again in backward
    dequantized = 12.0 * shape.largest_block_matrix if shape.method == "qlora" else 0.0
    optimizer_temporaries = 0.0  # the fused AdamW kernel keeps none
    components = {
        "frozen weights (as stored)": frozen,
        "adapter weights (fp32)": 4.0 * shape.trainable,
        "optimizer states (AdamW, adapters)": states,
        "gradients (adapters)": gradients,
        "16-bit weight copies (autocast)": copies,
        "activations kept for backward": activations,
        "loss on the logits (fp32)": loss_path,
        "a dequantized 4-bit layer": dequantized,
        "optimizer temporaries": optimizer_temporaries,
        "DDP gradient buckets": gradients if ddp else 0.0,
    }
    phases = {
        # counted as if a layer's dequantization overlapped the loss's tensors: measured, it nearly does (a
        # tiny batch of a wide model comes out up to 10% over; the planner errs on the safe side there)
        "loss backward": weights + states + copies + activations + loss_path + dequantized,
        "end of backward": weights + states + gradients,
        "optimizer step": weights + states + gradients + optimizer_temporaries,
    }
    if ddp:
        phases = {phase: bytes_ + gradients for phase, bytes_ in phases.items()}
    return StepPeak(components, phases)
