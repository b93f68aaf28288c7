"""How numbers are stored: the bits of a value in each floating-point format, and int8 quantization."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.errors import LlmlabError

# name -> (dtype, exponent bits, fraction bits)
FLOAT_FORMATS: dict[str, tuple[torch.dtype, int, int]] = {
    "fp32": (torch.float32, 8, 23),
    "fp16": (torch.float16, 5, 10),
    "bf16": (torch.bfloat16, 8, 7),
    "fp8-e4m3": (torch.float8_e4m3fn, 4, 3),
    "fp8-e5m2": (torch.float8_e5m2, 5, 2),
}
_BITS_AS_INT = {32: torch.int32, 16: torch.int16, 8: torch.uint8}


@dataclass
class FloatEncoding:
    format: str
    sign: str
    exponent: str
    fraction: str
    stored: float
    abs_error: float
    max: float
    smallest_normal: float
    eps: float

    @property
    def bits(self) -> str:
        return f"{self.sign} {self.exponent} {self.fraction}"


def encode_float(value: float, name: str) -> FloatEncoding:
    """The value rounded to format `name`, its bit fields and the format's range."""
    if name not in FLOAT_FORMATS:
        raise LlmlabError(f"unknown format {name!r}", f"use one of: {', '.join(FLOAT_FORMATS)}")
    dtype, e, m = FLOAT_FORMATS[name]
    source = torch.tensor([value], dtype=torch.float64)
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        source = source.float()  # float64 -> float8 is not implemented; float32 holds every fp8 value exactly
    stored_tensor = source.to(dtype)
    n = 1 + e + m
    raw = int(stored_tensor.view(_BITS_AS_INT[n]).item()) & ((1 << n) - 1)
    bits = format(raw, f"0{n}b")
    stored = stored_tensor.to(torch.float64).item()
    info = torch.finfo(dtype)
    return FloatEncoding(
        format=name,
        sign=bits[0],
        exponent=bits[1 : 1 + e],
        fraction=bits[1 + e :],
        stored=stored,
        abs_error=abs(stored - value),
        max=float(info.max),
        smallest_normal=float(info.smallest_normal),
        eps=float(info.eps),
    )


@dataclass
class Int8Quantization:
    method: str  # "absmax" (symmetric) or "zeropoint" (asymmetric)
    scale: float
    zero_point: int
    quantized: list[int]
    dequantized: list[float]
    max_abs_error: float


def quantize_int8(values: list[float], method: str = "absmax") -> Int8Quantization:
    """int8 with one scale for the tensor: absmax maps [-max|x|, max|x|] to [-127, 127]; zero-point maps
    [min, max] to [-128, 127] with an integer offset, spending all 256 codes on an asymmetric range."""
    x = torch.tensor(values, dtype=torch.float64)
    if method == "absmax":
        peak = x.abs().max().item()
        scale = 127.0 / peak if peak > 0 else 1.0
        zero_point = 0
        q = torch.round(x * scale).clamp(-127, 127)
    elif method == "zeropoint":
        span = (x.max() - x.min()).item()
        scale = 255.0 / span if span > 0 else 1.0
        zero_point = int(-round(scale * x.min().item()) - 128)
        q = torch.clamp(torch.round(x * scale) + zero_point, -128, 127)
    else:
        raise LlmlabError(f"unknown int8 method {method!r}", "use absmax or zeropoint")
    dequantized = (q - zero_point) / scale
    return Int8Quantization(
        method=method,
        scale=scale,
        zero_point=zero_point,
        quantized=[int(v) for v in q.tolist()],
        dequantized=dequantized.tolist(),
        max_abs_error=float((dequantized - x).abs().max().item()),
    )
