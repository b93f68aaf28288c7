"""LoRA's parts one by one, exactly: initialisation as PEFT draws it, dtypes that follow the base, dropout,
the disabled base, merging over plain, biased and quantized bases, state loading and its refusals, the
counts, the multi-adapter layer's shapes and dtypes, and every error message word for word."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmlab.model.lora import (
    LoRALinear,
    LoraSpec,
    MultiLoRALinear,
    add_lora,
    add_multi_lora,
    load_lora_state,
    lora_disabled,
    lora_state,
    merge_lora,
    target_names,
    trainable_counts,
)
from llmlab.model.quantize import Int8Linear
from tests.helpers import refusal, tiny_model


@pytest.mark.parametrize(
    ("spec", "what", "fix"),
    [
        (LoraSpec(r=0), "--lora-r must be at least 1, got 0", "use e.g. --lora-r 8"),
        (LoraSpec(alpha=0.0), "--lora-alpha must be positive, got 0.0", "use e.g. --lora-alpha 16 (2 x r)"),
        (LoraSpec(alpha=-1.0), "--lora-alpha must be positive, got -1.0", "use e.g. --lora-alpha 16 (2 x r)"),
        (LoraSpec(dropout=1.0), "--lora-dropout must be in [0, 1), got 1.0", "use e.g. 0.05"),
        (LoraSpec(dropout=-0.1), "--lora-dropout must be in [0, 1), got -0.1", "use e.g. 0.05"),
        (LoraSpec(targets=()), "--lora-targets is empty", "use one of attention, qv, mlp, all-linear or layer names"),
    ],
)
def test_spec_refusals_word_for_word(spec, what, fix):
    assert refusal(spec.validate) == (what, fix)


def test_spec_boundaries_that_are_valid():
    for spec in (LoraSpec(r=1), LoraSpec(alpha=0.5), LoraSpec(dropout=0.0), LoraSpec(dropout=0.999)):
        spec.validate()
    assert LoraSpec.from_dict({"r": 2, "alpha": 4, "targets": ["mlp"]}) == LoraSpec(2, 4.0, 0.0, ("mlp",), False)


def test_a_is_drawn_as_peft_draws_it_and_b_starts_at_zero():
    base = nn.Linear(40, 24)
    torch.manual_seed(3)
    layer = LoRALinear(base, r=6, scaling=2.0)
    torch.manual_seed(3)
    expected = torch.empty(6, 40)
    nn.init.kaiming_uniform_(expected, a=math.sqrt(5))  # PEFT's reset_lora_parameters
    assert torch.equal(layer.lora_A, expected)
    assert torch.equal(layer.lora_B, torch.zeros(24, 6)) and layer.r == 6
    assert all(not p.requires_grad for p in base.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


def test_adapters_take_a_linear_base_dtype_and_fp32_on_a_quantized_base():
    bf16 = LoRALinear(nn.Linear(8, 4, dtype=torch.bfloat16), r=2, scaling=1.0)
    assert bf16.lora_A.dtype == bf16.lora_B.dtype == torch.bfloat16
    quantized = LoRALinear(Int8Linear.from_linear(nn.Linear(8, 4), "absmax"), r=2, scaling=1.0)
    assert quantized.lora_A.dtype == quantized.lora_B.dtype == torch.float32


def test_dropout_applies_to_the_adapter_input_only_when_asked():
    assert isinstance(LoRALinear(nn.Linear(8, 4), r=2, scaling=1.0).dropout, nn.Identity)
    layer = LoRALinear(nn.Linear(8, 4), r=2, scaling=1.0, dropout=0.5)
    assert isinstance(layer.dropout, nn.Dropout) and layer.dropout.p == 0.5


def test_fp32_adapters_on_bf16_activations_give_bf16():
    layer = LoRALinear(nn.Linear(8, 4).bfloat16(), r=2, scaling=1.0)
    layer.lora_A.data, layer.lora_B.data = layer.lora_A.data.float(), torch.randn(4, 2)
    x = torch.randn(3, 8, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    expected = layer.base(x) + (x.float() @ layer.lora_A.T @ layer.lora_B.T).bfloat16()
    torch.testing.assert_close(y, expected, rtol=0.02, atol=0.02)


def test_disabled_adapters_give_the_base_and_come_back():
    model = tiny_model("llama", vocab_size=32)
    add_lora(model, LoraSpec(2, 4.0, targets=("all-linear",)))
    for layer in (m for m in model.modules() if isinstance(m, LoRALinear)):
        layer.lora_B.data.normal_()
    x = torch.randint(0, 32, (2, 6))
    with torch.no_grad():
        adapted = model(x)
        with lora_disabled(model):
            alone = model(x)
        again = model(x)
    merged_away = tiny_model("llama", vocab_size=32)
    merged_away.load_state_dict(
        {k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    )
    with torch.no_grad():
        assert torch.equal(alone, merged_away(x))
    assert not torch.equal(adapted, alone) and torch.equal(again, adapted)


def test_merged_keeps_the_bias_dtype_and_dequantizes_a_quantized_base():
    base = nn.Linear(8, 4, bias=True).bfloat16()
    layer = LoRALinear(base, r=2, scaling=3.0)
    layer.lora_B.data.normal_()
    merged = layer.merged()
    assert merged.weight.dtype == torch.bfloat16 and torch.equal(merged.bias, base.bias)
    expected = (base.weight.float() + 3.0 * layer.lora_B.float() @ layer.lora_A.float()).bfloat16()
    assert torch.equal(merged.weight, expected)
    quantized = Int8Linear.from_linear(nn.Linear(8, 4, bias=True), "absmax")
    q_layer = LoRALinear(quantized, r=2, scaling=1.0)
    q_layer.lora_B.data.normal_()
    q_merged = q_layer.merged()
    torch.testing.assert_close(q_merged.weight, quantized.dequantized(torch.float32) + q_layer.delta_weight())
    assert torch.equal(q_merged.bias, quantized.bias) and q_merged.weight.dtype == torch.float32
    q_layer.lora_A.data, q_layer.lora_B.data = q_layer.lora_A.data.bfloat16(), q_layer.lora_B.data.bfloat16()
    assert q_layer.merged().weight.dtype == torch.bfloat16  # a quantized base merges at the adapters' dtype


def test_merge_lora_names_every_place_and_a_top_level_adapter():
    model = tiny_model("llama", vocab_size=32)
    names = add_lora(model, LoraSpec(2, 4.0, targets=("mlp",)))
    assert merge_lora(model) == names and not any(isinstance(m, LoRALinear) for m in model.modules())
    top = nn.Sequential(LoRALinear(nn.Linear(4, 4), r=1, scaling=1.0))
    assert merge_lora(top) == ["0"] and isinstance(top[0], nn.Linear)


def test_target_names_are_the_kinds_inside_the_blocks():
    model = tiny_model("llama", vocab_size=32, tie_embeddings=False)
    assert target_names(model) == ["attn.proj", "attn.qkv", "mlp.down", "mlp.up"]


def test_unknown_targets_and_an_adapted_model_are_refused_word_for_word():
    model = tiny_model("llama", vocab_size=32)
    what, fix = refusal(lambda: add_lora(model, LoraSpec(targets=("q_proj",))))
    assert what == "--lora-targets 'q_proj' matches no linear layer of this model"
    assert fix == "use a group (attention, qv, mlp, all-linear) or layer names: attn.proj, attn.qkv, mlp.down, mlp.up"
    add_lora(model, LoraSpec(2, 4.0, targets=("attention",)))
    what, fix = refusal(lambda: add_lora(model, LoraSpec(2, 4.0, targets=("qv", "attention"))))
    assert (what, fix) == ("--lora-targets qv,attention selected no layer", "use --lora-targets all-linear")


def test_adapter_dropout_is_what_the_spec_says():
    model = tiny_model("llama", vocab_size=32)
    add_lora(model, LoraSpec(2, 4.0, dropout=0.25, targets=("mlp",)))
    assert {m.dropout.p for m in model.modules() if isinstance(m, LoRALinear)} == {0.25}


def _adapted(rank: int = 2, targets=("attention",)):
    model = tiny_model("llama", vocab_size=32)
    add_lora(model, LoraSpec(rank, 4.0, targets=targets))
    return model


def test_loading_a_state_with_missing_or_extra_layers_is_refused_word_for_word():
    state = lora_state(_adapted(targets=("all-linear",)))
    model = _adapted(targets=("mlp",))  # has mlp.up and mlp.down only
    what, fix = refusal(lambda: load_lora_state(model, state))
    extra = sorted(set(state) - set(lora_state(model)))
    assert what == f"the adapter's layers do not fit this model (missing [], unexpected {extra[:2]})"
    assert fix == "load it on the base model and with the --lora-targets it was trained with"
    partial = {k: v for k, v in lora_state(model).items() if ".mlp.up." not in k}
    missing = sorted(set(lora_state(model)) - set(partial))
    what, _ = refusal(lambda: load_lora_state(model, partial))
    assert (
        len(missing) > 2
        and what == f"the adapter's layers do not fit this model (missing {missing[:2]}, unexpected [])"
    )


@pytest.mark.parametrize("bad", ["in", "out", "rank"])
def test_a_tensor_of_the_wrong_shape_is_refused_word_for_word(bad):
    model = _adapted()
    state = {k: v.clone() for k, v in lora_state(model).items()}
    name = "decoder.blocks.0.attn.qkv"
    a, b = state[f"{name}.lora_A"], state[f"{name}.lora_B"]
    if bad == "in":
        state[f"{name}.lora_A"] = torch.zeros(a.shape[0], a.shape[1] + 1)
    elif bad == "out":
        state[f"{name}.lora_B"] = torch.zeros(b.shape[0] + 1, b.shape[1])
    else:
        state[f"{name}.lora_A"] = torch.zeros(a.shape[0] + 1, a.shape[1])
    layer = dict(model.named_modules())[name]
    shapes = f"{tuple(state[f'{name}.lora_B'].shape)} x {tuple(state[f'{name}.lora_A'].shape)}"
    assert refusal(lambda: load_lora_state(model, state)) == (
        f"the adapter's {name} is {shapes}, not for a {layer.out_features} x {layer.in_features} layer",
        "put the adapter on the base it was trained for",
    )


def test_another_rank_loads_at_the_model_dtype_and_keeps_it_frozen_or_trainable():
    source = _adapted(rank=4)
    for p in source.parameters():
        p.data.normal_()
    state = {k: v.double() for k, v in lora_state(source).items()}
    target = _adapted(rank=2)
    for layer in (m for m in target.modules() if isinstance(m, LoRALinear)):
        layer.lora_B.requires_grad_(False)
    load_lora_state(target, state)
    layer = dict(target.named_modules())["decoder.blocks.0.attn.qkv"]
    assert layer.r == 4 and layer.lora_A.dtype == torch.float32
    assert layer.lora_A.requires_grad and not layer.lora_B.requires_grad
    assert torch.equal(layer.lora_A, state["decoder.blocks.0.attn.qkv.lora_A"].float())


def test_counts_include_a_quantized_base_weights():
    model = nn.Sequential(nn.Linear(8, 4), Int8Linear.from_linear(nn.Linear(6, 5), "absmax"))
    add_lora(model, LoraSpec(2, 4.0, targets=("0",)))
    trainable, total = trainable_counts(model)
    assert trainable == 2 * 8 + 4 * 2
    assert total == (8 * 4 + 4) + trainable + 6 * 5  # the int8 weight has no parameters: counted by shape


def test_multi_lora_buffers_take_the_base_dtype_and_the_largest_rank():
    base = nn.Linear(6, 5).bfloat16()
    adapters = [(torch.randn(2, 6), torch.randn(5, 2), 0.5), None, (torch.randn(3, 6), torch.randn(5, 3), 2.0)]
    layer = MultiLoRALinear(base, adapters)
    assert layer.lora_A.shape == (3, 3, 6) and layer.lora_B.shape == (3, 5, 3)
    assert layer.lora_A.dtype == layer.lora_B.dtype == layer.scales.dtype == torch.bfloat16
    assert layer.scales.tolist() == [0.5, 0.0, 2.0, 0.0] and layer.rows is None
    empty = MultiLoRALinear(nn.Linear(6, 5), [None])
    assert empty.lora_A.shape == (1, 1, 6) and empty.lora_B.shape == (1, 5, 1)
    x = torch.randn(3, 4, 6, dtype=torch.bfloat16)
    assert torch.equal(layer(x), base(x))  # no rows chosen: the base
    layer.rows = torch.tensor([2, -1, 0])
    y = layer(x)
    assert y.dtype == torch.bfloat16
    a, b, s = adapters[2]
    torch.testing.assert_close(y[0], base(x[0]) + (s * (x[0].float() @ a.T @ b.T)).bfloat16(), rtol=0.03, atol=0.05)
    assert torch.equal(y[1], base(x[1]))


def test_multi_lora_refuses_layers_the_model_lacks_word_for_word():
    model = tiny_model("llama", vocab_size=32)
    names = [f"decoder.blocks.{i}.attn.nothing{j}" for i in range(2) for j in range(2)]
    adapter = {f"{n}.{part}": torch.zeros(1, 1) for n in names for part in ("lora_A", "lora_B")}
    what, fix = refusal(lambda: add_multi_lora(model, [adapter], [1.0]))
    assert what == f"the adapters name layers this model does not have: {', '.join(sorted(names)[:3])}"
    assert fix == "serve adapters trained on this base"


def test_a_plain_base_merges_at_its_own_dtype_whatever_the_adapters():
    layer = LoRALinear(nn.Linear(8, 4), r=2, scaling=1.0)
    layer.lora_A.data, layer.lora_B.data = layer.lora_A.data.bfloat16(), torch.randn(4, 2).bfloat16()
    merged = layer.merged()
    assert merged.weight.dtype == torch.float32
    torch.testing.assert_close(merged.weight, layer.base.weight + layer.delta_weight())
