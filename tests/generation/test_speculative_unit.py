"""Speculative decoding's parts, one at a time and fast (mutation testing runs this file): the acceptance rule
on distributions chosen so its outcome is certain or its rates known, the rolled-back KV cache against a
full forward pass, prompt lookup's choice of n-gram, one sequence's loop and its statistics, and the
refusals' exact messages. test_speculative.py checks the whole against plain decoding and sampling."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator, process_logits
from llmlab.generation.speculative import (
    CachedModel,
    LookupDrafter,
    ModelDrafter,
    SpeculationStats,
    _extend,
    causal_mask,
    distributions,
    model_drafter,
    speculate,
    speculative_generate,
    verify,
)
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model

V = 40
GREEDY = GenerationConfig(max_new_tokens=8, greedy=True)


def one_hot(*tokens: int, size: int = 5) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(tokens), size).float()


def test_statistics_of_a_run():
    stats = SpeculationStats(proposed=8, accepted=6, target_passes=4, generated=10)
    assert stats.acceptance_rate == 0.75 and stats.tokens_per_pass == 2.5
    assert SpeculationStats().acceptance_rate == 0.0 and SpeculationStats().tokens_per_pass == 0.0


def test_distributions_are_what_sampling_draws_from():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.5, 0.1, 0.2, 0.9]], dtype=torch.bfloat16)
    greedy = distributions(logits, GREEDY)
    assert greedy.dtype == torch.float32 and torch.equal(greedy, one_hot(1, 3, size=4))
    config = GenerationConfig(temperature=0.7, top_k=3, top_p=0.9)
    expected = process_logits(logits.float(), 0.7, 3, 0.9).softmax(-1)
    assert torch.equal(distributions(logits, config), expected)


def test_greedy_verification_keeps_the_prefix_the_target_agrees_with():
    p = one_hot(3, 1, 4, 2)  # the target's argmax after each prefix
    assert verify(p, one_hot(3, 1, 4), [3, 1, 4], None) == (3, 2)  # all agree: the bonus token
    assert verify(p, one_hot(3, 0, 4), [3, 0, 4], None) == (1, 1)  # the second disagrees: the target's instead
    assert verify(p, one_hot(0, 1, 4), [0, 1, 4], None) == (0, 3)
    assert verify(p[:1], torch.zeros(0, 5), [], None) == (0, 3)


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_draft_the_target_is_sure_of_is_always_kept_and_one_it_excludes_never():
    p = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.0, 0.8], [0.0, 0.0, 1.0]])
    q = torch.tensor([[0.0, 1.0, 0.0], [0.3, 0.0, 0.7]])
    for seed in range(20):
        assert verify(p, q, [1, 2], rng(seed))[0] >= 1  # p(1) = q(1) = 1: the ratio is 1
        assert verify(p, q, [1, 0], rng(seed))[0] in (1, 2)
    sure = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert verify(sure, one_hot(1, size=3), [1], rng()) == (1, 2)  # the bonus from p's last row
    # p(0) = 0: rejected; the replacement comes from max(0, p - q) = p's mass off token 0
    assert verify(torch.tensor([[0.0, 0.0, 1.0]]), one_hot(0, size=3), [0], rng()) == (0, 2)


def test_a_draft_the_drafter_gave_no_mass_falls_back_to_the_targets_row():
    """q(x) = 0 (a drafter proposing what it did not predict): the ratio is p(x)/1e-20, rejected only when
    p(x) = 0 too; then max(0, p - q) can be empty, and the target's own row is drawn from."""
    p, q = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    assert verify(p, q, [0], rng()) == (0, 1)


def test_acceptance_happens_at_the_rate_p_over_q_and_rejections_draw_from_the_residual():
    p = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0]])
    q = torch.tensor([[0.6, 0.2, 0.2]])  # draft token 0: accepted with 0.2 / 0.6 = 1/3
    generator, accepted, replaced = rng(1), 0, torch.zeros(3)
    for _ in range(3000):
        kept, token = verify(p, q, [0], generator)
        accepted += kept
        if kept:
            assert token == 0  # the bonus from p's last row
        else:
            replaced[token] += 1
    assert abs(accepted / 3000 - 1 / 3) < 0.03  # binomial sd 0.009
    shares = replaced / replaced.sum()  # max(0, p - q) = (0, 0.3, 0.1), renormalised
    assert shares[0] == 0 and abs(shares[1] - 0.75) < 0.04


