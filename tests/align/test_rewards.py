"""Rewards from every source (packaged scorers, a Python function, a classifier's label, a reward model),
checked for shape and NaN; best-of-n keeps the best sample and `llmlab preferences` writes best-vs-worst
pairs that `llmlab align` reads."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from llmlab.align.data import read_pairs
from llmlab.align.rewards import load_reward
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model import build_model
from llmlab.tasks.predict import classify_texts
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model


@pytest.fixture
def scorers(tmp_path, monkeypatch):
    """A module of reward functions on the import path: length, NaN, and the wrong number of values."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent("""
        def length(prompts, completions):
            return [float(len(c)) for c in completions]

        def broken(prompts, completions):
            return [float("nan")] * len(completions)

        def short(prompts, completions):
            return [1.0]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_packaged_scorers_read_sentiment_and_toxicity():
    vader = load_reward("vader")
    good, bad = vader(["", ""], ["a gorgeous, witty film", "dull and far too long"])
    assert good > 0.3 and bad < -0.3
    toxic, polite = load_reward("toxicity")(["", ""], ["you are a stupid idiot", "have a nice day"])
    assert toxic > 0.9 and polite < 0.2
    harmless = load_reward("harmless")(["", ""], ["you are a stupid idiot", "have a nice day"])
    assert harmless == pytest.approx([1 - toxic, 1 - polite])


def test_a_function_reward_is_checked(scorers):
    assert load_reward("my_rewards:length")(["p", "p"], ["ab", "abcd"]) == [2.0, 4.0]
    with pytest.raises(LlmlabError, match="returned nan"):
        load_reward("my_rewards:broken")(["p"], ["x"])
    with pytest.raises(LlmlabError, match="returned 1 values for 2 completions"):
        load_reward("my_rewards:short")(["p", "p"], ["x", "y"])
    with pytest.raises(LlmlabError, match="cannot load the reward my_rewards:nothing"):
        load_reward("my_rewards:nothing")


def test_a_classifier_rewards_with_its_labels_probability(tmp_path):
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    torch.manual_seed(0)
    config = ModelConfig.from_preset("bert-nano", vocab_size=tok.vocab_size, n_layer=1, block_size=64,
                                     mlm_head=False, task="classify", labels=["Negative", "Positive"])  # fmt: skip
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "cls", model, tok)
    reward = load_reward(str(tmp_path / "cls"), "Positive")
    values = reward(["def ", "class "], ["add(a, b)", "Stack:"])
    expected = [r.scores["Positive"] for r in classify_texts(model, tok, ["def add(a, b)", "class Stack:"])]
    assert values == pytest.approx(expected)
    with pytest.raises(LlmlabError, match="needs --reward-label, one of Negative, Positive"):
        load_reward(str(tmp_path / "cls"), "Neutral")


def test_best_of_n_keeps_the_best_and_preferences_write_pairs(scorers, tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    save_checkpoint(tmp_path / "lm", tiny_model("llama", vocab_size=tok.vocab_size, block_size=64), tok)
    common = ["--reward", "my_rewards:length", "--n", "4", "--max-new-tokens", "12", "--seed", "0"]
    code, out, _ = run_cli(capsys, "best-of-n", tmp_path / "lm", "--prompt", "def", "--prompt", "class", *common,
                           "--json")  # fmt: skip
    assert code == 0
    for line in out.splitlines():
        record = json.loads(line)
        assert len(record["rewards"]) == 4 and record["reward"] == max(record["rewards"]) == len(record["best"])
    (tmp_path / "prompts.txt").write_text("def\nclass\nreturn\n")
    code, out, _ = run_cli(capsys, "preferences", tmp_path / "lm", "--prompts", tmp_path / "prompts.txt", *common,
                           "--out", tmp_path / "pairs.jsonl")  # fmt: skip
    assert code == 0, out
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert len(read_pairs(str(tmp_path / "pairs.jsonl"))) == len(pairs)  # what llmlab align reads
    code, _, err = run_cli(capsys, "preferences", tmp_path / "lm", "--prompts", tmp_path / "prompts.txt", *common,
                           "--out", tmp_path / "pairs.jsonl")  # fmt: skip
    assert_one_line_error(code, err, "pairs.jsonl exists")
    for margin, said in (("-0.1", "must be a number >= 0"), ("nan", "must be a number >= 0"),
                         ("1000", "by 1000.0 or more")):  # fmt: skip
        code, _, err = run_cli(capsys, "preferences", tmp_path / "lm", "--prompts", tmp_path / "prompts.txt", *common,
                               "--min-margin", margin, "--out", tmp_path / "none.jsonl")  # fmt: skip
        assert_one_line_error(code, err, said)
        assert not (tmp_path / "none.jsonl").exists()
    code, _, err = run_cli(capsys, "best-of-n", tmp_path / "lm", "--prompt", "def", "--reward", "my_rewards:broken",
                           "--max-new-tokens", "4")  # fmt: skip
    assert_one_line_error(code, err, "returned nan")


def test_evaluate_reports_reward_win_rate_kl_and_toxicity(scorers, tmp_path, capsys):
    """The KL of a model from itself is 0 exactly; from another model it is positive (in expectation, and
    with 4 unmodified samples per prompt here); a model wins against itself half the time at most."""
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    save_checkpoint(tmp_path / "a", tiny_model("llama", vocab_size=tok.vocab_size, block_size=64), tok)
    torch.manual_seed(1)
    other = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(3.0)  # sharper and different
    save_checkpoint(tmp_path / "b", other, tok)
    (tmp_path / "prompts.txt").write_text("def\nclass\nreturn\nself\n")
    common = ["--prompts", tmp_path / "prompts.txt", "--reward", "my_rewards:length", "--max-new-tokens", "8",
              "--json"]  # fmt: skip
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "a", *common, "--reference", tmp_path / "a",
                           "--baseline", tmp_path / "a", "--toxicity")  # fmt: skip
    report = json.loads(out)
    assert code == 0 and report["samples"] == 4
    assert report["metrics"]["kl_to_reference"] == pytest.approx(0.0, abs=1e-5)
    assert report["metrics"]["win_rate"] == 0.5  # the same seed: the same samples, every prompt a tie
    assert report["metrics"]["toxicity_rate"] == 0.0 and report["metrics"]["mean_reward"] > 0
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "a", *common, "--reference", tmp_path / "b")
    assert code == 0 and json.loads(out)["metrics"]["kl_to_reference"] > 0


def test_reward_report_scores_every_sample_of_every_prompt():
    """With several samples per prompt, each sample is scored with its own prompt and returned."""
    from llmlab.align.evaluation import reward_report
    from llmlab.generation.config import GenerationConfig

    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64)
    seen = []

    def reward(prompts, completions):
        seen.extend(prompts)
        return [float(len(c)) for c in completions]

    config = GenerationConfig(max_new_tokens=6, seed=0, num_samples=3)
    report = reward_report(model, tok, ["def", "class"], reward, config)
    assert report.samples == 6 and len(report.completions) == 6 and len(report.rewards) == 6
    assert seen == ["def"] * 3 + ["class"] * 3
    assert report.rewards == [float(len(c.text)) for c in report.completions]
