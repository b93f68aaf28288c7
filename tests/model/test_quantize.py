import copy

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.cli import main
from llmlab.load import load_checkpoint
from llmlab.model.quantize import (
    Int4Linear,
    Int8Linear,
    NF4Linear,
    QuantizationSpec,
    pack_int4,
    quantize_groups_int4,
    quantize_model,
    quantize_rows_int8,
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
