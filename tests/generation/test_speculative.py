"""Speculative decoding: the acceptance rule leaves the target's distribution exactly as it was, greedy text
equals plain greedy text whatever the drafter (another model, the target itself, prompt lookup), sampling
draws the target's first token, and a draft with another tokenizer is refused."""

from __future__ import annotations

import pytest
import torch

from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.generation.speculative import (
    LookupDrafter,
    SpeculationStats,
    model_drafter,
    speculative_generate,
    verify,
)
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

PROMPTS = ["def f(x):", "class A:\n    def", "import os\nimport"]


def test_the_acceptance_rule_leaves_the_target_distribution():
    """One draft token x ~ q, then verify: the emitted token is distributed as p whatever q is."""
    torch.manual_seed(0)
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    q = torch.tensor([[0.05, 0.05, 0.1, 0.4, 0.4]])
    rng = torch.Generator().manual_seed(1)
    counts = torch.zeros(5)
    for _ in range(20000):
        x = int(torch.multinomial(q[0], 1, generator=rng))
        accepted, token = verify(p, q, [x], rng)
        counts[x if accepted else token] += 1
    assert (counts / counts.sum() - p[0]).abs().sum() / 2 < 0.015  # total variation, ~0.4 if x were kept


@pytest.fixture(scope="module")
def models():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    target = tiny_model("llama", vocab_size=tok.vocab_size, block_size=128, n_layer=2)
    torch.manual_seed(7)
    draft = tiny_model("llama", vocab_size=tok.vocab_size, block_size=128, n_layer=1)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # another model: it agrees with the target only sometimes
    return tok, target.eval(), draft.eval()


@pytest.mark.parametrize("drafter_kind", ["other model", "itself", "lookup"])
def test_greedy_text_equals_plain_greedy_whatever_the_drafter(models, drafter_kind):
    tok, target, draft = models
    generator = Generator(target, tok, compile="off")
    drafter = {"other model": lambda: model_drafter(generator, draft, tok),
               "itself": lambda: model_drafter(generator, target, tok),
               "lookup": lambda: LookupDrafter(target.config.vocab_size)}[drafter_kind]()  # fmt: skip
    config = GenerationConfig(max_new_tokens=24, min_new_tokens=24, greedy=True)
    plain = [c[0].token_ids for c in generator.generate(PROMPTS, config)]
    for k in (1, 4):
        results, stats = speculative_generate(generator, PROMPTS, config, drafter, k)
        assert [c[0].token_ids for c in results] == plain
        if drafter_kind == "itself":
            assert stats.acceptance_rate == 1.0 and stats.tokens_per_pass > k  # every pass yields k + 1
        assert stats.generated == 72 and stats.proposed > 0


def test_sampling_draws_the_targets_first_token(models):
    tok, target, draft = models
    generator = Generator(target, tok, compile="off")
    config = GenerationConfig(max_new_tokens=2, temperature=1.5, top_k=4)
    ids = torch.tensor([generator.encode_prompt(PROMPTS[0], config)])
    with torch.no_grad():
        from llmlab.generation.speculative import distributions

        p = distributions(target(ids)[0, -1:], config)[0]
        q = distributions(draft(ids)[0, -1:], config)[0]
    assert (p - q).abs().sum() / 2 > 0.3  # the draft alone would be visibly wrong
    drafter, counts = model_drafter(generator, draft, tok), torch.zeros_like(p)
    for seed in range(600):
        sample_config = GenerationConfig(max_new_tokens=2, temperature=1.5, top_k=4, seed=seed)
        results, _ = speculative_generate(generator, [PROMPTS[0]], sample_config, drafter, 1)
        counts[results[0][0].token_ids[0]] += 1
    assert (counts / counts.sum() - p).abs().sum() / 2 < 0.08


def test_bad_drafts_and_settings_are_one_clear_error(models, tmp_path, capsys):
    from llmlab.checkpoint.folder import save_checkpoint

    tok, target, draft = models
    generator = Generator(target, tok, compile="off")
    other_tok = train_tokenizer([SAMPLE_TEXT[::-1]], kind="bpe", vocab_size=300, family="decoder")
    with pytest.raises(LlmlabError, match="tokenizer differs"):
        model_drafter(generator, draft, other_tok)
    with pytest.raises(LlmlabError, match="--speculate"):
        speculative_generate(generator, PROMPTS, GenerationConfig(), LookupDrafter(300), 0)
    save_checkpoint(tmp_path / "target", target, tok)
    save_checkpoint(tmp_path / "draft", draft, tok)
    args = ["generate", tmp_path / "target", "--prompt", PROMPTS[0], "--greedy", "--max-new-tokens", "12", "--json"]
    code, plain, _ = run_cli(capsys, *args)
    code, out, err = run_cli(capsys, *args, "--draft", tmp_path / "draft", "--speculate", "3")
    assert code == 0 and out == plain and "draft tokens accepted" in err
    save_checkpoint(tmp_path / "other", draft, other_tok)
    code, _, err = run_cli(capsys, *args, "--draft", tmp_path / "other")
    assert_one_line_error(code, err, "tokenizer differs")
    assert SpeculationStats().acceptance_rate == 0.0


def test_stop_strings_and_the_end_of_sequence_end_it_where_plain_decoding_does(models):
    tok, target, draft = models
    generator = Generator(target, tok, compile="off")
    for stop in (["e"], [" ("], []):
        config = GenerationConfig(max_new_tokens=30, greedy=True, stop=stop)
        plain = [(c[0].text, c[0].finish_reason, c[0].token_ids) for c in generator.generate(PROMPTS, config)]
        for drafter in (LookupDrafter(target.config.vocab_size), model_drafter(generator, target, tok)):
            results, _ = speculative_generate(generator, PROMPTS, config, drafter, 4)
            assert [(c[0].text, c[0].finish_reason, c[0].token_ids) for c in results] == plain, stop
    with pytest.raises(LlmlabError, match="decoder-only"):
        model_drafter(generator, tiny_model("bert", vocab_size=tok.vocab_size, block_size=128), tok)
