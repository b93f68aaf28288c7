import copy
import re
import statistics
import sys

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.cli import main
from llmlab.errors import LlmlabError
from llmlab.load import load_checkpoint
from llmlab.model import quantize
from llmlab.model.quantize import (
    NF4_OFFSET,
    Int4Linear,
    Int8Linear,
    NF4Linear,
    QuantizationSpec,
    QuantizedEmbedding,
    _int8_kernel,
    nf4_code_values,
    pack_int4,
    prepare_quantized_structure,
    quantize_blocks_nf4,
    quantize_groups_int4,
    quantize_model,
    quantize_rows_int8,
    smaller_groups_note,
    unpack_int4,
)
from tests.helpers import tiny_model


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_int8_error_is_at_most_half_a_step(scheme):
    torch.manual_seed(0)
    w = torch.randn(64, 96) * torch.rand(64, 1) * 3
    q, scale, zero = quantize_rows_int8(w, scheme)
    deq = (q.float() - (zero[:, None] if zero is not None else 0)) * scale[:, None]
    assert ((deq - w).abs() <= scale[:, None] / 2 + 1e-6).all()
    assert q.dtype == torch.int8


def test_int4_error_is_at_most_half_a_step_and_packing_is_lossless():
    torch.manual_seed(0)
    w = torch.randn(32, 128)
    q, scale, zero = quantize_groups_int4(w, 32)
    assert int(q.min()) >= 0 and int(q.max()) <= 15
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    deq = (q.float().reshape(32, 4, 32) - zero[..., None]) * scale[..., None]
    assert ((deq.reshape(32, 128) - w).abs() <= scale.repeat_interleave(32, dim=1) / 2 + 1e-6).all()


@pytest.mark.parametrize(
    "cls,args", [(Int8Linear, ("absmax",)), (Int8Linear, ("zeropoint",)), (Int4Linear, (32,)), (NF4Linear, (32,))]
)
def test_quantized_linear_computes_from_its_integer_weights(cls, args):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48)
    layer = cls.from_linear(linear, *args)
    x = torch.randn(5, 64)
    expected = torch.nn.functional.linear(x, layer.dequantized(torch.float32), layer.bias)
    torch.testing.assert_close(layer(x), expected, rtol=0.02, atol=0.02)  # fused kernels run in bf16
    assert not any(t.is_floating_point() and t.shape == linear.weight.shape for t in layer.state_dict().values())


@pytest.mark.parametrize(
    "fmt,tolerance", [("bf16", 0.03), ("fp16", 0.01), ("int8", 0.05), ("int4", 0.25), ("nf4", 0.25)]
)
def test_quantized_model_logits_stay_close(fmt, tolerance):
    model = tiny_model("llama", vocab_size=100, n_embd=64)
    x = torch.randint(0, 100, (2, 24))
    with torch.no_grad():
        reference = model(x)
        quantized = quantize_model(copy.deepcopy(model), QuantizationSpec(fmt, group_size=32))(x).float()
    relative = (quantized - reference).norm() / reference.norm()
    assert relative < tolerance, relative


def test_quantized_checkpoint_round_trips_bit_for_bit(tmp_path, char_tokenizer):
    model = tiny_model("gpt2", vocab_size=char_tokenizer.vocab_size, n_embd=64)
    spec = QuantizationSpec("int4", group_size=32, skip=["decoder.blocks.1.*"])
    quantized = quantize_model(model, spec)
    save_checkpoint(tmp_path / "q", quantized, char_tokenizer, quantization=spec.to_dict())
    loaded = load_checkpoint(tmp_path / "q").model
    for name, tensor in quantized.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert isinstance(loaded.decoder.blocks[0].mlp.up, Int4Linear)
    assert isinstance(loaded.decoder.blocks[1].mlp.up, torch.nn.Linear)  # skipped by pattern