def test_the_causal_mask_after_a_filled_cache():
    mask = causal_mask(2, 3, torch.device("cpu"))
    assert mask.shape == (1, 1, 3, 5) and mask.dtype == torch.bool
    assert mask[0, 0].int().tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


@pytest.fixture(scope="module")
def model():
    """A tiny decoder whose greedy text varies token to token (at the usual initial scale, it repeats one
    token forever, and a draft computed from stale logits would still be right)."""
    varied = tiny_model("llama", vocab_size=V, block_size=32)
    with torch.no_grad():
        for p in varied.parameters():
            p.mul_(4)
    return varied


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].float()


def test_a_cached_model_extends_rolls_back_and_syncs_like_full_forward_passes(model):
    ids = [5, 9, 2, 7, 7, 1]
    cached = CachedModel(model, 16)
    with torch.no_grad():
        first = cached.extend(ids[:4])
        second = cached.extend(ids[4:])
    reference = full_logits(model, ids)
    torch.testing.assert_close(torch.cat([first, second]), reference, atol=1e-5, rtol=1e-5)
    assert cached.ids == ids and cached.cache.length == 6
    cached.keep(3)
    assert cached.ids == ids[:3] and cached.cache.length == 3
    cached.keep(5)  # keeping more than is held changes nothing
    assert cached.ids == ids[:3] and cached.cache.length == 3
    other = [5, 9, 2, 8, 3]
    todo = cached.sync(other)
    assert todo == [8, 3] and cached.ids == [5, 9, 2]
    with torch.no_grad():
        torch.testing.assert_close(cached.extend(todo), full_logits(model, other)[3:], atol=1e-5, rtol=1e-5)
    assert cached.sync(other) == [3] and cached.ids == other[:4]  # the last token is fed again for its logits
    assert cached.sync([5, 1]) == [1] and cached.ids == [5]


def test_prompt_lookup_proposes_what_followed_the_longest_then_latest_match():
    drafter = LookupDrafter(10, max_ngram=2)
    drafts, q = drafter.propose([2, 1, 7, 3, 1, 8, 2, 1], 2, GREEDY, None)
    assert drafts == [7, 3] and torch.equal(q, one_hot(7, 3, size=10))  # "2 1" matched, not the later "1"
    assert LookupDrafter(10, max_ngram=1).propose([2, 1, 7, 3, 1, 8, 2, 1], 2, GREEDY, None)[0] == [8, 2]
    assert LookupDrafter(10, max_ngram=1).propose([1, 5, 1, 6, 1], 3, GREEDY, None)[0] == [6, 1]  # the latest
    assert LookupDrafter(10).propose([4, 5, 4], 5, GREEDY, None)[0] == [5, 4]  # no more than there is
    assert LookupDrafter(10).propose([3, 1, 2, 3, 1, 2], 2, GREEDY, None)[0] == [3, 1]  # n = 3 by default
    none, rows = LookupDrafter(10).propose([1, 2, 3], 4, GREEDY, None)
    assert none == [] and rows.shape == (0, 10)
    assert LookupDrafter(10).propose([7], 4, GREEDY, None)[0] == []


def test_extend_emits_the_steps_tokens_until_the_end_of_sequence_or_a_stop():
    new, context = [1], [9, 1]
    assert not _extend(new, context, [2, 3], eos_id=0, stopped=lambda n: False)
    assert new == [1, 2, 3] and context == [9, 1, 2, 3]
    assert _extend(new, context, [4, 0, 5], eos_id=0, stopped=lambda n: False)
    assert new == [1, 2, 3, 4, 0] and context[-1] == 0  # the end-of-sequence is kept, what follows is not
    new = []
    assert _extend(new, [], [6, 7, 8], eos_id=0, stopped=lambda n: n[-1] == 7) and new == [6, 7]


def plain_greedy(model, prompt: list[int], n: int) -> list[int]:
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(full_logits(model, ids)[-1].argmax()))
    return ids[len(prompt) :]


def test_one_sequence_with_the_target_as_its_own_drafter(model):
    """Every draft is accepted: each pass yields k + 1 tokens, fewer when max_new_tokens leaves less room."""
    prompt, stats = [3, 8, 1], SpeculationStats()
    with torch.no_grad():
        new = speculate(CachedModel(model, 32), ModelDrafter(model), prompt, GREEDY, 3, V - 1, stats)
    assert new == plain_greedy(model, prompt, 8)
    assert stats == SpeculationStats(proposed=6, accepted=6, target_passes=2, generated=8)
    config = GenerationConfig(max_new_tokens=6, greedy=True)
    stats = SpeculationStats()
    with torch.no_grad():
        speculate(CachedModel(model, 32), ModelDrafter(model), prompt, config, 3, V - 1, stats)
    assert stats == SpeculationStats(proposed=4, accepted=4, target_passes=2, generated=6)  # 3 + 1, then 1 + 1


