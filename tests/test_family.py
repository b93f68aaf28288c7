"""FamilySpec: each family's properties in one place, and the objectives each one trains."""

import itertools

import pytest

from llmlab.config import FAMILIES, PRESETS, ModelConfig
from llmlab.data.objectives import check_objective
from llmlab.errors import LlmlabError
from llmlab.family import SPECS, FamilySpec, family_spec
from llmlab.tokenizer import CLS, EOS, MASK, PAD, SENTINELS, SEP, T5_PAD, train_tokenizer
from tests.helpers import SAMPLE_TEXT

OBJECTIVES = ("clm", "mlm", "span", "seq2seq")


def test_every_family_has_one_spec_with_its_properties():
    assert tuple(SPECS) == FAMILIES
    decoder, encoder, seq2seq = (family_spec(name) for name in FAMILIES)
    assert (decoder.default_preset, encoder.default_preset, seq2seq.default_preset) == (
        "llama-micro",
        "bert-micro",
        "t5-micro",
    )
    assert (decoder.objectives, encoder.objectives, seq2seq.objectives) == (("clm",), ("mlm",), ("span", "seq2seq"))
    assert [s.default_objective for s in (decoder, encoder, seq2seq)] == ["clm", "mlm", "span"]
    assert [s.generates for s in (decoder, encoder, seq2seq)] == [True, False, True]
    assert [s.seq2seq for s in (decoder, encoder, seq2seq)] == [False, False, True]
    assert [s.causal for s in (decoder, encoder, seq2seq)] == [True, False, False]
    assert [s.masked_lm for s in (decoder, encoder, seq2seq)] == [False, True, False]
    assert [s.attention_kinds for s in (decoder, encoder, seq2seq)] == [
        ("decoder",),
        ("encoder",),
        ("encoder", "decoder", "cross"),
    ]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_spec_is_found_by_name_or_config_and_its_preset_is_of_its_family(name):
    spec = family_spec(name)
    assert isinstance(spec, FamilySpec) and spec.name == name
    config = ModelConfig.from_preset(spec.default_preset)
    assert family_spec(config) is spec and PRESETS[spec.default_preset].get("family", "decoder") == name
    with pytest.raises(AttributeError):
        spec.generates = not spec.generates  # frozen: one truth per family


def test_an_unknown_family_is_one_clear_error_listing_the_families():
    with pytest.raises(LlmlabError) as caught:
        family_spec("decoder-only")
    assert "unknown family 'decoder-only'" in caught.value.what
    assert all(name in caught.value.fix for name in FAMILIES)


def test_check_objective_accepts_exactly_the_pairs_it_did():
    accepted = set()
    for family, objective in itertools.product(FAMILIES, OBJECTIVES):
        try:
            accepted.add((family, check_objective(family, objective)))
        except LlmlabError:
            pass
    assert accepted == {
        ("decoder", "clm"),
        ("encoder", "mlm"),
        ("encoder-decoder", "span"),
        ("encoder-decoder", "seq2seq"),
    }
    assert [check_objective(f, None) for f in FAMILIES] == ["clm", "mlm", "span"]


@pytest.fixture(scope="module", params=FAMILIES)
def tokenizer(request):
    return request.param, train_tokenizer([SAMPLE_TEXT], kind="char", family=request.param)


def test_inputs_are_built_as_each_family_was_trained_to_read_them(tokenizer):
    family, tok = tokenizer
    spec, ids = family_spec(family), tok.encode("def")
    if family == "encoder":
        assert spec.text_ids(tok, ids) == [tok.cls_id, *ids, tok.sep_id]
        with pytest.raises(LlmlabError, match="cannot be prompted"):
            spec.prompt_ids(tok, ids)
    elif family == "encoder-decoder":
        assert spec.text_ids(tok, ids) == spec.prompt_ids(tok, ids) == [*ids, tok.eos_id]
    else:
        assert spec.text_ids(tok, ids) == ids and spec.prompt_ids(tok, ids) == tok.prefix_ids + ids
    expected = {
        "decoder": ([EOS], 0),
        "encoder": ([PAD, CLS, SEP, MASK], 0),
        "encoder-decoder": ([T5_PAD, EOS], SENTINELS),
    }[family]
    assert spec.special_tokens == expected and all(tok.inner.token_to_id(t) is not None for t in expected[0])


def test_pad_and_start_tokens(tokenizer):
    family, tok = tokenizer
    spec = family_spec(family)
    assert spec.pad_id(tok) == (tok.pad_id if tok.pad_id is not None else tok.eos_id)
    config = ModelConfig.from_preset(spec.default_preset, vocab_size=tok.vocab_size)
    if family == "encoder-decoder":
        assert spec.start_id(config, tok) == tok.pad_id  # T5: the decoder starts from <pad>
        config.decoder_start_token_id = 7
        assert spec.start_id(config, tok) == 7
    else:
        assert spec.start_id(config, tok) is None
