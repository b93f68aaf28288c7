"""`llmlab align --method ppo|grpo`: online RLHF raises the reward it is trained on, starts at zero KL,
samples from the policy's own distribution, resumes exactly inside a rollout, reports a collapse, and
refuses bad options in one line."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from llmlab.align.config import AlignConfig
from llmlab.align.online import RolloutSource
from llmlab.align.recipe import align
from llmlab.align.rl_losses import KLController
from llmlab.align.rollout import ActorCritic, RolloutSettings, collect, sample
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.load import load_checkpoint
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

WORDS = ["was", "is", "seems", "looked", "felt", "sounded", "ran", "went"]


def vowel_count(prompts, completions):
    """A reward the policy can learn quickly: the number of vowels it writes."""
    return [float(sum(c.count(v) for v in "aeiou")) for c in completions]


def not_a_number(prompts, completions):
    return [math.nan for _ in completions]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("online")
    tok = train_tokenizer([SAMPLE_TEXT, "the film was good bad great awful"], kind="char", family="decoder")
    torch.manual_seed(0)
    generation = GenerationConfig(temperature=0.3, top_k=2)  # defaults a rollout must not sample with
    save_checkpoint(root / "base", tiny_model("llama", vocab_size=tok.vocab_size, block_size=64), tok, generation)
    (root / "prompts.txt").write_text("\n".join(f"the film {w}" for w in WORDS * 4) + "\n")
    return root


def options(folders, out, **overrides) -> AlignConfig:
    fields = dict(base=str(folders / "base"), method="ppo", prompts=str(folders / "prompts.txt"),
                  reward="tests.align.test_online:vowel_count", out=str(out), batch_size=8, rollout_prompts=8,
                  ppo_epochs=2, max_new_tokens=6, max_steps=30, eval_interval=1000, eval_iters=1, log_interval=10,
                  lr=2e-2, device="cpu", dtype="fp32", lora_targets=["all-linear", "lm_head"])  # fmt: skip
    return AlignConfig(**{**fields, **overrides})


def sampled_reward(source, adapter=None) -> float:
    """Mean reward of 64 completions sampled (temperature 1, a fixed seed) from the training prompts."""
    ckpt = load_checkpoint(source, adapter=adapter)
    config = GenerationConfig(max_new_tokens=6, temperature=1.0, seed=0, num_samples=8)
    samples = Generator(ckpt.model, ckpt.tokenizer).generate([f"the film {w}" for w in WORDS], config)
    return sum(vowel_count([], [c.text for row in samples for c in row])) / 64


@pytest.mark.parametrize("method,tune,extra", [
    ("ppo", "lora", {}), ("grpo", "lora", {"group_size": 4, "rollout_prompts": 4}), ("ppo", "full", {"lr": 5e-3}),
])  # fmt: skip
def test_online_alignment_raises_the_reward(folders, tmp_path, method, tune, extra):
    lines = []
    result = align(options(folders, tmp_path / "out", method=method, tune=tune, **extra), log=lines.append)
    assert result.step == 30
    before = sampled_reward(folders / "base")
    after = sampled_reward(folders / "base", tmp_path / "out") if tune == "lora" else sampled_reward(tmp_path / "out")
    assert after > 1.8 * before, (before, after)  # from ~1 vowel in 6 tokens
    first = next(line for line in lines if line.startswith("rollout 1:"))
    assert "KL 0.000" in first  # the policy starts as the reference
    if method == "ppo":
        kept = load_file(tmp_path / "out" / "optimizer.safetensors")
        assert "kept.value_head.weight" in kept and float(kept["kept.value_head.weight"].abs().sum()) > 0


def test_rollouts_sample_the_unmodified_distribution(folders):
    """The base's saved defaults (temperature 0.3, top-k 2) are not used: tokens outside the top 2 appear."""
    ckpt = load_checkpoint(folders / "base")
    generator = Generator(ckpt.model, ckpt.tokenizer)
    settings = RolloutSettings("ppo", max_new_tokens=12, group=1)
    completions = sample(generator, ["the film was"] * 16, settings, seed=0)
    actor = ActorCritic(ckpt.model, with_value=False)
    rollout = collect(actor, generator, ["the film was"] * 16, vowel_count, settings,
                      lambda i, lab, m: torch.zeros(m.shape), KLController(0.0), 0, 0, torch.device("cpu"))  # fmt: skip
    logits = ckpt.model(rollout.inputs)
    scored = rollout.labels != -100
    top2 = logits.topk(2, dim=-1).indices[scored]
    outside = (top2 != rollout.labels[scored][:, None]).all(dim=-1).float().mean()
    assert outside > 0.3 and len({c.text for c in completions}) > 8