def test_cli_quantize_then_generate(tmp_path, char_tokenizer, capsys):
    model = tiny_model("llama", vocab_size=char_tokenizer.vocab_size, n_embd=64)
    save_checkpoint(tmp_path / "full", model, char_tokenizer)
    assert main(["quantize", str(tmp_path / "full"), str(tmp_path / "int8"), "--to", "int8"]) == 0
    assert "smaller" in capsys.readouterr().out
    assert main(["generate", str(tmp_path / "int8"), "--prompt", "def ", "--max-new-tokens", "5"]) == 0
    assert main(["quantize", str(tmp_path / "int8"), str(tmp_path / "again"), "--to", "int4"]) == 2
    assert "already quantized" in capsys.readouterr().err


@pytest.mark.parametrize("fmt,tolerance", [("int8", 0.05), ("int4", 0.3), ("nf4", 0.3)])
@pytest.mark.parametrize("tie", [True, False])
def test_quantized_embeddings_and_head(tmp_path, char_tokenizer, fmt, tolerance, tie):
    model = tiny_model("llama", vocab_size=char_tokenizer.vocab_size, n_embd=64, tie_embeddings=tie)
    x = torch.randint(0, char_tokenizer.vocab_size, (2, 16))
    with torch.no_grad():
        reference = model(x)
    spec = QuantizationSpec(fmt, group_size=32, embeddings=True)
    quantized = quantize_model(copy.deepcopy(model), spec)
    assert (quantized.lm_head is quantized.embed.table) == tie  # a tied pair shares one table
    with torch.no_grad():
        out = quantized(x).float()
    assert (out - reference).norm() / reference.norm() < tolerance
    save_checkpoint(tmp_path / "q", quantized, char_tokenizer, quantization=spec.to_dict())
    loaded = load_checkpoint(tmp_path / "q").model
    with torch.no_grad():
        assert torch.equal(loaded(x), quantized(x))


@pytest.mark.parametrize("fmt", ["int8", "int4", "nf4"])
def test_quantized_head_decodes_batches(char_tokenizer, fmt):
    """Batched decoding hands the head a strided last-position slice; the fused kernels need it contiguous."""
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.model.quantize import QuantizationSpec, quantize_model

    model = tiny_model("llama", vocab_size=char_tokenizer.vocab_size + (-char_tokenizer.vocab_size % 16))
    quantize_model(model, QuantizationSpec(fmt, group_size=32, embeddings=True))
    out = Generator(model, char_tokenizer).generate(
        ["def ", "class Stack"], GenerationConfig(max_new_tokens=5, greedy=True)
    )
    assert [len(samples[0].token_ids) for samples in out] == [5, 5] or all(s[0].finish_reason == "eos" for s in out)


def test_quantization_scales_are_their_definitions():
    """int8 absmax: scale = max|w| / 127 per row; zero-point: (max - min) / 255; int4: (max - min) / 15 per group."""
    torch.manual_seed(0)
    w = torch.randn(6, 64)
    _, absmax, _ = quantize_rows_int8(w, "absmax")
    torch.testing.assert_close(absmax, w.abs().amax(dim=1) / 127)
    _, scale, zero = quantize_rows_int8(w, "zeropoint")
    torch.testing.assert_close(scale, (w.amax(dim=1) - w.amin(dim=1)) / 255)
    torch.testing.assert_close(zero, torch.round(-w.amin(dim=1) / scale) - 128)
    _, scale4, zero4 = quantize_groups_int4(w, 16)
    groups = w.reshape(6, 4, 16)
    torch.testing.assert_close(scale4, (groups.amax(dim=2) - groups.amin(dim=2)) / 15)
    torch.testing.assert_close(zero4, torch.round(-groups.amin(dim=2) / scale4))


# ---- found untested by mutation testing: fallbacks, buffers, dtypes, clamps, messages, the NF4 table ----


def test_int8_kernel_is_used_on_the_cpu_only():
    cpu, meta = torch.zeros(2, 64), torch.zeros(2, 64, device="meta")
    assert _int8_kernel(cpu) == hasattr(torch.ops.aten, "_weight_int8pack_mm")
    assert _int8_kernel(cpu)  # the PyTorch this project needs has the kernel
    assert not _int8_kernel(meta)  # any other device dequantizes


