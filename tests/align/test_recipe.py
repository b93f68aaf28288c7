"""`llmlab align`: DPO and the reference-free losses move a decoder toward the chosen completions, the
reference is the base (computed once), a run resumes exactly, and bad preference data is one line."""

from __future__ import annotations

import json
import random

import pytest
import torch

from llmlab.align.config import AlignConfig
from llmlab.align.data import collate_pairs, pair_rows, read_pairs
from llmlab.align.recipe import align, pair_logps
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.load import load_checkpoint
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    tok = train_tokenizer([SAMPLE_TEXT, "the film was good bad great awful"], kind="char", family="decoder")
    save_checkpoint(root / "base", tiny_model("llama", vocab_size=tok.vocab_size, block_size=64), tok)
    rng = random.Random(0)
    pairs = [{"prompt": f"the film {rng.choice(['was', 'is'])}", "chosen": rng.choice([" good", " great"]),
              "rejected": rng.choice([" bad", " awful"])} for _ in range(64)]  # fmt: skip
    (root / "prefs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return root


def options(folders, out, **overrides) -> AlignConfig:
    fields = dict(base=str(folders / "base"), data=[str(folders / "prefs.jsonl")], out=str(out), batch_size=8,
                  max_steps=40, eval_interval=20, eval_iters=2, log_interval=10, lr=5e-3, device="cpu", dtype="fp32",
                  lora_targets=["all-linear"], beta=0.5)  # fmt: skip
    return AlignConfig(**{**fields, **overrides})


def _margin(source, folders) -> float:
    """Mean log-probability margin of chosen over rejected completions on the training pairs."""
    ckpt = load_checkpoint(source)
    rows = pair_rows(read_pairs(str(folders / "prefs.jsonl")), ckpt.tokenizer, 64, "prefs")
    with torch.no_grad():
        logps = pair_logps(ckpt.model, collate_pairs(rows, list(range(64)), ckpt.tokenizer.pad_id or 0))
    return float((logps.chosen - logps.rejected).mean())


@pytest.mark.parametrize("method,tune", [("dpo", "lora"), ("ipo", "full"), ("simpo", "lora"), ("orpo", "lora")])
def test_alignment_prefers_the_chosen_completions(folders, tmp_path, method, tune):
    lines = []
    result = align(options(folders, tmp_path / "out", method=method, tune=tune), log=lines.append)
    assert result.step == 40
    assert _margin(tmp_path / "out", folders) > _margin(folders / "base", folders) + 1.0
    records = [json.loads(r) for r in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "val_rewards_accuracy" in r][-1]
    assert last["val_rewards_accuracy"] == 1.0 and last["val_rewards_margin"] > 0
    if method in ("dpo", "ipo"):
        assert any(line.startswith("reference: log-probabilities of 64 pairs") for line in lines)
        assert "val_chosen_logratio" in last


def test_dpo_resumes_exactly(folders, tmp_path):
    whole = align(options(folders, tmp_path / "whole", max_steps=20, eval_interval=10), log=lambda s: None)

    def stop_at_10(step: int, loss: float) -> None:
        if step == 10:
            raise KeyboardInterrupt

    align(options(folders, tmp_path / "part", max_steps=20, eval_interval=10), on_step=stop_at_10, log=lambda s: None)
    resumed = align(options(folders, tmp_path / "part", max_steps=20, eval_interval=10, resume=True),
                    log=lambda s: None)  # fmt: skip
    assert min(resumed.train_losses) == 11
    for step, loss in resumed.train_losses.items():
        assert loss == whole.train_losses[step], step


@pytest.mark.parametrize(
    "records,extra,fragment",
    [
        ([{"prompt": "a", "chosen": "x", "rejected": "x"}], [], "record 1 has the same chosen and rejected"),
        ([{"prompt": "a", "chosen": "x"}], [], "record 1 has no 'rejected' text"),
        ([{"prompt": "a" * 80, "chosen": "x", "rejected": "y"}] * 3, [], "the context 64"),
        ([{"prompt": "a", "chosen": "x", "rejected": "y"}] * 3, ["--beta", "0"], "--beta must be positive"),
        ([{"prompt": "a", "chosen": "x", "rejected": "y"}] * 3, ["--method", "kto"], "unknown --method 'kto'"),
        ([{"prompt": "a", "chosen": "x", "rejected": "y"}] * 3, ["--method", "ppo"], "--data does not apply"),
    ],
)
def test_bad_preferences_are_one_line_and_write_nothing(folders, tmp_path, capsys, records, extra, fragment):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    code, _, err = run_cli(capsys, "align", folders / "base", "--data", data, "--out", tmp_path / "out",
                           "--max-steps", "2", "--device", "cpu", *extra)  # fmt: skip
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_a_completion_cut_by_the_length_is_read_without_an_end(folders, tmp_path):
    """`llmlab preferences` marks samples cut by --max-new-tokens; DPO must not teach them to end there."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "the film", "chosen": " good", "rejected": " bad", "chosen_ended": False})
                    + "\n")  # fmt: skip
    tok = load_checkpoint(folders / "base").tokenizer
    rows = pair_rows(read_pairs(str(path)), tok, 64, "pairs")
    chosen_labels, rejected_labels = rows.chosen[0][1], rows.rejected[0][1]
    assert chosen_labels[-1] == tok.encode(" good")[-1]  # the last scored token is the text's own
    assert rejected_labels[-1] == tok.eos_id and tok.eos_id not in chosen_labels


def test_preference_pairs_record_which_samples_ended():
    from llmlab.align.sampling import Scored, preference_pairs

    pairs, skipped = preference_pairs([Scored("p", ["a", "b"], [1.0, 0.0], [False, True])])
    assert skipped == 0 and pairs[0]["chosen_ended"] is False and pairs[0]["rejected_ended"] is True


def test_preference_pairs_below_the_margin_are_skipped():
    from llmlab.align.sampling import Scored, preference_pairs

    scored = [Scored("near", ["a", "b"], [0.9, 0.7], [True, True]), Scored("far", ["c", "d"], [0.9, 0.1], [True, True]),
              Scored("same", ["e", "f"], [0.5, 0.5], [True, True])]  # fmt: skip
    pairs, skipped = preference_pairs(scored, min_margin=0.5)
    assert [p["prompt"] for p in pairs] == ["far"] and skipped == 2
    pairs, skipped = preference_pairs(scored)  # no margin: only a tie is skipped
    assert [p["prompt"] for p in pairs] == ["near", "far"] and skipped == 1
