import math

import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator, process_logits
from tests.helpers import tiny_model


def kept(logits: torch.Tensor) -> list[int]:
    return torch.isfinite(logits).nonzero().flatten().tolist()


def test_top_k_keeps_ties_at_the_kth_value():
    logits = torch.tensor([[3.0, 2.0, 2.0, 1.0, 0.5]])
    assert kept(process_logits(logits, 1.0, 2, 1.0)[0]) == [0, 1, 2]
    assert kept(process_logits(logits, 1.0, 1, 1.0)[0]) == [0]


def test_top_p_keeps_the_smallest_set_reaching_p_and_never_none():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert kept(process_logits(logits, 1.0, 0, 0.8)[0]) == [0, 1]
    assert kept(process_logits(logits, 1.0, 0, 0.81)[0]) == [0, 1, 2]
    assert kept(process_logits(logits, 1.0, 0, 0.01)[0]) == [0]
    assert kept(process_logits(logits, 1.0, 0, 1.0)[0]) == [0, 1, 2, 3]


def test_temperature_divides_the_logits():
    logits = torch.randn(2, 10)
    torch.testing.assert_close(process_logits(logits, 0.5, 0, 1.0), logits / 0.5)


@pytest.mark.parametrize("temperature,top_k,top_p", [(0.7, 5, 1.0), (1.0, 0, 0.9), (1.3, 20, 0.6), (0.8, 3, 0.95)])
def test_processing_matches_transformers_warpers(temperature, top_k, top_p):
    torch.manual_seed(1)
    logits = torch.randn(8, 50) * 3
    logits[:, 7] = logits[:, 8]  # a tie
    expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p < 1.0:
        expected = TopPLogitsWarper(top_p)(None, expected)
    ours = process_logits(logits, temperature, top_k, top_p)
    assert torch.equal(torch.isfinite(ours), torch.isfinite(expected))
    torch.testing.assert_close(ours[torch.isfinite(ours)], expected[torch.isfinite(expected)])


def make_generator(char_tokenizer, style="llama"):
    return Generator(tiny_model(style, vocab_size=char_tokenizer.vocab_size), char_tokenizer)