def int8_reference(layer: Int8Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x @ ((q - z) s)^T + b in fp32, from the layer's integer codes, zero points and scales."""
    q = layer.weight_int8.float()
    zeros = layer.zeros.float()[:, None] if layer.zeros is not None else 0
    w = (q - zeros) * layer.scales.float()[:, None]
    return x.float() @ w.T + (bias.float() if bias is not None else 0)


@pytest.mark.skipif(not quantize.kernels_ready(), reason="llmlab's kernels are built on x86 with a compiler")
@pytest.mark.parametrize(("rows", "outputs"), [(1, 48), (3, 48), (4, 48), (9, 48), (8, 50)])  # 50: not a multiple of 4
@pytest.mark.parametrize("width", [64, 100])  # 100: the last 4 inputs past the vector loop's 32 take the scalar path
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_llmlab_s_int8_kernel_is_the_dequantized_product_within_its_activation_rounding(scheme, width, rows, outputs):
    """Rows of x become 14-bit integers (scale: the row's largest |x| / 8191) multiplied by the int8 weights
    (a zero point is subtracted afterwards, exactly): each output may be off by at most half a step times the
    sum of |q| s along its row, and no more."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(width, outputs, bias=True)
    layer = Int8Linear.from_linear(linear, scheme)
    x = torch.randn(rows, width) * torch.linspace(0.1, 10.0, width)  # uneven magnitudes, as activations have
    with torch.no_grad():
        got = layer(x)
    reference = int8_reference(layer, x, linear.bias)
    w = layer.weight_int8.float() * layer.scales[:, None]
    step = x.abs().amax(dim=1, keepdim=True) / 8191
    bound = step / 2 * w.abs().sum(dim=1)[None, :] + 1e-4 * reference.abs() + 1e-5
    assert bool(((got - reference).abs() <= bound).all()), float(((got - reference).abs() / bound).max())
    assert float((got - reference).abs().max()) > 0  # it did run the integer kernel, not the float fallback
    assert layer(x.bfloat16()).dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_int8_fallback_computes_what_the_kernel_does(monkeypatch, scheme, bias, dtype):
    """Off the CPU (here: the kernel checks turned off) int8 layers dequantize to the input's dtype and call
    F.linear; PyTorch's int8 kernel (here: llmlab's turned off) computes the same in bf16."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48, bias=bias)
    layer = Int8Linear.from_linear(linear, scheme)
    x = torch.randn(2, 5, 64).to(dtype)
    monkeypatch.setattr(quantize, "kernels_ready", lambda: False)
    with torch.no_grad():
        kernel = layer(x)
        monkeypatch.setattr(quantize, "_int8_kernel", lambda x: False)
        fallback = layer(x)
    assert kernel.dtype == fallback.dtype == dtype and fallback.shape == (2, 5, 48)
    reference = int8_reference(layer, x, linear.bias)
    tolerance = 1e-5 if dtype == torch.float32 else 0.03
    torch.testing.assert_close(fallback.float(), reference, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(fallback.float(), kernel.float(), rtol=0.03, atol=0.03)  # the kernel runs in bf16


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_int8_state_dict_loads_into_a_new_layer(scheme, bias):
    """A new Int8Linear has exactly the buffers from_linear fills: zero points only for the zero-point
    scheme, a bias only with one (what loading a quantized checkpoint relies on)."""
    torch.manual_seed(0)
    layer = Int8Linear.from_linear(torch.nn.Linear(64, 48, bias=bias), scheme)
    state = layer.state_dict()
    expected = (
        {"weight_int8", "scales"} | ({"zeros"} if scheme == "zeropoint" else set()) | ({"bias"} if bias else set())
    )
    assert set(state) == expected
    fresh = Int8Linear(64, 48, bias, scheme)
    assert set(fresh.state_dict()) == expected
    fresh.load_state_dict(state)  # strict
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_int8_from_a_bf16_linear_keeps_its_dtype_scheme_and_bias(scheme):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 48).to(torch.bfloat16)
    layer = Int8Linear.from_linear(linear, scheme)
    assert layer.scheme == scheme and layer.scales.dtype == torch.bfloat16
    w = linear.weight.detach().float()
    if scheme == "absmax":
        assert layer.zeros is None
        assert torch.equal(layer.scales, (w.abs().amax(dim=1) / 127).to(torch.bfloat16))
    else:
        scale = (w.amax(dim=1) - w.amin(dim=1)) / 255
        assert torch.equal(layer.scales, scale.to(torch.bfloat16))
        assert layer.zeros.dtype == torch.bfloat16
        assert torch.equal(layer.zeros, (torch.round(-w.amin(dim=1) / scale) - 128).to(torch.bfloat16))
    assert layer.bias.dtype == torch.bfloat16 and torch.equal(layer.bias, linear.bias.detach())


