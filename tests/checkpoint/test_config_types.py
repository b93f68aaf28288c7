"""A config.json edited by hand (or written by another tool) with a value of the wrong type."""

import json

import pytest

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.config import PRESETS, ModelConfig
from llmlab.errors import LlmlabError
from tests.helpers import assert_one_line_error, run_cli, tiny_model


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("n_layer", "x", "an integer"),
        ("n_layer", 3.5, "an integer"),
        ("n_layer", True, "an integer"),
        ("n_kv_head", 1.5, "an integer or null"),
        ("dropout", "0.1", "a number"),
        ("bias", 1, "true or false"),
        ("norm", 3, "a string"),
        ("rope_scaling", [1, 2], "an object or null"),
    ],
)
def test_a_value_of_the_wrong_type_is_one_error_naming_field_value_and_type(field, value, expected):
    data = {**ModelConfig().to_dict(), field: value}
    with pytest.raises(LlmlabError) as caught:
        ModelConfig.from_dict(data)
    assert field in caught.value.what and json.dumps(value) in caught.value.what and expected in caught.value.what


def test_every_wrong_field_is_named_at_once():
    with pytest.raises(LlmlabError, match='n_layer is "x", expected an integer; dropout is null, expected a number'):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "n_layer": "x", "dropout": None})


def test_values_json_writes_differently_still_fit():
    config = ModelConfig.from_dict(
        {**ModelConfig().to_dict(), "dropout": 0, "rope_theta": 500000, "n_kv_head": None, "rope_scaling": None}
    )
    assert isinstance(config.dropout, float) and isinstance(config.rope_theta, float) and config.n_kv_head == 4


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_round_trips_through_its_dict(name):
    config = ModelConfig.from_preset(name)
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("field,value", [("n_kv_head", 0), ("intermediate_size", -1), ("head_size", 0)])
def test_non_positive_optional_sizes_are_refused(field, value):
    with pytest.raises(LlmlabError, match=f"{field} must be positive"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), field: value})


@pytest.fixture
def hand_edited(tmp_path, char_tokenizer):
    """A checkpoint whose config.json is edited and whose manifest is gone, as a hand or another tool leaves it."""
    path = save_checkpoint(tmp_path / "ckpt", tiny_model("llama", vocab_size=char_tokenizer.vocab_size), char_tokenizer)
    (path / "manifest.json").unlink()

    def edit(**fields):
        config = json.loads((path / "config.json").read_text())
        config["model"].update(fields)
        (path / "config.json").write_text(json.dumps(config))
        return path

    return edit


@pytest.mark.parametrize("value", ["x", 3.5, None, True])
def test_cli_reports_a_wrongly_typed_config_value_in_one_line(hand_edited, capsys, value):
    path = hand_edited(n_layer=value)
    code, _, err = run_cli(capsys, "generate", path, "--prompt", "x")
    assert_one_line_error(code, err, str(path / "config.json"), "n_layer", json.dumps(value), "an integer")


def test_cli_reports_a_config_value_that_fails_validation_in_one_line(hand_edited, capsys):
    path = hand_edited(n_kv_head=0)
    code, _, err = run_cli(capsys, "generate", path, "--prompt", "x")
    assert_one_line_error(code, err, str(path / "config.json"), "n_kv_head must be positive")