def test_one_sequence_with_a_drafter_that_is_always_wrong(model):
    prompt = [3, 8, 1]
    expected = plain_greedy(model, prompt, 8)  # one token a pass; room for 2, 2, 2, 2, 2, 2, 1 and 0 drafts

    class Wrong:
        def propose(self, context, k, config, rng):
            token = (expected[len(context) - len(prompt)] + 1) % V  # never the target's choice
            return [token] * k, one_hot(*[token] * k, size=V)

    stats = SpeculationStats()
    with torch.no_grad():
        new = speculate(CachedModel(model, 32), Wrong(), prompt, GREEDY, 2, V - 1, stats)
    assert new == expected and stats.accepted == 0 and stats.target_passes == 8 and stats.proposed == 13


def test_the_end_of_sequence_is_suppressed_before_min_new_tokens_and_ends_the_sequence_after(model):
    prompt = [3, 8, 1]
    first = plain_greedy(model, prompt, 1)[0]
    stats = SpeculationStats()
    with torch.no_grad():
        ended = speculate(CachedModel(model, 32), LookupDrafter(V), prompt, GREEDY, 2, first, stats)
    assert ended == [first] and stats.generated == 1
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=2, greedy=True)
    with torch.no_grad():
        held = speculate(CachedModel(model, 32), LookupDrafter(V), prompt, config, 2, first, SpeculationStats())
    assert held[0] != first and first not in held[:2]


def test_sampling_with_a_seed_is_reproducible_and_differs_between_seeds(model):
    def run(seed):
        config = GenerationConfig(max_new_tokens=10, temperature=1.0, seed=seed)
        with torch.no_grad():
            return speculate(CachedModel(model, 32), ModelDrafter(model), [3, 8, 1], config, 3, V - 1,
                             SpeculationStats())  # fmt: skip

    assert run(1) == run(1) and run(1) != run(2) and len(run(3)) == 10


def message(call) -> str:
    with pytest.raises(LlmlabError) as caught:
        call()
    return str(caught.value)


def test_refusals_say_what_to_do():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    target = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32)
    generator = Generator(target, tok, compile="off")
    other = train_tokenizer(["0123456789 xyz"], kind="char", family="decoder")
    assert message(lambda: model_drafter(generator, target, other)) == (
        "the draft model's tokenizer differs from the target's, so its token ids mean other text — "
        "draft with a model trained with the same tokenizer, or use --draft lookup"
    )
    for draft in (tiny_model("bert", vocab_size=tok.vocab_size), tiny_model("t5", vocab_size=tok.vocab_size)):
        assert message(lambda d=draft: model_drafter(generator, d, tok)) == (
            "the draft must be a decoder-only model without a soft prompt — "
            "draft with a small decoder of the same tokenizer, or use --draft lookup"
        )
    wider = tiny_model("llama", vocab_size=tok.vocab_size + 8, block_size=32)
    assert message(lambda: model_drafter(generator, wider, tok)) == (
        f"the draft's vocabulary has {tok.vocab_size + 8} entries, the target's {tok.vocab_size} — "
        "draft with a model of the same vocabulary"
    )
    assert isinstance(model_drafter(generator, target, tok), ModelDrafter)
    assert message(lambda: speculative_generate(generator, ["ab"], GREEDY, LookupDrafter(V), 0)) == (
        "--speculate must be >= 1, got 0 — propose e.g. 4 tokens a step"
    )
    seq2seq = Generator(tiny_model("t5", vocab_size=tok.vocab_size), tok, compile="off")
    assert message(lambda: speculative_generate(seq2seq, ["ab"], GREEDY, LookupDrafter(V), 2)) == (
        "speculative decoding here is for decoder-only models without a soft prompt — generate without --draft"
    )


