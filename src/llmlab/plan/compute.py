"""Compute budgets: training FLOPs (C = 6ND), petaflop/s-days, GPU-days, and Chinchilla's optimum."""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmlab.errors import LlmlabError

PF_DAY_FLOPS = 1e15 * 24 * 3600  # one petaflop/s sustained for a day: 8.64e19 FLOPs

# Dense peak TFLOP/s from the vendors' datasheets (SXM parts, no structured sparsity).
GPU_PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "V100": {"fp32": 15.7, "fp16": 125.0},
    "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0},
    "H100": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5, "fp8": 1979.0},
    "H200": {"fp32": 67.0, "tf32": 494.5, "bf16": 989.5, "fp16": 989.5, "fp8": 1979.0},
}


def accelerator_peak_flops(device, dtype) -> float:
    """The dense peak FLOP/s of the GPU `device` is (by its name: V100, A100, H100, H200) in the
    format `dtype` computes in, from the table above; 0 where unknown (CPUs, other GPUs)."""
    import torch

    if device.type != "cuda":
        return 0.0
    name = torch.cuda.get_device_name(device)
    fmt = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype)
    if fmt is None:
        fmt = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    for gpu, peaks in GPU_PEAK_TFLOPS.items():
        if gpu in name and fmt in peaks:
            return peaks[fmt] * 1e12
    return 0.0


def training_flops(params: float, tokens: float, flops_per_param_token: float = 6.0) -> float:
    """C = k N D: 2 FLOPs per parameter per token forward, 4 backward (k = 6). An encoder-decoder such
    as T5 uses about half its parameters per token, which the GPT-3 paper counts as k = 3."""
    return flops_per_param_token * params * tokens


def inference_flops(params: float, new_tokens: float) -> float:
    """About 2 N FLOPs per generated token (attention over the context not counted)."""
    return 2.0 * params * new_tokens


def pf_days(flops: float) -> float:
    return flops / PF_DAY_FLOPS


def tokens_for_budget(flops: float, params: float, flops_per_param_token: float = 6.0) -> float:
    return flops / (flops_per_param_token * params)


def gpu_days(flops: float, gpu: str, dtype: str = "bf16", mfu: float = 1.0) -> float:
    """Days of one GPU at `mfu` (model FLOPs utilisation, 0-1) of its dense peak."""
    if gpu not in GPU_PEAK_TFLOPS:
        raise LlmlabError(f"unknown GPU {gpu!r}", f"use one of: {', '.join(GPU_PEAK_TFLOPS)}")
    if dtype not in GPU_PEAK_TFLOPS[gpu]:
        raise LlmlabError(f"{gpu} has no {dtype} peak in the table", f"use one of: {', '.join(GPU_PEAK_TFLOPS[gpu])}")
    if not 0 < mfu <= 1:
        raise LlmlabError(f"utilisation must be in (0, 1], got {mfu}", "pass e.g. --mfu 0.4")
    return flops / (GPU_PEAK_TFLOPS[gpu][dtype] * 1e12 * mfu * 24 * 3600)


@dataclass(frozen=True)
class ChinchillaFit:
    """L(N, D) = E + A / N^alpha + B / D^beta, and the N, D that minimise it for C = 6 N D."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, params: float, tokens: float) -> float:
        return self.E + self.A / params**self.alpha + self.B / tokens**self.beta

    def optimal(self, flops: float) -> tuple[float, float]:
        """Compute-optimal (parameters, tokens): N = G (C/6)^(beta/(alpha+beta)), D = (C/6) / N."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        params = g * (flops / 6) ** (self.beta / (self.alpha + self.beta))
        return params, flops / (6 * params)


CHINCHILLA_FITS = {
    "hoffmann2022": ChinchillaFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28),
    "besiroglu2024": ChinchillaFit(E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658),
}


def twenty_tokens_per_parameter(flops: float) -> tuple[float, float]:
    """The rule of thumb: D = 20 N with C = 6 N D, so N = sqrt(C / 120)."""
    params = math.sqrt(flops / 120)
    return params, 20 * params