@pytest.mark.parametrize("scheme", ["absmax", "zeropoint"])
def test_int8_layer_weights_are_within_half_a_step_of_the_linears(scheme):
    torch.manual_seed(0)
    linear = torch.nn.Linear(96, 32)
    layer = Int8Linear.from_linear(linear, scheme)
    error = (layer.dequantized(torch.float32) - linear.weight.detach()).abs()
    assert (error <= layer.scales[:, None] / 2 + 1e-6).all()
    x = torch.randn(4, 96)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), linear(x), rtol=0.05, atol=0.05)  # the bias too


def test_int8_codes_span_the_range_of_their_scheme():
    """absmax: symmetric, -127..127 (-128 never used); zero-point: the row's min and max map to -128 and 127."""
    w = torch.tensor([[-2.0, -1.0, 0.0, 0.5, 2.0], [1.0, 0.25, -0.5, 0.0, -1.0]])
    q, _, _ = quantize_rows_int8(w, "absmax")
    assert q[:, 0].tolist() == [-127, 127] and q[:, -1].tolist() == [127, -127] and int(q.min()) == -127
    assert q[0].tolist() == [-127, -64, 0, 32, 127]  # -1 / (2 / 127) = -63.5 rounds to even
    q, _, _ = quantize_rows_int8(torch.tensor([[-1.0, 0.0, 3.0], [5.0, 2.0, 4.0]]), "zeropoint")
    assert q.amin(dim=1).tolist() == [-128, -128] and q.amax(dim=1).tolist() == [127, 127]


def test_codes_that_round_past_the_range_are_clamped_not_wrapped():
    """The zero point and the codes are rounded separately, so a row's extremes can round one step past the
    range: [-127.5, 0, 127.5] has scale 1, zero round(127.5) - 128 = 0 and 127.5 -> 128, which must become 127
    (in int8, 128 would wrap to -128). Far from zero relative to its spread (min / scale > 2^24) the float32
    zero point is inexact and the smallest weight lands at -256: clamped to -128, still below the largest's
    code. int4: [-7.5, 0, 1, 7.5] has scale 1, zero round(7.5) = 8, and 7.5 -> 16 is clamped to 15."""
    rows = torch.tensor([[-127.5, 0.0, 127.5], [10000.0, 10000.0, 10000.0 + 2**-10]])
    q, _, _ = quantize_rows_int8(rows, "zeropoint")
    assert q[0].tolist() == [-128, 0, 127]
    assert q[1, 0] == -128 and q[1, 0] < q[1, 2]
    q4, scale4, zero4 = quantize_groups_int4(torch.tensor([[-7.5, 0.0, 1.0, 7.5]]), 4)
    assert (scale4.item(), zero4.item()) == (1.0, 8.0) and q4.tolist() == [[0, 8, 9, 15]]


