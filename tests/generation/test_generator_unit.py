"""The generator's small decisions, exact and fast (mutation testing runs this file): temperature, top-k and
top-p on logits whose outcome is worked out by hand, the end-of-sequence ban of min_new_tokens, how a prompt
is fitted to the context window (budgets, exact refusals, truncation), finish reasons and stop strings, the
settings' validation, and when the packed copy of the weights is rebuilt."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch

from llmlab.errors import LlmlabError
from llmlab.generation import config as config_module
from llmlab.generation.config import GenerationConfig, compile_choice
from llmlab.generation.generator import Generator, _forbid_end, _same_tensors, next_tokens, process_logits
from llmlab.model.soft_prompt import add_soft_prompt
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model

INF = float("inf")


def message(call) -> str:
    with pytest.raises(LlmlabError) as caught:
        call()
    return str(caught.value)


# -- logits -----------------------------------------------------------------------------------------


def test_temperature_divides_the_logits():
    logits = torch.tensor([[2.0, -4.0, 1.0]])
    assert torch.equal(process_logits(logits, 2.0, 0, 1.0), torch.tensor([[1.0, -2.0, 0.5]]))
    assert torch.equal(process_logits(logits, 0.5, 0, 1.0), torch.tensor([[4.0, -8.0, 2.0]]))
    assert torch.equal(process_logits(logits, 1.0, 0, 1.0), logits)


def test_top_k_keeps_the_k_largest_of_each_row_and_their_ties():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [0.0, 0.0, 5.0, -1.0]])
    assert process_logits(logits, 1.0, 2, 1.0).tolist() == [[-INF, 4.0, 3.0, -INF], [0.0, 0.0, 5.0, -INF]]
    assert torch.equal(process_logits(logits, 1.0, 4, 1.0), logits)  # k = V: nothing to drop
    assert torch.equal(process_logits(logits, 1.0, 9, 1.0), logits)


def test_top_p_keeps_the_smallest_set_that_reaches_p():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25]])  # ranked: 0.5, 0.25, 0.15, 0.1
    logits = probs.log()
    kept = lambda p: torch.isfinite(process_logits(logits, 1.0, 0, p)).int().tolist()  # noqa: E731
    assert kept(0.5) == [[0, 1, 0, 0]]  # 0.5 alone reaches 0.5
    assert kept(0.6) == [[0, 1, 0, 1]]  # 0.5 + 0.25
    assert kept(0.75) == [[0, 1, 0, 1]]  # exactly reached: the next one is not needed
    assert kept(0.8) == [[0, 1, 1, 1]]
    assert kept(0.01) == [[0, 1, 0, 0]]  # never fewer than one token
    both = process_logits(torch.stack([logits[0], logits[0].flip(-1)]), 1.0, 0, 0.6)
    assert torch.isfinite(both).int().tolist() == [[0, 1, 0, 1], [1, 0, 1, 0]]  # each row in its own order


def test_next_tokens_take_the_argmax_when_greedy_and_sample_the_processed_distribution_otherwise():
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.0]], dtype=torch.bfloat16)
    assert next_tokens(logits, GenerationConfig(greedy=True), None).tolist() == [1, 0]
    assert next_tokens(logits, GenerationConfig(temperature=0), None).tolist() == [1, 0]
    top1 = GenerationConfig(temperature=5.0, top_k=1)
    generator = torch.Generator().manual_seed(0)
    assert all(next_tokens(logits, top1, generator).tolist() == [1, 0] for _ in range(20))
    draws = torch.stack([next_tokens(logits, GenerationConfig(seed=1), generator) for _ in range(4000)])
    assert draws.shape == (4000, 2)
    share = (draws[:, 0] == 1).float().mean().item()
    assert abs(share - math.exp(3) / (1 + math.exp(3) + math.e)) < 0.03  # softmax(0, 3, 1)[1] = 0.84


def test_min_new_tokens_bans_the_end_unless_a_grammar_allows_nothing_else():
    logits = torch.tensor([[1.0, 2.0, 3.0], [-INF, -INF, 0.5], [0.0, -INF, -INF]])
    unconstrained = logits.clone()
    _forbid_end(logits, eos_id=2, constrained=True)
    assert logits.tolist() == [[1.0, 2.0, -INF], [-INF, -INF, 0.5], [0.0, -INF, -INF]]
    _forbid_end(unconstrained, eos_id=2, constrained=False)  # no grammar: every other token is allowed
    assert unconstrained[:, 2].tolist() == [-INF] * 3 and unconstrained[:, :2].equal(logits[:, :2])


def test_same_tensors_compares_identity_pointer_and_dtype():
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    now = [(a, 1, torch.float32), (b, 2, torch.float32)]
    assert _same_tensors(now, list(now))
    assert not _same_tensors(now, now[:1])
    assert not _same_tensors(now, [(b, 1, torch.float32), (b, 2, torch.float32)])  # another tensor
    assert not _same_tensors(now, [(a, 9, torch.float32), (b, 2, torch.float32)])  # moved
    assert not _same_tensors(now, [(a, 1, torch.bfloat16), (b, 2, torch.float32)])  # cast
    assert _same_tensors([], [])


# -- prompts ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chars():
    return train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")


@pytest.fixture(scope="module")
def decoder(chars):
    return Generator(tiny_model("llama", vocab_size=chars.vocab_size, block_size=16), chars, compile="off")


def test_a_decoder_prompt_fits_before_the_new_tokens(decoder, chars):
    ids = chars.encode("abcdef")
    assert decoder.encode_prompt("abcdef", GenerationConfig(max_new_tokens=10)) == ids  # exactly 6 fit
    assert decoder.encode_prompt("", GenerationConfig(max_new_tokens=10)) == [decoder.eos_id]
    assert decoder.encode_prompt("a", GenerationConfig(max_new_tokens=15)) == chars.encode("a")
    assert message(lambda: decoder.encode_prompt("abcdefgh", GenerationConfig(max_new_tokens=10))) == (
        "prompt has 8 tokens but only 6 fit before 10 new tokens in the 16-token context window — shorten the "
        "prompt, lower --max-new-tokens, or pass --truncate-prompt to keep its last tokens"
    )
    assert message(lambda: decoder.encode_prompt("a", GenerationConfig(max_new_tokens=16))) == (
        "max-new-tokens 16 leaves no room for a prompt in the 16-token context window — use at most 15 new tokens"
    )


def test_a_prompt_too_long_is_cut_to_its_last_tokens_when_asked(decoder, chars):
    config = GenerationConfig(max_new_tokens=10, truncate_prompt=True)
    with pytest.warns(UserWarning, match="prompt truncated from 8 to its last 6 tokens"):
        assert decoder.encode_prompt("abcdefgh", config) == chars.encode("cdefgh")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        decoder.encode_prompt("abcdef", config)  # fits: no warning


def test_a_soft_prompt_takes_positions_from_the_budget(chars):
    model = tiny_model("llama", vocab_size=chars.vocab_size, block_size=16)
    add_soft_prompt(model, 3)
    generator = Generator(model, chars, compile="off")
    assert generator.encode_prompt("abc", GenerationConfig(max_new_tokens=10)) == chars.encode("abc")
    assert "only 3 fit" in message(lambda: generator.encode_prompt("abcd", GenerationConfig(max_new_tokens=10)))
    assert message(lambda: generator.encode_prompt("a", GenerationConfig(max_new_tokens=13))).startswith(
        "max-new-tokens 13 leaves no room"
    )


def test_an_encoder_decoder_prompt_fills_the_encoder_and_ends_with_the_end_of_sequence():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    generator = Generator(tiny_model("t5", vocab_size=tok.vocab_size, block_size=16), tok, compile="off")
    eos = tok.require("eos", "to end the input")
    fifteen = "abcdefghijklmno"
    assert generator.encode_prompt(fifteen, GenerationConfig(max_new_tokens=16)) == tok.encode(fifteen) + [eos]
    assert message(lambda: generator.encode_prompt(fifteen + "p", GenerationConfig(max_new_tokens=4))) == (
        "prompt has 16 tokens but only 15 fit in the 16-token context window — shorten the prompt, lower "
        "--max-new-tokens, or pass --truncate-prompt to keep its last tokens"
    )
    assert message(lambda: generator.encode_prompt("a", GenerationConfig(max_new_tokens=17))) == (
        "max-new-tokens 17 exceeds the decoder's 16 positions — use at most 16 new tokens"
    )


# -- endings ------------------------------------------------------------------------------------------


def test_finish_reasons_and_stop_strings(decoder, chars):
    eos = decoder.eos_id
    text = chars.encode("def add(a, b)")
    assert decoder._finish_reason(text + [eos], GenerationConfig()) == "eos"
    assert decoder._finish_reason(text, GenerationConfig()) == "length"
    assert decoder._finish_reason([], GenerationConfig()) == "length"
    assert decoder._finish_reason(text, GenerationConfig(stop=["add"])) == "stop"
    assert decoder._finish_reason(text, GenerationConfig(stop=["xyz"])) == "length"
    config = GenerationConfig(stop=["b)", "(a"])
    assert decoder._cut_at_stop("def add(a, b)", config) == "def add"  # the earliest stop string wins
    done = decoder._completion("p", text + [eos], "eos", config)
    assert (done.prompt, done.text, done.token_ids, done.finish_reason) == ("p", "def add", text, "eos")
    assert decoder._completion("p", text, "length", GenerationConfig()).text == "def add(a, b)"


def test_a_grammar_is_bound_once_until_another_comes(decoder):
    from llmlab.generation.constraints import Grammar

    assert decoder.bind(None) is None
    grammar = Grammar.regex("[ab]+")
    first = decoder.bind(grammar)
    assert decoder.bind(Grammar.regex("[ab]+")) is first  # an equal grammar: the same binding
    other = decoder.bind(Grammar.regex("[a]+"))
    assert other is not first and other.grammar == Grammar.regex("[a]+")


def test_the_packed_copy_is_rebuilt_when_parameters_are_replaced_and_repacked_when_refreshed(chars, monkeypatch):
    from llmlab.generation import generator as module

    model = tiny_model("llama", vocab_size=chars.vocab_size, block_size=16)
    generator = Generator(model, chars, compile="off")
    repacked = []
    monkeypatch.setattr(module, "repack", lambda packed: repacked.append(packed))
    generator.refresh()
    assert repacked == []  # nothing packed yet
    runner = generator.runner
    assert generator.runner is runner and repacked == []  # unchanged weights: the same copy, untouched
    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # in place: the version counter moves
    assert generator.runner is runner and repacked == [runner]
    generator.refresh()
    assert repacked == [runner, runner]
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # replaced
    assert generator.runner is not runner


# -- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (dict(max_new_tokens=-1), "max-new-tokens must be >= 0, got -1 — pass a count such as 128"),
        (dict(min_new_tokens=5, max_new_tokens=4), "min-new-tokens must be in [0, max-new-tokens], got 5 — lower it"),
        (dict(min_new_tokens=-1), "min-new-tokens must be in [0, max-new-tokens], got -1 — lower it"),
        (dict(min_new_tokens=1, max_new_tokens=0), "min-new-tokens must be in [0, max-new-tokens], got 1 — lower it"),
        (dict(temperature=-0.1), "temperature must be >= 0, got -0.1 — use 0 for greedy or e.g. 0.8"),
        (dict(top_k=-1), "top-k must be >= 0, got -1 — use 0 to disable it or e.g. 50"),
        (dict(top_p=0.0), "top-p must be in (0, 1], got 0.0 — use 1 to disable it or e.g. 0.95"),
        (dict(top_p=1.5), "top-p must be in (0, 1], got 1.5 — use 1 to disable it or e.g. 0.95"),
        (dict(num_samples=0), "num-samples must be >= 1, got 0 — pass 1 or more"),
        (dict(stop=["a", ""]), "a stop string is empty — remove it or give it text"),
    ],
)
def test_bad_settings_are_refused_with_what_to_do(settings, expected):
    assert message(GenerationConfig(**settings).validate) == expected


def test_settings_at_their_limits_are_accepted_and_round_trip():
    for settings in (dict(max_new_tokens=0), dict(min_new_tokens=4, max_new_tokens=4), dict(temperature=0.0),
                     dict(top_k=0, top_p=1.0), dict(num_samples=1, stop=["x"])):  # fmt: skip
        GenerationConfig(**settings).validate()
    config = GenerationConfig(max_new_tokens=7, temperature=0.5, stop=["\n"], seed=3)
    assert GenerationConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
    assert config.to_dict()["stop"] == ["\n"] and config.to_dict()["seed"] == 3
    assert GenerationConfig().do_sample and not GenerationConfig(greedy=True).do_sample
    assert not GenerationConfig(temperature=0).do_sample and GenerationConfig(temperature=0.01).do_sample


def test_the_compile_choice_comes_from_the_caller_then_the_environment(monkeypatch):
    monkeypatch.delenv("LLMLAB_COMPILE", raising=False)
    assert compile_choice() == "auto" and compile_choice("on") == "on" and compile_choice("off") == "off"
    monkeypatch.setenv("LLMLAB_COMPILE", "off")
    assert compile_choice() == "off" and compile_choice("auto") == "off" and compile_choice("on") == "on"
    monkeypatch.setenv("LLMLAB_COMPILE", "fast")
    assert message(compile_choice) == "$LLMLAB_COMPILE is 'fast' — set it to one of auto, on, off or unset it"
    assert message(lambda: compile_choice("yes")) == "compile='yes' is not a choice — use one of auto, on, off"
    assert config_module.AUTO_COMPILE_TOKENS == 4096


def test_an_encoder_decoder_without_a_start_id_starts_its_decoder_at_the_pad_token():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    model = tiny_model("t5", vocab_size=tok.vocab_size, block_size=16)
    model.config.decoder_start_token_id = None  # as T5's own config may leave it: the pad token starts
    config = GenerationConfig(max_new_tokens=4, greedy=True)
    unset = Generator(model, tok, compile="off").generate(["abc"], config)
    model.config.decoder_start_token_id = tok.pad_id
    assert unset == Generator(model, tok, compile="off").generate(["abc"], config)


def test_stop_strings_cut_at_their_first_occurrence_and_text_without_one_is_kept(decoder):
    config = GenerationConfig(stop=["."])
    assert decoder._cut_at_stop("a.b.c", config) == "a"
    assert decoder._cut_at_stop("abc", config) == "abc"


def test_a_finished_row_takes_no_more_tokens_while_the_batch_decodes_on(decoder, chars, monkeypatch):
    """The batch decodes until every row is done; a row that ended keeps its tokens up to its end, and the
    completions come back grouped per prompt, num_samples each, with their prompts."""
    eos, pad, a, b = decoder.eos_id, 0, *chars.encode("ab")
    script = [([a, eos, a, a], [False, True, False, False]), ([b, pad, eos, b], [False, True, True, False]),
              ([eos, pad, pad, a], [True, True, True, True])]  # fmt: skip
    monkeypatch.setattr(decoder, "_decode", lambda ids, config, grammar: iter(script))
    out = decoder.generate(["x", "y"], GenerationConfig(max_new_tokens=3, num_samples=2))
    assert [[c.prompt for c in group] for group in out] == [["x", "x"], ["y", "y"]]
    assert [[(c.token_ids, c.finish_reason) for c in group] for group in out] == [
        [([a, b], "eos"), ([], "eos")],
        [([a], "eos"), ([a, b, a], "length")],
    ]


def test_what_cannot_generate_is_refused_with_what_to_do(chars):
    small = tiny_model("llama", vocab_size=chars.vocab_size - 1, block_size=16)
    assert message(lambda: Generator(small, chars, compile="off")) == (
        f"tokenizer has {chars.vocab_size} tokens but the model's vocabulary is {chars.vocab_size - 1} — use the "
        "tokenizer.json saved with this checkpoint"
    )
    words = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    encoder = tiny_model("bert", vocab_size=words.vocab_size, block_size=16)
    assert message(lambda: Generator(encoder, words, compile="off")) == (
        "encoder-only models do not generate text — use llmlab fill-mask or embed with this checkpoint"
    )
    no_end = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    no_end.eos_id = None
    model = tiny_model("llama", vocab_size=no_end.vocab_size, block_size=16)
    assert message(lambda: Generator(model, no_end, compile="off")).startswith("the tokenizer has no ")
    assert message(lambda: Generator(model, no_end, compile="off")).endswith(
        "token, needed to generate text — use a checkpoint of a family that has it"
    )


class _FakeStep:
    """Stands in for DecodeStep: records what it was asked to build, compiles nothing."""

    def __init__(self, runner, compile):
        self.runner, self.compiled, self.failed = runner, compile, False


def test_the_decoding_step_compiles_when_asked_or_once_auto_has_decoded_enough(chars, monkeypatch):
    import llmlab.generation.generator as generator_module
    from llmlab.generation.config import AUTO_COMPILE_TOKENS

    monkeypatch.setattr(generator_module, "DecodeStep", _FakeStep)
    monkeypatch.setenv("LLMLAB_COMPILE", "auto")  # the suite's default is off
    model = tiny_model("llama", vocab_size=chars.vocab_size, block_size=16)
    monkeypatch.setattr(Generator, "runner", property(lambda self: self.model))
    assert Generator(model, chars, compile="on").decode_step(1).compiled is True
    off = Generator(model, chars, compile="off")
    assert off.decode_step(10 * AUTO_COMPILE_TOKENS).compiled is False
    auto = Generator(model, chars, compile="auto")
    first = auto.decode_step(AUTO_COMPILE_TOKENS - 1)
    assert first.compiled is False and auto.decode_step(0) is first  # below the threshold: the eager step is kept
    second = auto.decode_step(1)  # exactly the threshold: a compiled step replaces it
    assert second is not first and second.compiled is True and auto.decode_step(5) is second
    second.compiled, second.failed = False, True  # compiling failed: decode eagerly, never try again
    assert auto.decode_step(5) is second


def test_a_new_runner_gets_a_new_step(chars, monkeypatch):
    import llmlab.generation.generator as generator_module

    monkeypatch.setattr(generator_module, "DecodeStep", _FakeStep)
    runners = [object()]
    monkeypatch.setattr(Generator, "runner", property(lambda self: runners[-1]))
    generator = Generator(tiny_model("llama", vocab_size=chars.vocab_size, block_size=16), chars, compile="off")
    first = generator.decode_step(1)
    assert first.runner is runners[-1] and generator.decode_step(1) is first
    runners.append(object())  # the model was moved, cast, or is now under autocast
    assert generator.decode_step(1).runner is runners[-1]


def test_a_truncation_warning_points_at_the_callers_line(decoder):
    config = GenerationConfig(max_new_tokens=10, truncate_prompt=True, greedy=True)
    with pytest.warns(UserWarning, match="prompt truncated") as record:
        decoder.generate(["abcdefgh"], config)
        list(decoder.stream("abcdefgh", config))
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampolines add frames that stacklevel counts
        assert [w.filename for w in record] == [__file__, __file__]


def test_an_encoder_soft_prompt_takes_encoder_positions():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    model = tiny_model("t5", vocab_size=tok.vocab_size, block_size=16)
    add_soft_prompt(model, 3)
    generator = Generator(model, tok, compile="off")
    twelve = "abcdefghijkl"  # 16 positions - 3 virtual tokens - the end-of-sequence
    assert generator.encode_prompt(twelve, GenerationConfig(max_new_tokens=4))[:-1] == tok.encode(twelve)
    assert "only 12 fit" in message(lambda: generator.encode_prompt(twelve + "m", GenerationConfig(max_new_tokens=4)))


def _varied(style: str, vocab: int, **overrides):
    """A tiny decoder whose greedy text changes token to token (weights x4): a wrong mask or slot shows."""
    model = tiny_model(style, vocab_size=vocab, block_size=32, **overrides)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4)
    return model


def _greedy_by_full_forward(model, ids: list[int], n: int, eos: int) -> list[int]:
    ids = list(ids)
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids]))[0, -1].float()
        logits[eos] = -INF  # as min_new_tokens bans it
        ids.append(int(logits.argmax()))
    return ids[-n:]


@pytest.mark.parametrize(("style", "overrides"), [("llama", {}), ("gpt2", {}), ("llama", {"positions": "relative"})])
def test_batched_greedy_decoding_equals_full_forward_passes_of_each_prompt(chars, style, overrides):
    """Left-padded prompts of three lengths, six new tokens each: the cached, batched, masked decoding gives
    every row exactly what full forward passes over that row alone give."""
    model = _varied(style, chars.vocab_size, **overrides)
    generator = Generator(model, chars, compile="off")
    prompts = ["def add(a, b):", "x", "class St"]
    config = GenerationConfig(max_new_tokens=6, min_new_tokens=6, greedy=True)
    got = [group[0].token_ids for group in generator.generate(prompts, config)]
    expected = [
        _greedy_by_full_forward(model, generator.encode_prompt(p, config), 6, generator.eos_id) for p in prompts
    ]
    assert got == expected
    assert len({tuple(row) for row in expected}) == 3 and sum(len(set(row)) > 1 for row in expected) >= 2  # varied


def test_the_decoding_step_is_the_shared_one_told_the_tokens_and_the_cache_has_the_models_precision(chars, monkeypatch):
    import llmlab.generation.generator as generator_module

    model = tiny_model("llama", vocab_size=chars.vocab_size, block_size=32).to(torch.bfloat16)
    generator = Generator(model, chars, compile="off")
    asked, caches, real_step, real_cache = [], [], generator.decode_step, generator_module.SlotCache
    monkeypatch.setattr(generator, "decode_step", lambda tokens: asked.append(tokens) or real_step(tokens))

    def recording_cache(*args):
        caches.append(args)
        return real_cache(*args)

    monkeypatch.setattr(generator_module, "SlotCache", recording_cache)
    generator.generate(["ab", "c"], GenerationConfig(max_new_tokens=5, greedy=True))
    assert asked == [2 * 5]  # rows x new tokens, for compile="auto"'s count
    (args,) = caches
    assert args[-2:] == (torch.bfloat16, model.device)