def test_speculative_generate_matches_plain_generation_sample_by_sample():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    target = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32)
    generator = Generator(target, tok, compile="off")
    config = GenerationConfig(max_new_tokens=6, greedy=True, num_samples=2)
    plain = generator.generate(["ab", "the"], config)
    results, stats = speculative_generate(generator, ["ab", "the"], config, model_drafter(generator, target, tok), 2)
    assert [[s.token_ids for s in r] for r in results] == [[s.token_ids for s in r] for r in plain]
    assert [[s.text for s in r] for r in results] == [[s.text for s in r] for r in plain]
    assert stats.generated == 24 and stats.acceptance_rate == 1.0
    sampled = GenerationConfig(max_new_tokens=5, temperature=1.0, seed=4, num_samples=2)
    first, _ = speculative_generate(generator, ["ab"], sampled, LookupDrafter(tok.vocab_size), 2)
    again, _ = speculative_generate(generator, ["ab"], sampled, LookupDrafter(tok.vocab_size), 2)
    assert [s.token_ids for s in first[0]] == [s.token_ids for s in again[0]]
    assert first[0][0].token_ids != first[0][1].token_ids  # seed + n for the n-th sample


def test_speculative_generate_with_one_draft_stop_strings_and_per_sample_seeds():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    target = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32)
    generator = Generator(target, tok, compile="off")
    drafter = model_drafter(generator, target, tok)
    for config in (GenerationConfig(max_new_tokens=8, greedy=True),
                   GenerationConfig(max_new_tokens=12, greedy=True, stop=["e", "a"])):  # fmt: skip
        plain = generator.generate(["ab", "the"], config)
        for k in (1, 3):
            results, stats = speculative_generate(generator, ["ab", "the"], config, drafter, k)
            got = [(s.text, s.token_ids, s.finish_reason) for r in results for s in r]
            assert got == [(s.text, s.token_ids, s.finish_reason) for r in plain for s in r], (config.stop, k)
            assert stats.acceptance_rate == 1.0 and stats.proposed > 0
    two, _ = speculative_generate(generator, ["ab"], GenerationConfig(max_new_tokens=6, seed=4, num_samples=2),
                                  LookupDrafter(tok.vocab_size), 2)  # fmt: skip
    alone, _ = speculative_generate(generator, ["ab"], GenerationConfig(max_new_tokens=6, seed=5),
                                    LookupDrafter(tok.vocab_size), 2)  # fmt: skip
    assert two[0][1].token_ids == alone[0][0].token_ids  # sample n draws with seed + n


def test_unseeded_sampling_draws_its_seed_from_torchs_generator(model):
    config = GenerationConfig(max_new_tokens=10, temperature=1.0)

    def run():
        torch.manual_seed(7)
        with torch.no_grad():
            return speculate(CachedModel(model, 32), ModelDrafter(model), [3, 8, 1], config, 3, V - 1,
                             SpeculationStats())  # fmt: skip

    first = run()
    assert first == run() and len(first) == 10
    torch.manual_seed(8)
    with torch.no_grad():
        assert speculate(CachedModel(model, 32), ModelDrafter(model), [3, 8, 1], config, 3, V - 1,
                         SpeculationStats()) != first  # fmt: skip


def test_a_drafter_that_is_the_target_keeps_every_sampled_draft_and_still_samples(model):
    outputs, stats = set(), SpeculationStats()
    for seed in range(4):
        config = GenerationConfig(max_new_tokens=8, temperature=1.0, seed=seed)
        with torch.no_grad():
            outputs.add(tuple(speculate(CachedModel(model, 32), ModelDrafter(model), [3, 8, 1], config, 3, V - 1,
                                        stats)))  # fmt: skip
    assert stats.accepted == stats.proposed > 0  # q = p: the ratio is 1
    assert len(outputs) > 1
    hot = GenerationConfig(max_new_tokens=8, temperature=3.0)  # flat: the argmax is a small share of the draws
    argmax_share = []
    for seed in range(4):
        prompt = [3, 8, 1]
        with torch.no_grad():
            new = speculate(CachedModel(model, 32), ModelDrafter(model), prompt, dataclasses.replace(hot, seed=seed),
                            3, V - 1, SpeculationStats())  # fmt: skip
            logits = full_logits(model, prompt + new)[len(prompt) - 1 : -1]
        argmax_share += (logits.argmax(-1) == torch.tensor(new)).tolist()
    assert sum(argmax_share) / len(argmax_share) < 0.5  # drafts are sampled too, not the draft's argmax (3 in 4)


