"""`llmlab reward`: the Bradley-Terry loss by hand, and a reward model that learns which completion is
preferred, held out, and scores new text through `llmlab classify`."""

from __future__ import annotations

import json
import random

import pytest
import torch

from llmlab.align.reward import RewardConfig, bradley_terry_loss, train_reward
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.load import load_checkpoint
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model


def test_the_bradley_terry_loss_is_the_formula():
    chosen, rejected = torch.tensor([1.5, -0.2, 0.0]), torch.tensor([0.5, 0.3, 0.0])
    by_hand = [-torch.log(1 / (1 + torch.exp(-(c - r)))) + 0.1 * (c + r) ** 2 for c, r in zip(chosen, rejected)]
    assert torch.allclose(bradley_terry_loss(chosen, rejected, 0.1), torch.stack(by_hand))


@pytest.mark.parametrize("style,family,tune", [("bert", "encoder", "full"), ("llama", "decoder", "lora")])
def test_a_reward_model_learns_the_preference_and_scores_text(tmp_path, capsys, style, family, tune):
    tok = train_tokenizer([SAMPLE_TEXT, "the film was good bad great awful"], kind="char", family=family)
    save_checkpoint(tmp_path / "base", tiny_model(style, vocab_size=tok.vocab_size, block_size=64), tok)
    rng = random.Random(0)
    pairs = [{"prompt": "the film was", "chosen": rng.choice([" good", " great"]),
              "rejected": rng.choice([" bad", " awful"])} for _ in range(80)]  # fmt: skip
    (tmp_path / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    config = RewardConfig(base=str(tmp_path / "base"), data=[str(tmp_path / "prefs.jsonl")], out=str(tmp_path / "rm"),
                          tune=tune, batch_size=8, max_steps=60, eval_interval=60, eval_iters=2, lr=3e-3,
                          device="cpu", dtype="fp32", lora_targets=["all-linear"])  # fmt: skip
    train_reward(config, log=lambda s: None)
    records = [json.loads(r) for r in (tmp_path / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [r for r in records if "val_accuracy" in r][-1]["val_accuracy"] == 1.0
    assert load_checkpoint(tmp_path / "rm").model.config.task == "regress"
    code, out, _ = run_cli(capsys, "classify", tmp_path / "rm", "--text", "the film was great", "--text",
                           "the film was awful", "--json")  # fmt: skip
    good, bad = (json.loads(line)["scores"]["score"] for line in out.splitlines())
    assert code == 0 and good > bad


def test_a_reward_model_on_an_encoder_decoder_is_refused(tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    model = tiny_model("t5", vocab_size=tok.vocab_size)
    model.config.decoder_start_token_id = tok.pad_id
    save_checkpoint(tmp_path / "t5", model, tok)
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    code, _, err = run_cli(capsys, "reward", tmp_path / "t5", "--data", tmp_path / "p.jsonl", "--out",
                           tmp_path / "out", "--device", "cpu")  # fmt: skip
    assert_one_line_error(code, err, "is an encoder-decoder")
    assert not (tmp_path / "out").exists()
