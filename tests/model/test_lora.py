"""LoRA against its definition and against PEFT: zero B is the base, merged equals unmerged, the update
is s B A with s = alpha/r (alpha/sqrt(r) with rsLoRA), and an adapter exported to PEFT's format gives
transformers + PEFT the logits llmlab's model gives."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.hf.exporter import to_transformers
from llmlab.hf.peft import export_peft, import_peft
from llmlab.model.lora import LoRALinear, LoraSpec, add_lora, load_lora_state, lora_state, merge_lora, trainable_counts
from tests.helpers import tiny_model


def randomise_b(model: nn.Module, seed: int = 1) -> None:
    """Trained-looking adapters: B is zero at initialisation, which would hide every mistake."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_update_is_scaled_b_a_and_zero_b_is_the_base():
    torch.manual_seed(0)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=4, scaling=LoraSpec(4, 8.0).scaling, dropout=0.0)
    x = torch.randn(3, 16)
    assert torch.equal(layer(x), base(x))  # B starts at zero
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = base(x) + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)
    assert LoraSpec(16, 8.0, rslora=True).scaling == 8.0 / math.sqrt(16)


def test_the_update_s_own_backward_gives_autograd_s_gradients():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(16, 12), r=4, scaling=2.5).double()
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 3, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: layer(x), (x, layer.lora_A, layer.lora_B))
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), (x, layer.lora_A, layer.lora_B))
    plain = layer.base(x) + 2.5 * (x @ layer.lora_A.T @ layer.lora_B.T)  # autograd's own backward
    expected = torch.autograd.grad(plain.square().sum(), (x, layer.lora_A, layer.lora_B))
    torch.testing.assert_close(y, plain)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("style", ["llama", "gpt2", "t5"])
def test_merged_equals_unmerged(style):
    model = tiny_model(style)
    names = add_lora(model, LoraSpec(4, 8.0, targets=("all-linear",)))
    assert names and all(".blocks." in n for n in names)
    randomise_b(model)
    ids = torch.randint(0, 64, (2, 10))
    run = (lambda m: m(ids, ids)) if style == "t5" else (lambda m: m(ids))
    with torch.no_grad():
        before = run(model)
        merge_lora(model)
        after = run(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_only_adapters_train_and_counts_say_so():
    model = tiny_model("llama")
    total = sum(p.numel() for p in model.parameters())
    add_lora(model, LoraSpec(4, 8.0, targets=("attention",)))
    trainable, counted = trainable_counts(model)
    expected = sum((4 * m.in_features + m.out_features * 4) for m in model.modules() if isinstance(m, LoRALinear))
    assert trainable == expected and counted == total + expected
    assert {n.rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_unknown_targets_list_the_layers_that_exist():
    with pytest.raises(LlmlabError) as info:
        add_lora(tiny_model("llama"), LoraSpec(4, 8.0, targets=("q_proj",)))
    assert "attn.qkv" in info.value.fix and "mlp.down" in info.value.fix
    with pytest.raises(LlmlabError, match="--lora-r"):
        add_lora(tiny_model("llama"), LoraSpec(0, 8.0))


def test_state_round_trip_into_a_fresh_model():
    spec = LoraSpec(4, 8.0, targets=("mlp",))
    a, b = tiny_model("llama"), tiny_model("llama")
    add_lora(a, spec)
    randomise_b(a)
    add_lora(b, spec)
    load_lora_state(b, lora_state(a))
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("style", ["llama", "gpt2", "t5"])
@pytest.mark.parametrize("rslora", [False, True])
def test_exported_adapter_gives_peft_the_same_logits(tmp_path, style, rslora):
    peft = pytest.importorskip("peft")
    model = tiny_model(style)
    spec = LoraSpec(4, 8.0, targets=("all-linear",), rslora=rslora)
    base_hf = to_transformers(model)  # before the adapters: the plain base
    add_lora(model, spec)
    randomise_b(model)
    export_peft(model, spec, tmp_path / "adapter", "base")
    peft_model = peft.PeftModel.from_pretrained(base_hf, tmp_path / "adapter").eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        if style == "t5":
            ours, theirs = model(ids, ids), peft_model(input_ids=ids, decoder_input_ids=ids).logits
        else:
            ours, theirs = model(ids), peft_model(input_ids=ids).logits
    assert (ours - theirs).abs().max() < 1e-4


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["q_proj", "k_proj", "v_proj", "gate_proj", "down_proj"]])
def test_a_peft_adapter_imports_with_the_same_logits(tmp_path, targets):
    peft = pytest.importorskip("peft")
    model = tiny_model("llama")
    hf = to_transformers(model)
    torch.manual_seed(3)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    peft_model = peft.get_peft_model(hf, config).eval()  # random A and B: a trained adapter
    peft_model.save_pretrained(tmp_path / "peft")
    spec, tensors = import_peft(tmp_path / "peft", model.config)
    add_lora(model, spec)
    load_lora_state(model, tensors)
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert (model(ids) - peft_model(input_ids=ids).logits).abs().max() < 1e-4