@pytest.mark.parametrize("method,stop,extra", [
    ("ppo", 3, {"kl_target": 1.0, "kl_horizon": 50}),  # a rollout is 2 steps: step 3 is inside one
    ("grpo", 2, {"group_size": 4, "rollout_prompts": 4}),  # at a rollout's boundary
])  # fmt: skip
def test_a_stopped_run_resumes_exactly(folders, tmp_path, method, stop, extra):
    common = dict(method=method, lr=1e-2, **extra)
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    align(options(folders, straight, max_steps=6, **common))
    align(options(folders, stopped, max_steps=stop, **common))
    align(options(folders, stopped, max_steps=6, resume=True, **common))
    a, b = load_file(straight / "adapter.safetensors"), load_file(stopped / "adapter.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    kept_a = load_file(straight / "optimizer.safetensors")
    kept_b = load_file(stopped / "optimizer.safetensors")
    assert kept_a["kept.kl_coef"] == kept_b["kept.kl_coef"]
    if "kl_target" in extra:
        assert float(kept_a["kept.kl_coef"]) != 0.05  # the adaptive coefficient moved


def test_a_base_trained_with_dropout_starts_at_ratio_one_and_zero_kl(folders, tmp_path):
    """Dropout (attention's included) is off: the first pass's ratio is exactly 1 and the first KL 0."""
    tok = load_checkpoint(folders / "base").tokenizer
    save_checkpoint(tmp_path / "base", tiny_model("gpt2", vocab_size=tok.vocab_size, block_size=64, dropout=0.2), tok)
    lines = []
    align(options(folders, tmp_path / "out", base=str(tmp_path / "base"), max_steps=1, log_interval=1),
          log=lines.append)  # fmt: skip
    assert "KL 0.000" in next(line for line in lines if line.startswith("rollout 1:"))
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    baseline, first = rows[0], next(r for r in rows if "train_approx_kl" in r)
    assert baseline["step"] == 0 and baseline["val_kl"] == 0  # the reference validated against itself first
    assert first["train_approx_kl"] == 0 and first["train_clipfrac"] == 0


def test_a_collapse_is_reported(folders):
    from llmlab.align.rollout import RolloutBatch

    def same_answer(prompts, seed):
        z = torch.zeros(8, 3)
        stats = {"score": 1.0, "kl": 9.0, "kl_coef": 0.05, "length": 3.0, "ended": 1.0, "distinct": 1 / 8,
                 "distinct_2": 0.1}  # fmt: skip
        return RolloutBatch(torch.zeros(8, 4, dtype=torch.long), torch.zeros(8, 4, dtype=torch.long),
                            z.bool(), z, z, z, z, z, torch.zeros(8), stats)  # fmt: skip

    lines = []
    cfg = options(folders, "unused")
    source = RolloutSource(same_answer, ["a"] * 8, ["b"], cfg, KLController(0.05), lines.append)
    source(False, 0, 0)
    assert any(line.startswith("warning: collapse at rollout 1: only 12% of 8 completions differ") for line in lines)


@pytest.mark.parametrize("args,fragments", [
    (["--method", "ppo"], ["needs a --reward"]),
    (["--method", "ppo", "--reward", "vader", "--beta", "0.1"], ["--beta does not apply to --method ppo"]),
    (["--method", "grpo", "--reward", "vader", "--kl-target", "3"], ["--kl-target does not apply to --method grpo"]),
    (["--method", "grpo", "--reward", "vader", "--gamma", "0.9"], ["--gamma does not apply to --method grpo"]),
    (["--method", "ppo", "--reward", "vader", "--kl-coef", "0", "--kl-target", "2"], ["cannot start at 0"]),
    (["--method", "ppo", "--reward", "tests.align.test_online:not_a_number"], ["returned nan"]),
    (["--method", "ppo", "--reward", "vader", "--rollout-prompts", "3"], ["does not split into micro-batches"]),
    (["--method", "ppo", "--reward", "vader", "--max-new-tokens", "60"], ["prompt has 11 tokens", "context window"]),
])  # fmt: skip
def test_bad_online_options_are_one_line(folders, tmp_path, capsys, args, fragments):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "align", str(folders / "base"), "--prompts", str(folders / "prompts.txt"),
                           "--out", str(out), "--device", "cpu", *args)  # fmt: skip
    assert_one_line_error(code, err, *fragments)
    assert not (out / "adapter.safetensors").exists()


def test_an_offline_option_given_to_another_method_is_refused(folders, tmp_path, capsys):
    code, _, err = run_cli(capsys, "align", str(folders / "base"), "--data", "x.jsonl", "--method", "ipo",
                           "--label-smoothing", "0.1", "--out", str(tmp_path / "o"))  # fmt: skip
    assert_one_line_error(code, err, "--label-smoothing does not apply to --method ipo")
    code, _, err = run_cli(capsys, "align", str(folders / "base"), "--data", "x.jsonl", "--ppo-epochs", "2",
                           "--out", str(tmp_path / "o"))  # fmt: skip
    assert_one_line_error(code, err, "--ppo-epochs does not apply to --method dpo")
