"""int4 group sizes per layer: the default works on every preset, and loading rebuilds the same layers."""

import copy
import json
import warnings

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.config import PRESETS, ModelConfig
from llmlab.errors import LlmlabError
from llmlab.load import load_checkpoint
from llmlab.model import build_model
from llmlab.model.quantize import (
    Int4Linear,
    QuantizationSpec,
    int4_group_size,
    quantize_model,
    smaller_groups_note,
)
from tests.helpers import assert_one_line_error, run_cli


@pytest.mark.parametrize(
    "width,requested,expected",
    [(192, 128, 64), (256, 128, 128), (384, 128, 128), (96, 128, 32), (512, 512, 256), (48, 128, 16), (64, 16, 16)],
)
def test_the_largest_fitting_group_is_chosen(width, requested, expected):
    assert int4_group_size(width, requested) == expected


def test_an_odd_width_has_no_group():
    with pytest.raises(LlmlabError, match="input width 33"):
        int4_group_size(33, 128)


def test_groups_the_cpu_kernel_does_not_take_compute_by_dequantizing():
    torch.manual_seed(0)
    linear = torch.nn.Linear(48, 32)
    layer = Int4Linear.from_linear(linear, 16)
    x = torch.randn(3, 48)
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.dequantized(torch.float32), layer.bias))
    with torch.no_grad():
        error = (layer(x) - linear(x)).norm() / linear(x).norm()
    assert error < 0.1  # 4 bits per weight, 16 to a group: a few percent, not a different layer


def small(name: str, vocab_size: int):
    """The preset's widths with one block per stack, so every preset is quick to quantize."""
    layers = dict(n_layer=1, n_decoder_layer=1 if PRESETS[name].get("family") == "encoder-decoder" else None)
    torch.manual_seed(0)
    return build_model(ModelConfig.from_preset(name, vocab_size=vocab_size, block_size=64, **layers)).eval()


def logits(model, x):
    with torch.no_grad():
        return model(x, x) if model.config.family == "encoder-decoder" else model(x)


@pytest.mark.parametrize("name", PRESETS)
def test_int4_with_the_default_group_size_works_on_every_preset(name, tmp_path, char_tokenizer):
    model = small(name, char_tokenizer.vocab_size)
    spec = QuantizationSpec("int4")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = quantize_model(copy.deepcopy(model), spec)
    assert [str(w.message) for w in caught] == ([smaller_groups_note(spec)] if spec.group_sizes else [])
    layers = {n: m for n, m in quantized.named_modules() if isinstance(m, Int4Linear)}
    assert layers
    for layer_name, layer in layers.items():
        assert layer.group_size == int4_group_size(layer.in_features, 128), layer_name
        assert spec.group_sizes.get(layer_name, 128) == layer.group_size, layer_name
    assert (smaller_groups_note(spec) is None) == all(layer.group_size == 128 for layer in layers.values())
    save_checkpoint(tmp_path / "q", quantized, char_tokenizer, quantization=spec.to_dict())
    loaded = load_checkpoint(tmp_path / "q").model
    x = torch.randint(0, char_tokenizer.vocab_size, (2, 12))
    assert torch.equal(logits(loaded, x), logits(quantized, x))
    reference = logits(model, x)
    assert (logits(quantized, x).float() - reference).norm() / reference.norm() < 0.3


def test_smaller_groups_are_recorded_and_said(tmp_path, char_tokenizer):
    model = small("llama-micro", char_tokenizer.vocab_size)  # n_embd 192: 128 does not divide it
    spec = QuantizationSpec("int4", embeddings=True)
    with pytest.warns(UserWarning, match="int4 group size 128 does not fit every layer; smaller groups") as caught:
        quantize_model(model, spec)
    assert len(caught) == 1 and "64 for 4 layers (e.g. decoder.blocks.0.attn.qkv)" in str(caught[0].message)
    assert spec.group_sizes == {
        "decoder.blocks.0.attn.qkv": 64,
        "decoder.blocks.0.attn.proj": 64,
        "decoder.blocks.0.mlp.up": 64,
        "embed.table": 64,
    }
    assert model.decoder.blocks[0].mlp.down.group_size == 128  # 512 wide: the group asked for fits
    save_checkpoint(tmp_path / "q", model, char_tokenizer, quantization=spec.to_dict())
    recorded = json.loads((tmp_path / "q" / "config.json").read_text())["quantization"]
    assert recorded["group_size"] == 128 and recorded["group_sizes"] == spec.group_sizes
    loaded = load_checkpoint(tmp_path / "q").model
    assert loaded.embed.table.group_size == 64 and loaded.lm_head is loaded.embed.table


def test_checkpoints_without_per_layer_groups_still_load(tmp_path, char_tokenizer):
    """Written before group sizes were per layer: one group size for every layer."""
    model = small("llama-nano", char_tokenizer.vocab_size)
    spec = QuantizationSpec("int4", group_size=64)
    quantize_model(model, spec)
    old = {k: v for k, v in spec.to_dict().items() if k != "group_sizes"}
    save_checkpoint(tmp_path / "old", model, char_tokenizer, quantization=old)
    loaded = load_checkpoint(tmp_path / "old").model
    x = torch.randint(0, char_tokenizer.vocab_size, (1, 8))
    assert torch.equal(logits(loaded, x), logits(model, x))


def test_a_recorded_group_that_does_not_fit_is_one_error(tmp_path, char_tokenizer, capsys):
    model = small("llama-micro", char_tokenizer.vocab_size)
    spec = QuantizationSpec("int4")
    with pytest.warns(UserWarning):
        quantize_model(model, spec)
    path = save_checkpoint(tmp_path / "q", model, char_tokenizer, quantization=spec.to_dict())
    config = json.loads((path / "config.json").read_text())
    config["quantization"]["group_sizes"] = {}  # as if edited by hand: 128 everywhere, which 192 does not fit
    (path / "config.json").write_text(json.dumps(config))
    (path / "manifest.json").unlink()
    code, _, err = run_cli(capsys, "generate", path, "--prompt", "x")
    assert_one_line_error(code, err, str(path / "config.json"), "int4 group size 128 of decoder.blocks.0.attn.qkv")


def test_cli_quantizes_a_llama_micro_run_to_int4_with_the_defaults(tmp_path, char_tokenizer, capsys):
    """The model `make run` trains: n_embd 192, which the default group size 128 does not divide."""
    save_checkpoint(tmp_path / "full", small("llama-micro", char_tokenizer.vocab_size), char_tokenizer)
    code, out, err = run_cli(capsys, "quantize", tmp_path / "full", tmp_path / "int4", "--to", "int4")
    assert code == 0, err
    assert "warning: int4 group size 128 does not fit every layer" in err
    groups = json.loads((tmp_path / "int4" / "config.json").read_text())["quantization"]["group_sizes"]
    assert groups and set(groups.values()) == {64}
    code, out, err = run_cli(capsys, "generate", tmp_path / "int4", "--prompt", "def ", "--max-new-tokens", "3")
    assert code == 0, err
