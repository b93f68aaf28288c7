"""Structured output: every completion of an untrained model matches its JSON schema, regex, choices or Lark
grammar (checked with jsonschema / re, not with the engine that enforced it), in batches, for decoders and
encoder-decoders, byte-level and character tokenizers; among the allowed tokens the model's own order
decides; bad grammars are one clear error."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest
import torch

pytest.importorskip("llguidance", reason="pip install 'llmlab[augment]'")
jsonschema = pytest.importorskip("jsonschema", reason="pip install 'llmlab[augment]'")

from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.constraints import Grammar  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model  # noqa: E402

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "height": {"type": "number", "minimum": 0.5, "maximum": 2.5, "multipleOf": 0.01},
        "role": {"enum": ["pilot", "crew", "guest"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 5},
                "zip": {"type": "integer", "minimum": 1000, "maximum": 9999},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}
EXACT = json.loads(json.dumps(PERSON), parse_float=Decimal)  # with floats jsonschema finds 0.07 no multiple of 0.01
SAMPLED = GenerationConfig(max_new_tokens=160, temperature=1.0, seed=0, num_samples=6)


@pytest.fixture(scope="module")
def bpe():
    return train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")


@pytest.fixture(scope="module")
def decoder(bpe):
    return Generator(tiny_model("llama", vocab_size=bpe.vocab_size, block_size=256), bpe, compile="off")


def texts(generator: Generator, grammar: Grammar, config: GenerationConfig = SAMPLED) -> list[str]:
    results = generator.generate(["Name a person:", "JSON:"], config, grammar)
    completions = [c for samples in results for c in samples]
    assert all(c.finish_reason == "eos" for c in completions), [c.finish_reason for c in completions]
    return [c.text for c in completions]


def test_every_sample_validates_against_a_nested_schema(decoder):
    grammar = Grammar.json_schema(PERSON)
    outputs = texts(decoder, grammar)
    for text in outputs:
        jsonschema.validate(json.loads(text, parse_float=Decimal), EXACT)
    unconstrained = [c.text for s in decoder.generate(["Name a person:"], SAMPLED) for c in s]
    assert not any(_is_valid(t) for t in unconstrained)  # what the constraint changes


def _is_valid(text: str) -> bool:
    try:
        jsonschema.validate(json.loads(text, parse_float=Decimal), EXACT)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def test_regex_choice_and_lark_grammars_hold_in_a_batch(decoder, tmp_path):
    for text in texts(decoder, Grammar.regex(r"[A-Z][a-z]{1,5}-[0-9]{2,3}")):
        assert re.fullmatch(r"[A-Z][a-z]{1,5}-[0-9]{2,3}", text), text
    choices = ["positive", "negative", 'so "so"']
    for text in texts(decoder, Grammar.choice(choices)):
        assert text in choices
    lark = 'start: "go " dir (", " dir)*\ndir: "north" | "south"\n'
    for text in texts(decoder, Grammar.lark(lark), GenerationConfig(max_new_tokens=60, seed=1, num_samples=4)):
        assert re.fullmatch(r"go (north|south)(, (north|south))*", text), text


def test_greedy_takes_the_models_best_allowed_token(decoder, bpe):
    """The first token is the argmax of the model's logits over the tokens that can start a match."""
    grammar = Grammar.choice(["yes", "no", "maybe"])
    prompt = "Answer:"
    first = decoder.generate([prompt], GenerationConfig(max_new_tokens=8, greedy=True), grammar)[0][0].token_ids[0]
    with torch.no_grad():
        logits = decoder.model(torch.tensor([bpe.encode(prompt)]))[0, -1]
    starts = {bpe.encode(c)[0] for c in ("yes", "no", "maybe")}
    starts |= {i for i in range(bpe.vocab_size)
               if bpe.decode([i]) and any(c.startswith(bpe.decode([i])) for c in ("yes", "no", "maybe"))}  # fmt: skip
    assert first == max(starts, key=lambda i: float(logits[i]))


def test_encoder_decoder_and_character_tokenizers(tmp_path):
    seq2seq_tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=400, family="encoder-decoder")
    t5 = Generator(tiny_model("t5", vocab_size=seq2seq_tok.vocab_size), seq2seq_tok, compile="off")
    for text in texts(
        t5, Grammar.regex(r"[0-9]{3}-[ab]{2}"), GenerationConfig(max_new_tokens=20, seed=2, num_samples=3)
    ):
        assert re.fullmatch(r"[0-9]{3}-[ab]{2}", text), text
    chars = train_tokenizer([SAMPLE_TEXT + '{}[]":,0123456789-'], kind="char", family="decoder")
    char_model = Generator(tiny_model("llama", vocab_size=chars.vocab_size, block_size=256), chars, compile="off")
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    for text in texts(char_model, Grammar.json_schema(schema), GenerationConfig(max_new_tokens=40, seed=3)):
        jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda: Grammar.regex("(?=a)b"), "does not compile"),
        (lambda: Grammar.regex("[^\\s\\S]"), "matches no text"),
        (lambda: Grammar.json_schema({"type": "person"}), "not a valid JSON schema"),
        (lambda: Grammar.json_schema("{not json"), "is not JSON"),
        (lambda: Grammar.lark("start: undefined_rule"), "does not compile"),
        (lambda: Grammar.choice(["", ""]), "no choices"),
    ],
)
def test_a_bad_grammar_is_one_clear_error(decoder, make, fragment):
    with pytest.raises(LlmlabError, match=fragment) as error:
        decoder.bind(make())
    assert "\n" not in str(error.value)


def test_cli_structured_output_and_its_errors(capsys, tmp_path, bpe):
    model = tiny_model("llama", vocab_size=bpe.vocab_size, block_size=256)
    save_checkpoint(tmp_path / "ckpt", model, bpe)
    schema = tmp_path / "person.json"
    schema.write_text(json.dumps(PERSON))
    code, out, err = run_cli(capsys, "generate", tmp_path / "ckpt", "--prompt", "Person:", "--json-schema", schema,
                             "--max-new-tokens", "160", "--seed", "0", "--num-samples", "3", "--json")  # fmt: skip
    assert code == 0, err
    for line in out.splitlines():
        jsonschema.validate(json.loads(json.loads(line)["completion"], parse_float=Decimal), EXACT)
    code, out, err = run_cli(capsys, "generate", tmp_path / "ckpt", "--prompt", "x", "--choice", "yes,no",
                             "--max-new-tokens", "1", "--greedy")  # fmt: skip
    assert code == 0 and "ended by --max-new-tokens" in err  # cut before the end-of-sequence
    schema.write_text('{"type": "object", "properties": {"a": {"type": "strin"}}}')
    code, _, err = run_cli(capsys, "generate", tmp_path / "ckpt", "--prompt", "x", "--json-schema", schema)
    assert_one_line_error(code, err, "properties/a/type")
    code, _, err = run_cli(capsys, "generate", tmp_path / "ckpt", "--prompt", "x", "--regex", "a{2,1}")
    assert_one_line_error(code, err, "does not compile")
