"""Predicted memory against the real tensors of llmlab models after one training step."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmlab.config import ModelConfig
from llmlab.model import DecoderLM
from llmlab.plan.memory import activation_bytes, logits_bytes, plan_memory


@dataclass
class MemoryCheck:
    preset: str
    component: str
    predicted: float
    measured: float

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted else float("nan")


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_activation_bytes(model: DecoderLM, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes autograd keeps for the backward pass of one forward, counting each storage once and
    leaving out the parameters themselves (and their 16-bit copies, which are weights, not activations)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() >= 2}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        is_weight_copy = t.dtype != torch.float32 and tuple(t.shape) in param_shapes
        if ptr not in params and not is_weight_copy:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    loss.backward()
    return sum(seen.values())


def verify(presets: list[str], batch: int = 4, seq_len: int = 256, vocab_size: int = 512) -> list[MemoryCheck]:
    """One AdamW step per preset in fp32: weights, gradients and Adam moments must match exactly; the
    16-bit activations saved for backward (bf16 autocast) are compared with the per-layer formula
    plus the output layer's logits."""
    checks: list[MemoryCheck] = []
    for preset in presets:
        torch.manual_seed(0)
        config = ModelConfig.from_preset(preset, vocab_size=vocab_size, block_size=seq_len)
        model = DecoderLM(config)
        n = model.num_parameters()
        plan = plan_memory(n, dtype="fp32", optimizer="adamw")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, vocab_size, (batch, seq_len))
        y = torch.randint(0, vocab_size, (batch, seq_len))
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        optimizer.step()
        params = list(model.parameters())
        moments = [v for s in optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
        checks += [
            MemoryCheck(preset, "weights", plan.training["weights"], _bytes(params)),
            MemoryCheck(preset, "gradients", plan.training["gradients"], _bytes(p.grad for p in params)),
            MemoryCheck(preset, "optimizer states", plan.training["optimizer states"], _bytes(moments)),
        ]
        optimizer.zero_grad(set_to_none=True)
        measured = saved_activation_bytes(model, x, y, torch.bfloat16)
        # llmlab trains sequences of <= 128 positions on CPU with the math kernel, which keeps the scores
        mode = "none" if seq_len <= 128 else "selective"
        predicted = activation_bytes(config, batch, seq_len, mode) + logits_bytes(config, batch, seq_len)
        checks.append(MemoryCheck(preset, f"activations (bf16, recompute {mode})", predicted, measured))
    return checks
