"""The quantization settings and the small choices around the kernels, exactly: refusals word for word,
16-bit formats cast to the dtype they name (quantizing and loading), int8 layers keep their bias and
scheme, NF4 takes the largest block that fits (no kernel to prefer sizes for), int4's own refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from llmlab.model.quantize import (
    Int4Linear,
    Int8Linear,
    NF4Linear,
    QuantizationSpec,
    _quantized_layer,
    prepare_quantized_structure,
    quantize_model,
)
from tests.helpers import refusal, tiny_model


@pytest.mark.parametrize(
    ("spec", "what", "fix"),
    [
        (QuantizationSpec("int3"), "unknown format 'int3'", "use one of: fp16, bf16, int8, int4, nf4"),
        (QuantizationSpec("int8", scheme="minmax"), "unknown scheme 'minmax'", "use one of: absmax, zeropoint"),
        (
            QuantizationSpec("int4", group_size=48),
            "group size must be a power of two >= 2, got 48",
            "use 32, 64 or 128",
        ),
        (
            QuantizationSpec("int4", group_sizes={"decoder.blocks.0.mlp.up": 3}),
            "group size of decoder.blocks.0.mlp.up must be a power of two >= 2, got 3",
            "use 32, 64 or 128",
        ),
    ],
)
def test_settings_refusals_word_for_word(spec, what, fix):
    assert refusal(spec.validate) == (what, fix)


@pytest.mark.parametrize(("fmt", "dtype"), [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_sixteen_bit_formats_cast_to_the_dtype_they_name_when_quantizing_and_loading(fmt, dtype):
    model = quantize_model(tiny_model("llama", vocab_size=32), QuantizationSpec(fmt))
    assert {p.dtype for p in model.parameters()} == {dtype}
    empty = prepare_quantized_structure(tiny_model("llama", vocab_size=32), QuantizationSpec(fmt))
    assert {p.dtype for p in empty.parameters()} == {dtype}
    assert not any(isinstance(m, Int8Linear | Int4Linear | NF4Linear) for m in empty.modules())


def test_loading_structure_of_an_8_bit_checkpoint_is_bf16_around_empty_int8_layers():
    spec = QuantizationSpec("int8", scheme="zeropoint")
    model = prepare_quantized_structure(tiny_model("llama", vocab_size=32), spec)
    layers = [m for m in model.modules() if isinstance(m, Int8Linear)]
    assert layers and {m.scheme for m in layers} == {"zeropoint"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("empty", [True, False])
def test_an_int8_layer_keeps_its_bias_and_scheme(empty):
    linear = nn.Linear(8, 4, bias=True)
    layer = _quantized_layer(QuantizationSpec("int8", scheme="zeropoint"), "blocks.0.mlp.up", linear, empty=empty)
    assert isinstance(layer, Int8Linear) and layer.scheme == "zeropoint" and layer.bias is not None
    if not empty:
        assert torch.equal(layer.bias, linear.bias.detach())
    plain = _quantized_layer(QuantizationSpec("int8"), "blocks.0.mlp.up", nn.Linear(8, 4, bias=False), empty=empty)
    assert plain.bias is None and plain.scheme == "absmax"


def test_nf4_takes_the_largest_block_that_fits_where_int4_prefers_the_kernels_sizes():
    linear = nn.Linear(1024, 4)
    nf4 = QuantizationSpec("nf4", group_size=512)
    layer = _quantized_layer(nf4, "blocks.0.mlp.down", linear, empty=False)
    assert isinstance(layer, NF4Linear) and layer.block_size == 512 and nf4.group_sizes == {}
    int4 = QuantizationSpec("int4", group_size=512)
    assert _quantized_layer(int4, "blocks.0.mlp.down", linear, empty=False).group_size == 256  # the kernel's largest
    assert int4.group_sizes == {"blocks.0.mlp.down": 256}


def test_an_int4_layer_refuses_a_group_that_does_not_divide_it_word_for_word():
    assert refusal(lambda: Int4Linear(48, 4, bias=False, group_size=32)) == (
        "input width 48 is not a multiple of group size 32",
        "choose a group size that divides the layer width, or --skip the layer",
    )
    layer = Int4Linear(64, 4, bias=False, group_size=32)
    assert layer.bias is None and layer.scales.shape == (4, 2)
    assert Int4Linear(64, 4, bias=True, group_size=32).bias.shape == (4,)
    assert NF4Linear(128, 4, bias=False).block_size == 64


def test_int4_scales_and_zeros_take_the_weights_dtype():
    linear = nn.Linear(64, 4).bfloat16()
    layer = Int4Linear.from_linear(linear, 32)
    assert layer.scales.dtype == layer.zeros.dtype == torch.bfloat16
