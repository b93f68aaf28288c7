import itertools

import pytest

from llmlab.config import PRESETS, ModelConfig
from llmlab.model import build_model
from llmlab.plan.model import parameter_breakdown


@pytest.mark.parametrize("preset", list(PRESETS))
def test_breakdown_equals_the_built_model_for_every_preset(preset):
    config = ModelConfig.from_preset(preset, vocab_size=5000)
    assert sum(parameter_breakdown(config).values()) == build_model(config).num_parameters()


@pytest.mark.parametrize("style,tie,kv", list(itertools.product(["gpt2", "llama"], [True, False], [1, 2, 4])))
def test_breakdown_equals_the_built_model_for_variants(style, tie, kv):
    config = ModelConfig.from_preset(f"{style}-nano", vocab_size=300, tie_embeddings=tie, n_kv_head=kv)
    assert sum(parameter_breakdown(config).values()) == build_model(config).num_parameters()


def test_gpt2_small_components():
    parts = parameter_breakdown(ModelConfig.from_preset("gpt2-small", vocab_size=50257))
    assert parts["embeddings"] == 50257 * 768 + 1024 * 768
    assert sum(parts.values()) == 124_439_808


def test_breakdown_equals_the_built_model_for_bert_and_t5_variants():
    variants = [
        ("bert-nano", dict(norm_position="post", embed_norm=True, type_vocab_size=2, mlp="gelu-erf")),
        ("bert-nano", dict(mlm_head=False, norm_position="post", embed_norm=True)),
        ("t5-nano", dict(tie_embeddings=False, mlp="relu", n_decoder_layer=5)),
        ("t5-nano", dict(n_head=6, head_size=16)),  # heads narrower than the model, as in T5 v1.1 small
        ("transformer-base", dict(norm_position="post")),
    ]
    for preset, fields in variants:
        config = ModelConfig.from_preset(preset, vocab_size=300, **fields)
        assert sum(parameter_breakdown(config).values()) == build_model(config).num_parameters(), (preset, fields)


def test_a_config_that_is_not_a_json_object_is_one_line(tmp_path, capsys):
    from tests.helpers import assert_one_line_error, run_cli

    (tmp_path / "list.json").write_text("[1, 2]")
    code, _, err = run_cli(capsys, "plan", "model", "--config", tmp_path / "list.json")
    assert_one_line_error(code, err, "is not a JSON object")
