"""Model surgery: one walk that replaces linear layers, used by quantization and CPU packing."""

import pytest
import torch
from torch import nn

from llmlab.model.cpu_packing import PackedLinear, can_pack, packed_for_inference
from llmlab.model.quantize import in_blocks as in_blocks_from_quantize
from llmlab.model.surgery import (
    every_linear,
    find_linears,
    in_blocks,
    linears_in_blocks,
    replace_linears,
)
from tests.helpers import tiny_model


class Doubled(nn.Module):
    """A stand-in that wraps its layer, as an adapter does."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.base(x)


def test_in_blocks_selects_the_blocks_of_every_family():
    assert in_blocks("decoder.blocks.0.attn.qkv") and in_blocks("encoder.blocks.3.mlp.up")
    assert in_blocks("blocks.0.mlp.up")  # pre-Stack names
    assert not in_blocks("lm_head") and not in_blocks("embed") and not in_blocks("mlm_head.dense")
    assert not in_blocks("decoder.blocks_extra.0")
    assert in_blocks_from_quantize is in_blocks  # still importable from model.quantize


def test_replace_linears_replaces_the_selected_layers_and_names_them():
    model = tiny_model("llama")
    expected = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and in_blocks(n)]
    names = replace_linears(model, linears_in_blocks, lambda name, linear: Doubled(linear))
    assert names == expected and names
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], Doubled) for n in names)
    assert isinstance(model.lm_head, nn.Linear)  # not selected
    assert find_linears(model, linears_in_blocks) == [
        (modules[n], "base", f"{n}.base", modules[n].base) for n in names
    ]  # the wrapped layers are still there, below their wrappers, and were not replaced again


def test_the_factory_sees_names_and_layers_and_the_selector_can_use_both():
    model = tiny_model("gpt2")
    seen = []

    def make(name, linear):
        seen.append((name, linear.in_features, linear.out_features))
        return nn.Identity()

    names = replace_linears(model, lambda name, linear: name.endswith("mlp.up") and linear.in_features == 32, make)
    assert names == ["decoder.blocks.0.mlp.up", "decoder.blocks.1.mlp.up"]
    assert seen == [(n, 32, 128) for n in names]


def test_a_shared_layer_gets_one_replacement_shared_the_same_way():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(nn.Sequential(shared), nn.Sequential(shared), nn.Linear(4, 4))
    made = []
    names = replace_linears(model, every_linear, lambda name, linear: made.append(name) or Doubled(linear))
    assert names == ["0.0", "1.0", "2"] and made == ["0.0", "2"]
    assert model[0][0] is model[1][0] and model[0][0].base is shared


def test_replacing_keeps_the_model_computing_the_same():
    model = tiny_model("llama")
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        before = model(x)
        names = replace_linears(model, linears_in_blocks, lambda name, linear: Doubled(linear))  # the head is tied
        assert len(names) == 2 * 4  # per block: qkv, proj, mlp up and down
        for module in model.modules():
            if isinstance(module, Doubled):
                module.base.weight.mul_(0.5)
                if module.base.bias is not None:
                    module.base.bias.mul_(0.5)
        torch.testing.assert_close(model(x), before)


def test_packed_copy_replaces_every_linear_and_leaves_the_original_alone():
    model = tiny_model("llama").to(torch.bfloat16)
    if not can_pack(model):
        pytest.skip("this CPU cannot pack bf16 weights for oneDNN")
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    packed = packed_for_inference(model)
    modules = dict(packed.named_modules())
    assert all(isinstance(modules[n], PackedLinear) for n in linears)
    assert all(isinstance(m, nn.Linear) for n, m in model.named_modules() if n in linears)
    assert packed.embed.weight is model.embed.weight  # tensors are shared, not copied
    x = torch.randint(0, 64, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(packed(x), model(x), rtol=0.02, atol=0.02)
