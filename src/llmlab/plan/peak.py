"""The peak memory of one llmlab training step: the figure `torch.cuda.max_memory_allocated` reports.

`plan_memory` adds components up in the published conventions (every activation 16-bit, the
Korthikanti et al. count). The peak of a real step is smaller than that sum, because not everything is
alive at once, and larger in places, because torch's autocast keeps some tensors in fp32. A step of
llmlab's trainer (AdamW, zero_grad(set_to_none), bf16 autocast or fp32) has three high points:

1. the loss's backward: weights, optimizer states, autocast's 16-bit weight copies, every activation
   kept for backward, and the fp32 loss path on the logits: the log-softmax output kept from forward,
   the loss's gradient and the log-softmax backward's output (3 x 4 bytes per logit);
2. the end of backward: weights, states and gradients (the activations have all been freed), plus, with
   tied embeddings, the embedding's fp32 gradient while it is added to the head's;
3. the optimizer step: (2) plus AdamW's temporaries: none for the fused CUDA kernel, two tensors the size
   of the parameter being updated for the per-tensor CPU loop.

The peak is the largest of the three. The steady state is meant: the first step has no optimizer
states yet during forward and backward. With gradient accumulation the gradients of the earlier
micro-batches are alive through the later ones' backward too.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.config import ModelConfig
from llmlab.plan.memory import activation_bytes

DEVICES = ("cuda", "cpu")
PRECISIONS = ("autocast", "fp32")


@dataclass
class StepPeak:
    """Bytes alive at each high point of a training step (steady state, one GPU, no sharding)."""

    components: dict[str, float]
    phases: dict[str, float]

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=self.phases.__getitem__)


def attention_keeps_scores(device: str, seq_len: int) -> bool:
    """Whether the attention kernel keeps the T x T weights for backward: CUDA's flash and
    memory-efficient kernels never do; on CPU llmlab picks the math kernel for <= 128 positions
    (faster there, see `model.layers.attention_kernel`), which does."""
    return device == "cpu" and seq_len <= 128


def layer_activation_bytes(config: ModelConfig, batch: int, seq_len: int, device: str, precision: str) -> float:
    """Bytes one block keeps for backward, as torch runs llmlab's blocks.

    From the 16-bit count (`activation_bytes`), with three corrections measured against the allocator:
    - without dropout there are no residual dropout masks (2 bytes per token and channel fewer);
    - the residual stream stays fp32 under autocast (the embeddings are looked up in fp32), so each norm
      keeps a 4-byte input, not 2; RMSNorm without a fused kernel (CPU) also keeps its fp32 normalised
      output for the gain's gradient (4 more);
    - in fp32 every other kept tensor is 4 bytes: twice the 16-bit count.
    Attention weights are kept only by the math kernel (`attention_keeps_scores`).
    """
    s, b, h, a = seq_len, batch, config.n_embd, config.n_head
    sixteen_bit = activation_bytes(config, batch, seq_len, "selective") / config.n_layer / (s * b * h)
    norms = 2.0 * 2  # the formula's two 16-bit norm inputs
    masks = 2.0 if config.dropout == 0 else 0.0
    rest = (sixteen_bit - norms - masks) * (2 if precision == "fp32" else 1)
    per_token = rest + 2 * norm_kept_bytes(config, device)
    if attention_keeps_scores(device, seq_len):
        # 16-bit: the formula's 5 bytes per score; fp32: the softmax output alone (4), which the
        # weighted sum with the values shares
        per_token += (5.0 if precision == "autocast" else 4.0) * a * s / h
    return per_token * s * b * h


def norm_kept_bytes(config: ModelConfig, device: str) -> float:
    """Per token and channel, what a norm keeps for backward: its fp32 input, plus for the composite
    RMSNorm (no fused kernel on CPU) the fp32 normalised output."""
    return 4.0 + (4.0 if config.norm == "rmsnorm" and device == "cpu" else 0.0)


def cast_weight_bytes(config: ModelConfig, block_matrix_params: float) -> float:
    """Autocast's 16-bit copies of every matrix a matmul reads: the blocks' and the output head (V x h);
    kept until backward has used them. Embedding lookups read the fp32 table itself."""
    return 2.0 * (block_matrix_params + config.vocab_size * config.n_embd)


def training_step_peak(
    config: ModelConfig,
    params: float,
    block_matrix_params: float,
    largest_param: float,
    batch: int,
    seq_len: int,
    device: str = "cuda",
    precision: str = "autocast",
    accumulation_steps: int = 1,
) -> StepPeak:
    """Bytes at each high point of a steady-state llmlab training step with AdamW (see the module doc);
    batch is the micro-batch.

    params: all parameters; block_matrix_params: the 2-D weights inside the blocks (autocast casts them);
    largest_param: elements of the largest parameter (the CPU optimizer loop's temporaries)."""
    s, b, h = seq_len, batch, config.n_embd
    weights = 4.0 * params
    gradients = 4.0 * params
    states = 8.0 * params
    copies = cast_weight_bytes(config, block_matrix_params) if precision == "autocast" else 0.0
    head_input = (norm_kept_bytes(config, device) + (2.0 if precision == "autocast" else 4.0)) * s * b * h
    activations = config.n_layer * layer_activation_bytes(config, batch, seq_len, device, precision) + head_input
    loss_path = 12.0 * b * s * config.vocab_size
    optimizer_temporaries = 0.0 if device == "cuda" else 2 * 4.0 * largest_param
    tied_sum = 4.0 * config.vocab_size * h if config.tie_embeddings else 0.0
    components = {
        "weights (fp32)": weights,
        "optimizer states (AdamW)": states,
        "gradients (fp32)": gradients,
        "16-bit weight copies (autocast)": copies,
        "activations kept for backward": activations,
        "loss on the logits (fp32)": loss_path,
        "tied embedding's second gradient": tied_sum,
        "optimizer temporaries": optimizer_temporaries,
    }
    phases = {
        "loss backward": weights
        + states
        + copies
        + activations
        + loss_path
        + (gradients if accumulation_steps > 1 else 0.0),
        "end of backward": weights + states + gradients + tied_sum,
        "optimizer step": weights + states + gradients + optimizer_temporaries,
    }
    return StepPeak(components, phases)