def naive_greedy(model, ids: list[int], n: int) -> list[int]:
    """Reference decoding: recompute the whole sequence at every step, no cache."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids) :]


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_kv_cache_decoding_equals_full_recomputation_token_for_token(char_tokenizer, style):
    gen = make_generator(char_tokenizer, style)
    prompt = "def push(self"
    out = gen.generate([prompt], GenerationConfig(greedy=True, max_new_tokens=30))[0][0]
    expected = naive_greedy(gen.model, char_tokenizer.encode(prompt), 30)
    n = len(out.token_ids)
    assert out.token_ids == expected[:n]
    assert n == 30 or out.finish_reason == "eos"


@pytest.mark.parametrize("style", ["gpt2", "llama"])
def test_left_padded_batch_gives_each_prompt_its_own_output(char_tokenizer, style):
    gen = make_generator(char_tokenizer, style)
    prompts = ["class Stack:\n    def", "a", "return a + b"]
    config = GenerationConfig(greedy=True, max_new_tokens=20)
    batched = [s[0].token_ids for s in gen.generate(prompts, config)]
    alone = [gen.generate([p], config)[0][0].token_ids for p in prompts]
    assert batched == alone


def test_temperature_zero_is_greedy(char_tokenizer):
    gen = make_generator(char_tokenizer)
    a = gen.generate(["def "], GenerationConfig(temperature=0, max_new_tokens=15, seed=3))[0][0]
    b = gen.generate(["def "], GenerationConfig(greedy=True, max_new_tokens=15))[0][0]
    assert a.token_ids == b.token_ids


def test_sampling_is_reproducible_with_a_seed_and_varies_without_one(char_tokenizer):
    gen = make_generator(char_tokenizer)
    config = GenerationConfig(temperature=1.5, max_new_tokens=25, seed=7, num_samples=3)
    first = [c.token_ids for c in gen.generate(["def "], config)[0]]
    second = [c.token_ids for c in gen.generate(["def "], config)[0]]
    assert first == second
    assert len({tuple(s) for s in first}) > 1  # the three samples differ from each other
    other = [
        c.token_ids
        for c in gen.generate(["def "], GenerationConfig(temperature=1.5, max_new_tokens=25, seed=8, num_samples=3))[0]
    ]
    assert other != first


def test_stop_string_ends_a_sample_before_the_stop_text(char_tokenizer):
    gen = make_generator(char_tokenizer)
    free = gen.generate(["def "], GenerationConfig(greedy=True, max_new_tokens=40))[0][0].text
    stop = free[5:7]  # text the model is known to produce
    out = gen.generate(["def "], GenerationConfig(greedy=True, max_new_tokens=40, stop=[stop]))[0][0]
    assert out.finish_reason == "stop"
    assert out.text == free[: free.find(stop)]


def test_end_of_sequence_stops_a_row_while_others_continue(char_tokenizer):
    model = tiny_model("llama", vocab_size=char_tokenizer.vocab_size)
    gen = Generator(model, char_tokenizer)
    eos = char_tokenizer.eos_id
    original = model.forward

    def forward(idx, *args, **kwargs):  # end-of-text is certain right after "!" and impossible elsewhere
        logits = original(idx, *args, **kwargs)
        last = idx[:, -1]
        logits[:, -1, eos] = torch.where(last == char_tokenizer.encode("!")[0], 1e4, -1e4)
        return logits

    model.forward = forward
    out = gen.generate(["ab!", "ab"], GenerationConfig(greedy=True, max_new_tokens=10))
    assert out[0][0].finish_reason == "eos" and out[0][0].text == ""
    assert out[1][0].finish_reason == "length" and len(out[1][0].token_ids) == 10


def test_streaming_yields_the_same_text_as_generate(bpe_tokenizer):
    gen = Generator(tiny_model("gpt2", vocab_size=bpe_tokenizer.vocab_size), bpe_tokenizer)
    config = GenerationConfig(temperature=0.9, top_p=0.9, max_new_tokens=30, seed=1)
    pieces = list(gen.stream("def add", config))
    assert "".join(pieces) == gen.generate(["def add"], config)[0][0].text
    assert len(pieces) > 1


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0.0), "top-p"),
        (dict(top_p=1.5), "top-p"),
        (dict(top_k=-2), "top-k"),
        (dict(max_new_tokens=-1), "max-new-tokens"),
        (dict(num_samples=0), "num-samples"),
    ],
)
def test_invalid_sampling_values_are_refused(char_tokenizer, options, message):
    gen = make_generator(char_tokenizer)
    with pytest.raises(LlmlabError, match=message):
        gen.generate(["a"], GenerationConfig(**options))


def test_prompt_longer_than_the_context_is_refused_or_truncated_on_request(char_tokenizer):
    gen = make_generator(char_tokenizer)  # context 64
    long_prompt = "abc " * 30
    with pytest.raises(LlmlabError, match="context window"):
        gen.generate([long_prompt], GenerationConfig(max_new_tokens=10))
    with pytest.warns(UserWarning, match="truncated"):
        out = gen.generate([long_prompt], GenerationConfig(max_new_tokens=10, greedy=True, truncate_prompt=True))
    tail = char_tokenizer.encode(long_prompt)[-54:]
    assert out[0][0].token_ids == naive_greedy(gen.model, tail, 10)[: len(out[0][0].token_ids)]


def test_tokenizer_and_model_vocabulary_must_agree(char_tokenizer):
    with pytest.raises(LlmlabError, match="vocabulary"):  # tokens the model has no row for
        Generator(tiny_model("llama", vocab_size=char_tokenizer.vocab_size - 1), char_tokenizer)
    Generator(tiny_model("llama", vocab_size=char_tokenizer.vocab_size + 3), char_tokenizer)  # padded, as T5's is


def test_generation_settings_round_trip_through_a_dict_and_ignore_unknown_keys():
    """A checkpoint stores its decoding defaults as a dict; a newer version's extra keys are ignored."""
    config = GenerationConfig(max_new_tokens=7, temperature=0.5, top_k=3, top_p=0.9, stop=["\n"], seed=4)
    data = config.to_dict()
    assert data["max_new_tokens"] == 7 and data["stop"] == ["\n"] and data["seed"] == 4
    assert GenerationConfig.from_dict({**data, "a_future_setting": 1}) == config
    assert GenerationConfig.from_dict({}) == GenerationConfig()


def test_top_p_keeps_the_smallest_set_that_reaches_p_exactly():
    """Probabilities 1/2, 1/4, 1/4 are exact in float32: p = 0.5 keeps one token, p = 0.75 two, and p = 1
    changes nothing, not even tokens whose probability underflows to zero."""
    logits = torch.tensor([[0.0, -math.log(2), -math.log(2)]])
    assert torch.isinf(process_logits(logits, 1.0, 0, 0.5)).tolist() == [[False, True, True]]
    assert torch.isinf(process_logits(logits, 1.0, 0, 0.75)).tolist() == [[False, False, True]]
    peaked = torch.tensor([[100.0, 0.0, 0.0, -5.0]])
    assert torch.equal(process_logits(peaked, 1.0, 0, 1.0), peaked)
    assert torch.equal(process_logits(peaked, 1.0, 4, 1.0), peaked)  # top-k of the whole vocabulary is off


def test_streaming_under_a_grammar_flushes_what_it_held_back(bpe_tokenizer):
    """Each answer ends with a character that could start a stop string, so the stream holds it back until
    end-of-sequence and must still deliver it; the grammar applies to the stream as to generate."""
    from llmlab.generation.constraints import Grammar

    gen = Generator(tiny_model("llama", vocab_size=bpe_tokenizer.vocab_size), bpe_tokenizer, compile="off")
    grammar = Grammar.choice(["yes", "no"])
    for seed in range(3):
        config = GenerationConfig(temperature=1.0, max_new_tokens=10, seed=seed, stop=["s!", "o!"])
        expected = gen.generate(["Answer:"], config, grammar)[0][0]
        assert expected.text in {"yes", "no"} and expected.finish_reason == "eos"
        assert "".join(gen.stream("Answer:", config, grammar)) == expected.text
