import pytest
import torch

from llmlab.config import PRESETS, ModelConfig
from llmlab.errors import LlmlabError
from llmlab.hf.exporter import to_transformers
from llmlab.model import DecoderLM
from tests.helpers import assert_one_line_error, run_cli, tiny_model


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_changing_a_later_token_never_changes_earlier_logits(style):
    model = tiny_model(style)
    x = torch.randint(0, 64, (2, 24))
    y = x.clone()
    y[:, 15] = (y[:, 15] + 7) % 64
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :15], b[:, :15])
    assert not torch.allclose(a[:, 15:], b[:, 15:])  # and the change is seen from there on


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_cached_forward_equals_full_recomputation(style):
    model = tiny_model(style)
    x = torch.randint(0, 64, (3, 20))
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(3, 20)
        parts = [model(x[:, :8], cache=cache)]
        for t in range(8, 20):
            parts.append(model(x[:, t : t + 1], cache=cache))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_grouped_query_attention_uses_fewer_kv_heads():
    model = tiny_model("llama", n_head=4, n_kv_head=1)
    qkv = model.decoder.blocks[0].attn.qkv
    assert qkv.out_features == (4 + 2 * 1) * 8
    assert model(torch.randint(0, 64, (1, 5))).shape == (1, 5, 64)


@pytest.mark.parametrize("tie", [True, False])
def test_llama_style_logits_equal_transformers_llama_on_the_same_weights(tie):
    torch.manual_seed(0)
    config = ModelConfig.from_preset("llama-nano", vocab_size=300, block_size=64, tie_embeddings=tie)
    model = DecoderLM(config).eval()  # 4 heads sharing 2 key/value heads: grouped-query attention
    hf = to_transformers(model)
    assert type(hf).__name__ == "LlamaForCausalLM"
    x = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-4, atol=1e-4)
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())


@pytest.mark.parametrize("preset", ["gpt2-nano", "llama-nano"])
def test_hf_state_round_trip_is_exact(preset):
    from llmlab.hf.maps import from_hf_state, to_hf_state

    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.from_preset(preset, vocab_size=300, block_size=64))
    back = from_hf_state(to_hf_state(model), model.config)
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_configs_without_a_hugging_face_counterpart_are_refused():
    from llmlab.hf.maps import architecture_of

    with pytest.raises(LlmlabError, match="as gpt2 it would need to change norm=.rmsnorm."):
        architecture_of(ModelConfig.from_preset("gpt2-nano", norm="rmsnorm"))


def test_gpt2_style_logits_equal_transformers_gpt2_on_the_same_weights():
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.from_preset("gpt2-nano", vocab_size=300, block_size=64)).eval()
    hf = to_transformers(model)
    x = torch.randint(0, 300, (2, 30))
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, rtol=1e-4, atol=1e-4)
    assert model.num_parameters() == sum(p.numel() for p in hf.parameters())


def test_gpt2_small_preset_has_gpt2s_124m_parameters():
    model = DecoderLM(ModelConfig.from_preset("gpt2-small", vocab_size=50257))
    assert model.num_parameters() == 124_439_808  # the published GPT-2 small count


def test_presets_build_and_unknown_preset_is_refused():
    for name in PRESETS:  # each family is what its name says
        c = ModelConfig.from_preset(name)
        if name.startswith("gpt2"):
            assert (c.family, c.positions, c.norm, c.mlp, c.n_kv_head) == (
                "decoder",
                "learned",
                "layernorm",
                "gelu",
                c.n_head,
            )
        elif name.startswith("llama"):
            assert (c.family, c.positions, c.norm, c.mlp) == ("decoder", "rope", "rmsnorm", "swiglu")
            assert c.n_kv_head < c.n_head
        elif name.startswith("bert"):
            assert (c.family, c.positions, c.norm, c.mlp) == ("encoder", "learned", "layernorm", "gelu-erf")
            assert (c.norm_position, c.embed_norm, c.type_vocab_size) == ("post", True, 2)
        elif name.startswith("t5"):
            assert (c.family, c.positions, c.norm, c.mlp) == ("encoder-decoder", "relative", "rmsnorm", "geglu")
        else:
            assert (c.family, c.positions, c.mlp) == ("encoder-decoder", "sinusoidal", "relu")
    with pytest.raises(LlmlabError, match="unknown preset"):
        ModelConfig.from_preset("gpt5-huge")


def test_invalid_config_is_refused():
    with pytest.raises(LlmlabError, match="not divisible"):
        ModelConfig(n_embd=100, n_head=3)
    with pytest.raises(LlmlabError, match="norm must be one of"):
        ModelConfig(norm="batchnorm")


def test_cpu_packed_linears_give_the_same_logits_and_leave_the_model_trainable():
    from llmlab.model.cpu_packing import can_pack, packed_for_inference

    model = tiny_model("gpt2").to(torch.bfloat16)
    if not can_pack(model):
        pytest.skip("this CPU has no native bf16 (oneDNN packing unavailable)")
    packed = packed_for_inference(model)
    x = torch.randint(0, 64, (2, 16))
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).float(), model(x).float(), rtol=0.02, atol=0.02)
    assert isinstance(model.decoder.blocks[0].attn.qkv, torch.nn.Linear)  # the original is untouched
    assert packed.embed.weight is model.embed.weight  # everything but the linears is shared


def test_generator_repacks_after_the_weights_change(char_tokenizer):
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.model.cpu_packing import can_pack

    model = tiny_model("gpt2", vocab_size=char_tokenizer.vocab_size).to(torch.bfloat16)
    if not can_pack(model):
        pytest.skip("this CPU has no native bf16 (oneDNN packing unavailable)")
    gen = Generator(model, char_tokenizer)
    config = GenerationConfig(greedy=True, max_new_tokens=8)
    before = gen.generate(["def "], config)[0][0].token_ids
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-1.0)  # an in-place update, as an optimizer step makes
    after = gen.generate(["def "], config)[0][0].token_ids
    assert after == Generator(model, char_tokenizer).generate(["def "], config)[0][0].token_ids
    assert after != before


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_export_to_hugging_face_loads_with_auto_classes(tmp_path, bpe_tokenizer, style, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmlab.checkpoint.folder import save_checkpoint

    model = tiny_model(style, vocab_size=bpe_tokenizer.vocab_size)
    save_checkpoint(tmp_path / "ckpt", model, bpe_tokenizer)
    code, out, err = run_cli(capsys, "export", tmp_path / "ckpt", tmp_path / "hf", "--to", "hf")
    assert code == 0, err
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    name = type(hf).__name__
    assert name == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[style]
    assert out.startswith(f"{tmp_path / 'hf'}: Hugging Face folder; load it with transformers' {name} ")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "def add(a, b):\n    return a + b"
    ids = tokenizer(text)["input_ids"]
    assert ids == bpe_tokenizer.encode(text)
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x), rtol=1e-4, atol=1e-4)
    written = {f.name: f.read_bytes() for f in (tmp_path / "hf").iterdir()}
    code, _, err = run_cli(capsys, "export", tmp_path / "ckpt", tmp_path / "hf")  # never overwrites
    assert_one_line_error(code, err, f"{tmp_path / 'hf'} already exists", "choose another output folder")
    assert {f.name: f.read_bytes() for f in (tmp_path / "hf").iterdir()} == written