def test_a_peft_adapter_for_another_base_is_one_error(tmp_path):
    peft = pytest.importorskip("peft")
    small, large = tiny_model("llama"), tiny_model("llama", n_embd=64)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft.get_peft_model(to_transformers(small), config).save_pretrained(tmp_path / "peft")
    with pytest.raises(LlmlabError, match="do not fit this base"):
        import_peft(tmp_path / "peft", large.config)


def test_disable_dropout_silences_attention_dropout_too():
    """A model trained with dropout gives the same log-probabilities twice in train mode once it is disabled."""
    from llmlab.model.surgery import disable_dropout

    model = tiny_model("gpt2", dropout=0.3).train()
    ids = torch.randint(0, 64, (2, 16))
    assert not torch.equal(model(ids), model(ids))
    disable_dropout(model)
    torch.testing.assert_close(model(ids), model(ids), rtol=0, atol=0)


def test_multi_lora_rows_each_get_their_own_adapter_or_the_base():
    """Two adapters of different ranks and scalings, one touching a layer the other leaves alone, in one batch:
    each row's logits equal the base with that adapter's s B A added to its layers (row -1: the base)."""
    import copy

    from llmlab.model.lora import add_multi_lora, select_adapters

    torch.manual_seed(0)
    base = tiny_model("llama", vocab_size=64).eval()
    linears = [n for n, m in base.named_modules() if isinstance(m, nn.Linear) and n != "lm_head"]
    g = torch.Generator().manual_seed(3)

    def adapter(names, r):
        out = {}
        for n in names:
            layer = base.get_submodule(n)
            out[f"{n}.lora_A"] = torch.randn(r, layer.in_features, generator=g) * 0.3
            out[f"{n}.lora_B"] = torch.randn(layer.out_features, r, generator=g) * 0.3
        return out

    adapters, scalings = [adapter(linears[:2], 2), adapter(linears[1:3], 4)], [0.5, 2.0]

    def merged(i):
        model = copy.deepcopy(base)
        with torch.no_grad():
            for key, a in adapters[i].items():
                if key.endswith(".lora_A"):
                    name = key.removesuffix(".lora_A")
                    model.get_submodule(name).weight += scalings[i] * adapters[i][f"{name}.lora_B"] @ a
        return model

    references = [merged(0), merged(1), base]
    served = copy.deepcopy(base)
    assert sorted(add_multi_lora(served, adapters, scalings)) == sorted(linears[:3])
    x = torch.randint(0, 64, (3, 7))
    select_adapters(served, torch.tensor([0, 1, -1]))
    with torch.no_grad():
        got = served(x)
        for row, reference in enumerate(references):
            torch.testing.assert_close(got[row], reference(x[row : row + 1])[0], atol=1e-5, rtol=1e-5)
        select_adapters(served, None)
        torch.testing.assert_close(served(x), base(x), atol=0, rtol=0)
    stranger = {"no.such.layer.lora_A": torch.zeros(2, 4), "no.such.layer.lora_B": torch.zeros(4, 2)}
    with pytest.raises(LlmlabError, match="^the adapters name layers this model does not have: no.such.layer — serve"):
        add_multi_lora(copy.deepcopy(base), [stranger], [1.0])


def test_lora_spec_round_trips_through_its_json_dict():
    spec = LoraSpec(r=4, alpha=8.0, dropout=0.1, targets=("attention", "mlp"), rslora=True)
    data = spec.to_dict()
    assert data == {"r": 4, "alpha": 8.0, "dropout": 0.1, "targets": ["attention", "mlp"], "rslora": True}
    assert LoraSpec.from_dict(data) == spec and spec.scaling == 8.0 / 2
    assert LoraSpec.from_dict({"r": "2", "alpha": 4, "targets": ["attention"]}) == LoraSpec(2, 4.0, 0.0, ("attention",))