@pytest.mark.parametrize(
    "cls,args", [(Int8Linear, ("absmax",)), (Int8Linear, ("zeropoint",)), (Int4Linear, (16,)), (NF4Linear, (16,))]
)
def test_dequantized_weights_come_in_the_dtype_asked_for(cls, args):
    """An fp32 layer dequantized to bf16 gives bf16 (F.linear with a bf16 input needs it), the same values rounded."""
    torch.manual_seed(0)
    layer = cls.from_linear(torch.nn.Linear(64, 24), *args)
    full = layer.dequantized(torch.float32)
    half = layer.dequantized(torch.bfloat16)
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full, rtol=0.01, atol=1e-6)
    x = torch.randn(3, 64, dtype=torch.bfloat16)
    with torch.no_grad():  # group 16, 24 outputs: int4 takes the dequantizing path too
        y = layer(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), x.float() @ full.T + layer.bias, rtol=0.03, atol=0.03)


def nf4_layer() -> NF4Linear:
    torch.manual_seed(0)
    return NF4Linear.from_linear(torch.nn.Linear(64, 24), 16)


def test_nf4_training_in_bf16_matches_autograd_through_the_dequantized_weight():
    layer = nf4_layer()
    w = layer.dequantized(torch.float32).to(torch.bfloat16)
    x = torch.randn(3, 64, dtype=torch.bfloat16, requires_grad=True)
    reference = x.detach().clone().requires_grad_()
    y = layer(x)
    expected = torch.nn.functional.linear(reference, w) + layer.bias.to(torch.bfloat16)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)
    upstream = torch.randn(3, 24, dtype=torch.bfloat16)
    y.backward(upstream)
    expected.backward(upstream)
    assert x.grad.dtype == torch.bfloat16
    torch.testing.assert_close(x.grad, reference.grad)


def test_nf4_training_under_autocast_computes_in_the_autocast_dtype():
    layer = nf4_layer()
    x = torch.randn(3, 64, requires_grad=True)
    reference = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        product = torch.nn.functional.linear(reference, layer.dequantized(torch.float32))  # autocast: bf16
        expected = product + layer.bias.to(torch.bfloat16)
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y, expected)
    upstream = torch.randn(3, 24)
    y.float().backward(upstream)
    expected.float().backward(upstream)
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(x.grad, reference.grad, rtol=0.01, atol=0.01)


def test_nf4_casts_keep_codes_and_fp32_absmax_even_one_loaded_in_another_dtype():
    layer = nf4_layer()
    codes, absmax = layer.weight_nf4.clone(), layer.absmax.clone()
    for dtype in (torch.bfloat16, torch.float16, torch.float64, torch.float32):
        layer.to(dtype)
        assert torch.equal(layer.weight_nf4, codes) and torch.equal(layer.absmax, absmax)
        assert layer.absmax.dtype == torch.float32 and layer.bias.dtype == dtype
    state = {**layer.state_dict(), "absmax": absmax.to(torch.float16)}
    layer.load_state_dict(state, assign=True)  # takes the tensor as it is: fp16
    assert layer.absmax.dtype == torch.float16
    layer.to(torch.bfloat16)
    assert layer.absmax.dtype == torch.float32 and torch.equal(layer.absmax, absmax.half().float())


@pytest.mark.parametrize(
    "cls,args", [(Int8Linear, ("absmax",)), (Int8Linear, ("zeropoint",)), (Int4Linear, (16,)), (NF4Linear, (16,))]
)
def test_quantized_embedding_rows_are_the_dequantized_table_rows(cls, args):
    """The embedding reads row idx of the table's dequantized weight, in bf16, whatever the table's scale dtype."""
    torch.manual_seed(0)
    table = cls.from_linear(torch.nn.Linear(32, 10, bias=False), *args)  # fp32 scales (not cast yet)
    idx = torch.tensor([[3, 0, 7], [7, 9, 2]])
    rows = QuantizedEmbedding(table)(idx)
    assert rows.dtype == torch.bfloat16 and rows.shape == (2, 3, 32)
    torch.testing.assert_close(rows.float(), table.dequantized(torch.float32)[idx], rtol=0.01, atol=1e-6)


def test_embeddings_of_a_model_that_is_not_causal_are_refused():
    model = tiny_model("bert", vocab_size=64)
    with pytest.raises(LlmlabError) as error:
        quantize_model(model, QuantizationSpec("int8", embeddings=True))
    assert error.value.what == "quantizing the embeddings of encoder models is not supported"
    assert error.value.fix.startswith("leave out --embeddings")