def test_a_rejected_draft_leaves_no_trace_in_the_drafters_cache(model):
    other = tiny_model("llama", vocab_size=V, block_size=32, n_layer=1)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(4)
        drafter = ModelDrafter(other)
        first, _ = drafter.propose([3, 8, 1], 3, GREEDY, None)
        for context in ([3, 8, 1, (first[0] + 1) % V], [3, 8, 1, first[0], (first[1] + 1) % V]):
            assert drafter.propose(context, 3, GREEDY, None)[0] == ModelDrafter(other).propose(context, 3, GREEDY,
                                                                                             None)[0]  # fmt: skip


def test_the_draft_model_keeps_to_its_own_context_window(model):
    small = tiny_model("llama", vocab_size=V, block_size=16)
    drafter = ModelDrafter(small)
    with torch.no_grad():
        drafts, rows = drafter.propose(list(range(15)), 4, GREEDY, None)
        assert len(drafts) == 1 and rows.shape == (1, V)  # 15 + 1 positions: the window is full
        assert drafter.propose(list(range(16)), 4, GREEDY, None)[0] == []


def test_verification_stops_at_the_first_rejection_after_an_acceptance():
    p = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # the target: 1, then 2, then 0
    q = torch.tensor([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]])  # the drafts 1 (certain to pass), 1 (certain to fail)
    for seed in range(5):
        assert verify(p, q, [1, 1], rng(seed)) == (1, 2)


def test_prompt_lookup_looks_for_three_token_matches_by_default_and_takes_the_latest():
    context = [1, 2, 3, 4, 9, 2, 3, 4, 8, 1, 2, 3, 4]  # "2 3 4" last followed by 8; "1 2 3 4" by 9
    assert LookupDrafter(10).propose(context, 2, GREEDY, None)[0] == [8, 1]
    assert LookupDrafter(10, max_ngram=4).propose(context, 2, GREEDY, None)[0] == [9, 2]
    overlapping = [1, 1, 1, 5, 1, 1, 1, 1]  # the latest "1 1 1" starts one before the end's
    assert LookupDrafter(10).propose(overlapping, 2, GREEDY, None)[0] == [1]
    assert LookupDrafter(10).propose([4, 4], 3, GREEDY, None)[0] == [4]  # two tokens: a one-token match


def test_speculative_generate_proposes_four_by_default_and_stops_at_the_end_of_sequence():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    target = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32)
    with torch.no_grad():
        for p in target.parameters():
            p.mul_(4)
    generator = Generator(target, tok, compile="off")
    asked = []

    class Recording:
        def propose(self, context, k, config, rng):
            asked.append(k)
            return [], torch.zeros(0, tok.vocab_size)

    config = GenerationConfig(max_new_tokens=12, greedy=True)
    results, _ = speculative_generate(generator, [" []"], config, Recording())
    assert asked[0] == 4
    ((plain,),) = generator.generate([" []"], config)
    assert plain.finish_reason == "eos" and len(plain.token_ids) < 12  # this prompt ends before the budget
    assert (results[0][0].token_ids, results[0][0].finish_reason) == (plain.token_ids, "eos")
    assert results[0][0] == plain  # the prompt and text too


def test_a_soft_prompt_on_the_draft_or_the_target_is_refused():
    from llmlab.model.soft_prompt import add_soft_prompt

    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    generator = Generator(tiny_model("llama", vocab_size=tok.vocab_size, block_size=32), tok, compile="off")
    prompted = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32)
    add_soft_prompt(prompted, 2)
    assert message(lambda: model_drafter(generator, prompted, tok)) == (
        "the draft must be a decoder-only model without a soft prompt — "
        "draft with a small decoder of the same tokenizer, or use --draft lookup"
    )
    prompted_target = Generator(prompted, tok, compile="off")
    assert message(lambda: speculative_generate(prompted_target, ["ab"], GREEDY, LookupDrafter(V), 2)) == (
        "speculative decoding here is for decoder-only models without a soft prompt — generate without --draft"
    )


def test_the_end_of_sequence_is_allowed_from_min_new_tokens_on_within_one_pass(model):
    prompt = [3, 8, 1]
    t0, t1, t2 = plain_greedy(model, prompt, 3)
    assert t2 not in (t0, t1)  # the varied model: the third token is a new one, used as the end of sequence
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=2, greedy=True)
    stats = SpeculationStats()
    with torch.no_grad():
        new = speculate(CachedModel(model, 32), ModelDrafter(model), prompt, config, 3, t2, stats)
    assert new == [t0, t1, t2] and stats.target_passes == 1  # drafted, verified and ended in the first pass
