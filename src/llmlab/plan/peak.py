"""The peak memory of one llmlab training step: the figure `torch.cuda.max_memory_allocated` reports.

`plan_memory` adds components up in the published conventions (every activation 16-bit, the
Korthikanti et al. count). The peak of a real step is smaller than that sum, because not everything is
alive at once, and larger in places, because torch's autocast keeps some tensors in fp32. A step of
llmlab's trainer (AdamW, zero_grad(set_to_none), bf16 autocast or fp32) has three high points:

1. the loss's backward: weights, optimizer states, autocast's 16-bit weight copies, every activation
   kept for backward, and the fp32 loss path on the logits: the log-softmax output kept from forward,
   the loss's gradient and the log-softmax backward's output (3 x 4 bytes per logit);
2. the end of backward: weights, states and gradients (the activations have all been freed), plus, with
   tied embeddings, the embedding's fp32 gradient while it is added to the head's (an encoder-decoder
   has one more high point: its decoder's embedding gradient is summed while the encoder still waits);
3. the optimizer step: (2) plus AdamW's temporaries: none, since llmlab uses PyTorch's fused AdamW kernel
   on CUDA and CPU alike (the per-tensor loop it replaced kept two tensors the size of the parameter).

The peak is the largest of the three. The steady state is meant: the first step has no optimizer
states yet during forward and backward. With gradient accumulation the gradients of the earlier
micro-batches are alive through the later ones' backward too.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.plan.memory import masked_positions, scored_positions, token_bytes

DEVICES = ("cuda", "cpu")
PRECISIONS = ("autocast", "fp32")


@dataclass
class StepPeak:
    """Bytes alive at each high point of a training step (steady state, one device: alone or a DDP rank)."""

    components: dict[str, float]
    phases: dict[str, float]

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)


@dataclass(frozen=True)
class ModelShape:
    """What the peak needs to know of a model beyond its config (a meta-device model serves)."""

    params: int
    block_matrices: int  # the 2-D weights inside the blocks: autocast casts them
    largest: int  # elements of the largest parameter
    encoder_params: int  # an encoder-decoder's encoder: its gradients come last
    encoder_block_matrices: int

    @classmethod
    def of(cls, model) -> ModelShape:
        named = [(f".{n}", p) for n, p in model.named_parameters()]
        encoder = [(n, p) for n, p in named if n.startswith(".encoder.")] if family_spec(model.config).seq2seq else []
        matrices = lambda items: sum(p.numel() for n, p in items if ".blocks." in n and p.dim() == 2)  # noqa: E731
        return cls(
            params=sum(p.numel() for _, p in named),
            block_matrices=matrices(named),
            largest=max(p.numel() for _, p in named),
            encoder_params=sum(p.numel() for _, p in encoder),
            encoder_block_matrices=matrices(encoder),
        )


def attention_keeps_scores(config: ModelConfig, device: str, seq_len: int) -> bool:
    """Whether the attention kernel keeps the T x T weights for backward: CUDA's flash and
    memory-efficient kernels never do; on CPU llmlab picks the math kernel for <= 128 positions
    (faster there, see `model.layers.attention_kernel`), and PyTorch picks it for a learned additive
    bias (T5's relative positions) at any length: both keep them."""
    return device == "cpu" and (seq_len <= 128 or config.positions == "relative")


def relative_bias_bytes(config: ModelConfig, n_layers: int, s: int, precision: str, causal: bool) -> float:
    """T5's learned bias, one (heads, s, s) fp32 table per stack (twice in a decoder: the table and its
    causally masked copy), and under autocast each layer's own 16-bit copy of it (the attention kernel
    reads a 16-bit mask). Independent of the batch."""
    if config.positions != "relative":
        return 0.0
    scores = config.n_head * s * s
    return 4.0 * scores * (2 if causal else 1) + (2.0 * scores * n_layers if precision == "autocast" else 0.0)


def layer_activation_bytes(config: ModelConfig, batch: int, seq_len: int, device: str, precision: str) -> float:
    """Bytes one block keeps for backward, as torch runs llmlab's blocks.

    From the 16-bit count (`token_bytes`), with three corrections measured against the allocator:
    - without dropout there are no residual dropout masks (2 bytes per token and channel fewer);
    - the residual stream stays fp32 under autocast (the embeddings are looked up in fp32), so each norm
      keeps a 4-byte input, not 2; RMSNorm without a fused kernel (CPU) also keeps its fp32 normalised
      output for the gain's gradient (4 more);
    - in fp32 every other kept tensor is 4 bytes: twice the 16-bit count.
    Attention weights are kept only by the math kernel (`attention_keeps_scores`).
    """
    s, b, h, a = seq_len, batch, config.n_embd, config.n_head
    norms = 2.0 * 2  # the formula's two 16-bit norm inputs
    masks = 2.0 if config.dropout == 0 else 0.0
    rest = (token_bytes(config) - norms - masks) * _width(precision)
    per_token = rest + 2 * norm_kept_bytes(config, device)
    if attention_keeps_scores(config, device, seq_len):
        per_token += _score_bytes(precision) * a * s / h
    return per_token * s * b * h


def _width(precision: str) -> float:
    """How many times the 16-bit count a kept tensor weighs."""
    return 2.0 if precision == "fp32" else 1.0


def _score_bytes(precision: str) -> float:
    """Per attention weight kept by the math kernel. 16-bit: the formula's 5; fp32: the softmax output
    alone (4), which the weighted sum with the values shares."""
    return 5.0 if precision == "autocast" else 4.0


def cross_layer_bytes(
    config: ModelConfig, batch: int, target_len: int, source_len: int, device: str, precision: str
) -> float:
    """A decoder layer's cross-attention: its norm's input, then the query input, query, output and
    projection input (2 each in 16 bits) per target position; per source position the keys and values
    (4 x kv_heads/heads) and, under autocast, the layer's own 16-bit copy of the encoder output for its
    key/value projection (in fp32 every layer reads the one encoder output, counted with the encoder)."""
    b, h, a = batch, config.n_embd, config.n_head
    target = norm_kept_bytes(config, device) + 8 * _width(precision)
    source = 4 * _width(precision) * config.n_kv_head / config.n_head + (2.0 if precision == "autocast" else 0.0)
    kept = (target * target_len + source * source_len) * b * h
    if attention_keeps_scores(config, device, target_len):
        kept += _score_bytes(precision) * a * target_len * source_len * b
    return kept


def stack_activation_bytes(
    config: ModelConfig, n_layers: int, batch: int, s: int, device: str, precision: str, causal: bool
) -> float:
    """One stack: its blocks, its embedding norm (BERT) and final norm (pre-norm stacks), T5's bias."""
    norm = norm_kept_bytes(config, device)
    ends = (norm if config.embed_norm else 0.0) + (norm if config.norm_position == "pre" else 0.0)
    blocks = n_layers * layer_activation_bytes(config, batch, s, device, precision)
    return blocks + ends * s * batch * config.n_embd + relative_bias_bytes(config, n_layers, s, precision, causal)


def activations_kept(
    config: ModelConfig, batch: int, seq_len: int, target_len: int | None, device: str, precision: str
) -> float:
    """Everything a forward keeps for backward: the stacks, a decoder's cross-attention, and the output
    layer's input (the masked-LM head's four tensors at the masked positions only)."""
    b, h = batch, config.n_embd
    cast = 2.0 if precision == "autocast" else 4.0  # a matmul's input: autocast's copy, or the fp32 tensor
    spec = family_spec(config)
    if spec.causal:
        return (
            stack_activation_bytes(config, config.n_layer, b, seq_len, device, precision, True) + cast * seq_len * b * h
        )
    encoder = stack_activation_bytes(config, config.n_layer, b, seq_len, device, precision, False)
    if spec.masked_lm:
        head = (cast + 2 * _width(precision) + 4 + cast) * b * masked_positions(seq_len) * h  # dense, act, norm, out
        return encoder + head
    T = target_len or seq_len
    cross = config.n_decoder_layer * cross_layer_bytes(config, b, T, seq_len, device, precision)
    decoder = stack_activation_bytes(config, config.n_decoder_layer, b, T, device, precision, True)
    return encoder + decoder + cross + cast * T * b * h


def norm_kept_bytes(config: ModelConfig, device: str) -> float:
    """Per token and channel, what a norm keeps for backward: its fp32 input, plus for the composite
    RMSNorm (no fused kernel on CPU) the fp32 normalised output."""
    return 4.0 + (4.0 if config.norm == "rmsnorm" and device == "cpu" else 0.0)


def cast_weight_bytes(config: ModelConfig, block_matrix_params: float) -> float:
    """Autocast's 16-bit copies of every matrix a matmul reads: the blocks', the output head's (V x h) and
    the masked-LM head's dense layer; kept until backward has used them. Embedding lookups read the fp32
    table itself."""
    dense = config.n_embd**2 if family_spec(config).masked_lm else 0
    return 2.0 * (block_matrix_params + config.vocab_size * config.n_embd + dense)


def training_step_peak(
    config: ModelConfig,
    shape: ModelShape,
    batch: int,
    seq_len: int,
    device: str = "cuda",
    precision: str = "autocast",
    accumulation_steps: int = 1,
    target_len: int | None = None,
    ddp: bool = False,
) -> StepPeak:
    """Bytes at each high point of a steady-state llmlab training step with AdamW (see the module doc);
    batch is the micro-batch; target_len the decoder's length of an encoder-decoder (default seq_len);
    `ddp`: one process of DistributedDataParallel, whose gradient buckets (a second fp32 copy of the
    gradients, all-reduced in place) live from the first backward on, through every phase."""
    if device not in DEVICES or precision not in PRECISIONS:
        raise LlmlabError(
            f"no peak model for device {device!r} with precision {precision!r}",
            f"use a device of {', '.join(DEVICES)} and a precision of {', '.join(PRECISIONS)}",
        )
    b, h, V = batch, config.n_embd, config.vocab_size
    weights = 4.0 * shape.params
    gradients = 4.0 * shape.params
    states = 8.0 * shape.params
    copies = cast_weight_bytes(config, shape.block_matrices) if precision == "autocast" else 0.0
    activations = activations_kept(config, batch, seq_len, target_len, device, precision)
    loss_path = 12.0 * scored_positions(config, b, seq_len, target_len) * V
    optimizer_temporaries = 0.0  # the fused AdamW kernel (training.optim.fused_adamw) keeps none
    # One table read in several places (tied head, an encoder-decoder's two lookups): its gradients are
    # summed before the table's own exists. Measured: a new gradient is added in place into the sum so far
    # (one extra table), except into the first one straight from the fp32 head's matmul, where the sum is a
    # new tensor (two extra); an encoder-decoder's last sum goes into that new tensor, in place.
    seq2seq = family_spec(config).seq2seq
    shared = config.tie_embeddings or seq2seq
    extra_tables = 2 if precision == "fp32" and config.tie_embeddings else 1
    last_sum = 1 if seq2seq else extra_tables
    second_gradient = last_sum * 4.0 * V * h if shared else 0.0
    components = {
        "weights (fp32)": weights,
        "optimizer states (AdamW)": states,
        "gradients (fp32)": gradients,
        "16-bit weight copies (autocast)": copies,
        "activations kept for backward": activations,
        "loss on the logits (fp32)": loss_path,
        "shared embedding's second gradient": second_gradient,
        "optimizer temporaries": optimizer_temporaries,
        "DDP gradient buckets": gradients if ddp else 0.0,
    }
    earlier_gradients = gradients if accumulation_steps > 1 else 0.0
    phases = {
        "loss backward": weights + states + copies + activations + loss_path + earlier_gradients,
        "end of backward": weights + states + gradients + second_gradient,
        "optimizer step": weights + states + gradients + optimizer_temporaries,
    }
    if ddp:
        phases = {phase: bytes_ + gradients for phase, bytes_ in phases.items()}
    if seq2seq:
        # the decoder's embedding lookup is differentiated before the encoder (it was created later): its
        # gradient is summed with the head's while the encoder's activations and weight copies still
        # wait, and the encoder's gradients do not exist yet
        encoder = stack_activation_bytes(config, config.n_layer, b, seq_len, device, precision, False)
        encoder_copies = 2.0 * shape.encoder_block_matrices if precision == "autocast" else 0.0
        later = gradients if accumulation_steps > 1 else 4.0 * (shape.params - shape.encoder_params - V * h)
        tables = (1 + extra_tables) * 4.0 * V * h
        buckets = gradients if ddp else 0.0
        phases["decoder embedding backward"] = weights + states + later + tables + encoder + encoder_copies + buckets
    return StepPeak(components, phases)