def test_an_untied_head_gets_its_own_group_size_recorded_under_its_name():
    """n_embd 96: blocks of 64 do not fit the embedding or the head, both get 32 under their own names,
    and an empty structure built from the spec takes the same tensors."""
    model = tiny_model("llama", vocab_size=64, n_embd=96, tie_embeddings=False)
    spec = QuantizationSpec("nf4", embeddings=True)
    with pytest.warns(UserWarning, match="smaller groups"):
        quantized = quantize_model(copy.deepcopy(model), spec)
    assert spec.group_sizes["lm_head"] == 32 and spec.group_sizes["embed.table"] == 32
    assert quantized.lm_head.block_size == 32 and quantized.lm_head is not quantized.embed.table
    empty = prepare_quantized_structure(tiny_model("llama", vocab_size=64, n_embd=96, tie_embeddings=False), spec)
    empty.load_state_dict(quantized.state_dict())  # strict: the same layers and shapes


@pytest.mark.parametrize("fmt", ["int8", "nf4"])
def test_the_empty_structure_draws_no_random_weights(fmt):
    """Layers to load into are built empty (the embedding's table and the head from meta tensors): nothing
    full-size is allocated and initialized, so the RNG is left as it was."""
    model = tiny_model("llama", vocab_size=64, tie_embeddings=False)
    state = torch.get_rng_state()
    prepare_quantized_structure(model, QuantizationSpec(fmt, group_size=32, embeddings=True))
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(model.embed, QuantizedEmbedding) and model.lm_head is not model.embed.table


def test_the_nf4_table_is_its_definition_to_float32_rounding():
    """The quantiles from the standard library's inverse normal CDF (float64), scaled to [-1, 1], then rounded
    once to float32: the table agrees to one float32 step (probabilities rounded to float32 move it by 2 to 4)."""
    normal = statistics.NormalDist()

    def quantiles(n: int) -> list[float]:
        return [normal.inv_cdf(NF4_OFFSET + (0.5 - NF4_OFFSET) * i / (n - 1)) for i in range(n - 1)]

    values = sorted([-v for v in quantiles(8)] + [0.0] + quantiles(9))
    expected = torch.tensor(values, dtype=torch.float64) / max(abs(v) for v in values)
    derived = nf4_code_values()
    assert derived.dtype == torch.float32
    steps = (derived.double() - expected).abs() / torch.finfo(torch.float32).eps / expected.abs().clamp(min=2**-23)
    assert steps.max() <= 1, steps


def test_group_and_block_sizes_that_do_not_divide_the_width_are_refused():
    with pytest.raises(LlmlabError) as error:
        quantize_groups_int4(torch.zeros(2, 12), 8)
    assert error.value.what == "input width 12 is not a multiple of group size 8"
    assert error.value.fix.startswith("choose a group size that divides the layer width")
    with pytest.raises(LlmlabError) as error:
        quantize_blocks_nf4(torch.zeros(2, 12), 8)
    assert error.value.what == "input width 12 is not a multiple of block size 8"
    assert error.value.fix.startswith("choose a block size that divides the layer width")
    for width, block in [(96, 64), (48, 24)]:  # 64 does not divide 96; 24 divides 48 but is no power of two
        with pytest.raises(LlmlabError) as error:
            NF4Linear(width, 8, False, block)
        assert error.value.what == f"input width {width} is not a multiple of block size {block}"
        assert error.value.fix.startswith("choose a power-of-two block size")


def test_nf4_codes_are_bytes_and_absmax_is_fp32_whatever_the_default_dtype():
    q, absmax = quantize_blocks_nf4(torch.randn(4, 32), 16)
    assert q.dtype == torch.uint8 and absmax.dtype == torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        layer = NF4Linear(32, 4, True, 16)
    finally:
        torch.set_default_dtype(default)
    assert layer.absmax.dtype == torch.float32 and layer.bias.dtype == torch.float64


