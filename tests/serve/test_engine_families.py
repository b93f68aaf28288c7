"""Every family through the continuous-batching engine: a Llama decoder, an encoder-decoder (T5: its prompt
encoded once into its slot's cross-attention keys) and a decoder with a relative position bias (each row's
queries at their own positions) decode greedily exactly as the offline generator does, alone or among 15
others joining at different steps; an encoder-decoder's limits are its own; a shared prompt prefix is read
once and changes nothing."""

from __future__ import annotations

import pytest
import torch

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.model import build_model
from llmlab.serve.engine import Engine, Sampling
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model
from tests.serve.test_engine import PROMPTS, Collector, offline_greedy


def spread(model: torch.nn.Module) -> torch.nn.Module:
    """Weights N(0, 0.5): an initialised tiny model answers <pad> to every prompt, which would make every
    comparison below pass whatever the engine did; these answer each prompt and position differently."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def t5_and_tokenizer():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=400, family="encoder-decoder")
    return spread(tiny_model("t5", vocab_size=tok.vocab_size, block_size=48, n_layer=2)), tok


@pytest.fixture(scope="module")
def relative_decoder_and_tokenizer():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    torch.manual_seed(0)
    config = ModelConfig.from_preset("gpt2-nano", n_layer=2, n_head=4, n_embd=32, block_size=64,
                                     vocab_size=tok.vocab_size, positions="relative")  # fmt: skip
    return spread(build_model(config)), tok


@pytest.fixture(scope="module")
def llama_and_tokenizer():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    return spread(tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=2)), tok


def served_greedy(engine: Engine, tok, prompts: list[str], lengths: list[int]) -> list[Collector]:
    spec = family_spec(engine.model.config)
    collectors = [Collector() for _ in prompts]
    for prompt, n, c in zip(prompts, lengths, collectors):
        engine.submit(spec.prompt_ids(tok, tok.encode(prompt)), Sampling(max_tokens=n, temperature=0.0), c)
    for c in collectors:
        assert c.done.wait(60)
    return collectors


@pytest.mark.parametrize("fixture", ["llama_and_tokenizer", "t5_and_tokenizer", "relative_decoder_and_tokenizer"])
@pytest.mark.parametrize("together", [1, 16])
def test_greedy_matches_the_offline_generator_alone_or_batched(request, fixture, together):
    model, tok = request.getfixturevalue(fixture)
    engine = Engine(model, tok, max_running=8, max_queue=64)  # 16 sequences through 8 slots: they join as others end
    engine.start()
    try:
        prompts, lengths = PROMPTS[:together], [5 + 3 * (i % 5) for i in range(together)]
        served = served_greedy(engine, tok, prompts, lengths)
        for prompt, n, c in zip(prompts, lengths, served):
            assert c.text == offline_greedy(model, tok, prompt, n), prompt
            assert c.finish in ("stop", "length") and c.events[-1].completion_tokens <= n
        assert len({c.text for c in served}) > together // 2  # the prompts get answers of their own
        assert engine.stats.running == 0 and not any(engine.slots)
    finally:
        engine.stop()


def test_an_encoder_decoder_has_an_encoder_and_a_decoder_context(t5_and_tokenizer):
    model, tok = t5_and_tokenizer
    engine = Engine(model, tok, max_running=2)
    assert engine.room(40) == 48 and engine.prompt_room(10) == 48  # the prompt does not take the decoder's positions
    with pytest.raises(LlmlabError, match="1 more than the encoder's context of 48"):
        engine.submit(list(range(5, 54)), Sampling(max_tokens=4), Collector())
    with pytest.raises(LlmlabError, match="2 more than the decoder's context of 48"):
        engine.submit([5, 6], Sampling(max_tokens=50), Collector())
    engine.start()
    try:  # a 48-token prompt and a 48-token completion both fit
        (c,) = [Collector()]
        engine.submit(list(range(5, 53)), Sampling(max_tokens=48, temperature=1.0, seed=0), c)
        assert c.done.wait(60) and c.finish in ("stop", "length")
    finally:
        engine.stop()


def test_an_encoder_is_refused():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    with pytest.raises(LlmlabError, match="does not generate text"):
        Engine(tiny_model("bert", vocab_size=tok.vocab_size), tok)


SYSTEM = "You are careful. Be brief. "


@pytest.mark.parametrize("fixture", ["llama_and_tokenizer", "relative_decoder_and_tokenizer"])
def test_a_shared_prompt_prefix_is_read_once_and_changes_nothing(request, fixture):
    model, tok = request.getfixturevalue(fixture)
    prompts = [SYSTEM + p for p in PROMPTS[:8]]
    assert len(tok.encode(SYSTEM)) >= 16
    lengths = [6 + (i % 4) for i in range(len(prompts))]
    engine = Engine(model, tok, max_running=3, max_queue=64, prefix_cache=16)  # 8 prompts through 3 slots
    engine.start()
    try:
        first = served_greedy(engine, tok, prompts[:1], lengths[:1])  # nothing to share yet
        assert engine.stats.prefix_tokens == 0
        rest = served_greedy(engine, tok, prompts[1:], lengths[1:])  # each reuses the system prompt's keys
        assert engine.stats.prefix_tokens >= 7 * 16
    finally:
        engine.stop()
    for prompt, n, c in zip(prompts, lengths, first + rest):
        assert c.text == offline_greedy(model, tok, prompt, n), prompt


def test_a_prefix_is_shared_only_under_the_same_adapter_and_when_long_enough(llama_and_tokenizer):
    from llmlab.generation.text_stream import TextStream
    from llmlab.serve.engine import Sequence

    model, tok = llama_and_tokenizer
    engine = Engine(model, tok, max_running=3, prefix_cache=4)
    engine.held[2] = (0, [5, 6, 7, 8, 9, 10])  # slot 2 holds these keys under adapter 0

    def shared(prompt: list[int], adapter: int, slot: int = 0) -> int:
        seq = Sequence(0, prompt, Sampling(), print, TextStream(tok, []), None, adapter=adapter, slot=slot)
        return engine._shared_prefix(seq)

    assert shared([5, 6, 7, 8, 9, 11], adapter=-1) == 0  # the base's keys differ from the adapter's
    assert shared([5, 6, 7, 11], adapter=0) == 0  # 3 tokens: fewer than 4
    engine.cache.keys[0][2, :, :6] = 1.0
    assert shared([5, 6, 7, 8, 9, 10], adapter=0) == 5  # the last prompt token is always computed
    assert bool((engine.cache.keys[0][0, :, :5] == 1.0).all()) and not bool(
        (engine.cache.keys[0][0, :, 5] == 1.0).any()
    )
    assert engine.stats.prefix_tokens == 5


def test_a_free_slot_riding_along_a_step_keeps_the_prefix_it_holds():
    """Slot 0 ends while slot 1 decodes on: the free slot rides along in every step, written past the prefix it
    holds (at position 0 it would overwrite the system prompt's first keys, which the next request reuses)."""
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    torch.manual_seed(0)
    config = ModelConfig.from_preset("gpt2-nano", n_layer=2, n_head=4, n_embd=32, block_size=64,
                                     vocab_size=tok.vocab_size)  # fmt: skip
    model = spread(build_model(config))  # learned positions, no <s>: every position's keys differ
    prompt = tok.encode(SYSTEM + PROMPTS[2])

    def logprobs(engine: Engine) -> list[float]:
        third = Collector()
        engine.submit(prompt, Sampling(max_tokens=6, temperature=0.0, logprobs=0), third)
        assert third.done.wait(60)
        return [e.logprob for e in third.events if e.logprob is not None]

    engine, fresh = Engine(model, tok, max_running=2, prefix_cache=4), Engine(model, tok, prefix_cache=0)
    first, second = Collector(), Collector()
    engine.submit(tok.encode(SYSTEM + PROMPTS[0]), Sampling(max_tokens=2, temperature=0.0), first)
    engine.submit(tok.encode(PROMPTS[1]), Sampling(max_tokens=20, temperature=0.0), second)
    engine.start()
    fresh.start()
    try:
        assert first.done.wait(60) and second.done.wait(60)
        shared, computed = logprobs(engine), logprobs(fresh)
        assert engine.stats.prefix_tokens >= len(tok.encode(SYSTEM)) - 1  # BPE may join its last space onward
    finally:
        engine.stop()
        fresh.stop()
    assert shared == pytest.approx(computed, abs=1e-4)