@pytest.mark.parametrize("bias", [True, False])
def test_nf4_state_dict_loads_into_a_new_layer(bias):
    torch.manual_seed(0)
    layer = NF4Linear.from_linear(torch.nn.Linear(64, 24, bias=bias), 16)
    state = layer.state_dict()
    assert set(state) == {"weight_nf4", "absmax"} | ({"bias"} if bias else set())
    fresh = NF4Linear(64, 24, bias, 16)
    fresh.load_state_dict(state)  # strict
    x = torch.randn(3, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), layer(x))


def test_int4_kernel_operands_are_built_once_and_again_when_the_weights_change():
    torch.manual_seed(0)
    layer = Int4Linear.from_linear(torch.nn.Linear(64, 48), 32)  # 48 outputs, groups of 32: the CPU kernel
    x = torch.randn(3, 64)
    with torch.no_grad():
        before = layer(x)
        weight, scales = layer._kernel_weight, layer._kernel_scales
        layer(x)
        assert layer._kernel_weight is weight and layer._kernel_scales is scales  # kept, not rebuilt
        layer.scales.mul_(2)
        after = layer(x)
    assert layer._kernel_scales is not scales
    torch.testing.assert_close(after - layer.bias, 2 * (before - layer.bias), rtol=0.02, atol=0.02)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int4_widths_the_kernel_cannot_take_dequantize(dtype):
    """The CPU kernel needs the output width to be a multiple of 16: 34 outputs are computed by dequantizing."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 34)
    layer = Int4Linear.from_linear(linear, 32)
    x = torch.randn(3, 64).to(dtype)
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == dtype
    expected = x.float() @ layer.dequantized(torch.float32).T + linear.bias.detach()
    tolerance = 1e-5 if dtype == torch.float32 else 0.03
    torch.testing.assert_close(y.float(), expected, rtol=tolerance, atol=tolerance)


def test_an_empty_structure_refuses_a_recorded_group_that_does_not_fit():
    """config.json must record the group of each layer that got a smaller one: without it, the default group
    of 64 does not divide a 96-wide layer, and loading says to re-quantize rather than guess."""
    spec = QuantizationSpec("nf4", embeddings=True)
    with pytest.raises(LlmlabError) as error:
        prepare_quantized_structure(tiny_model("llama", vocab_size=64, n_embd=96), spec)
    assert re.fullmatch(r"nf4 group size 64 of \S+ does not divide its width 96", error.value.what)
    assert error.value.fix == "re-quantize the full-precision checkpoint"


def test_a_layer_no_group_fits_is_named_and_the_fix_kept():
    spec = QuantizationSpec("int4")
    with pytest.raises(LlmlabError) as error:
        quantize._quantized_layer(spec, "blocks.0.odd", torch.nn.Linear(33, 8), empty=False)
    assert error.value.what == "blocks.0.odd: input width 33 is not a multiple of any group size from 128 down to 2"
    assert error.value.fix.startswith("--skip the layer")


def test_the_smaller_groups_note_lists_each_size_largest_first():
    spec = QuantizationSpec("int4", group_size=128, group_sizes={"a.up": 32, "b.qkv": 64, "c.up": 32})
    assert smaller_groups_note(spec) == (
        "int4 group size 128 does not fit every layer; smaller groups, kept in config.json: "
        "64 for 1 layer (e.g. b.qkv), 32 for 2 layers (e.g. a.up)"
    )


def test_the_smaller_groups_warning_points_at_the_caller_of_quantize_model():
    model = tiny_model("llama", vocab_size=64, n_embd=96)
    with pytest.warns(UserWarning, match="smaller groups") as record:
        quantize_model(model, QuantizationSpec("nf4"))
    caller = __file__
    if "mutmut.mutation.trampoline" in sys.modules:  # under mutation testing a trampoline calls quantize_model
        caller = sys.modules["mutmut.mutation.trampoline"].__file__
    assert [w.filename for w in record] == [caller]  # stacklevel 2: the caller, not quantize.py
