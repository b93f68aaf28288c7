"""Packed preference pairs (`llmlab align --packing`): the prompt read once for both completions and pairs laid
end to end give every completion the log-probability the stacked rows give, in fewer tokens; the run learns
as the stacked one does; a model whose position bias packing would move is refused."""

from __future__ import annotations

import json
import random

import pytest
import torch

from llmlab.align.data import collate_pairs, pair_rows, read_pairs
from llmlab.align.packing import collate_packed_pairs
from llmlab.align.recipe import align, pair_logps
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.config import ModelConfig
from llmlab.model import build_model
from llmlab.tokenizer import train_tokenizer
from tests.align.test_recipe import _margin, folders, options  # noqa: F401
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model


def _pairs(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = "the film was good bad great awful plot long short dull fine".split()
    say = lambda k: " ".join(rng.choice(words) for _ in range(k))  # noqa: E731
    return [{"prompt": say(rng.randint(1, 6)), "chosen": " " + say(rng.randint(1, 9)),
             "rejected": " " + say(rng.randint(1, 9))} for _ in range(n)]  # fmt: skip


@pytest.mark.parametrize("style", ["llama", "gpt2"])
@pytest.mark.parametrize("row_tokens", [64, 20])  # 20: several rows, and segments longer than a row
def test_packed_pairs_score_each_completion_as_its_own_row_does(tmp_path, style, row_tokens):
    tok = train_tokenizer([SAMPLE_TEXT, "the film was good bad great awful plot long short dull fine"], kind="char",
                          family="decoder")  # fmt: skip
    model = tiny_model(style, vocab_size=tok.vocab_size, block_size=64)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs(12)))
    rows = pair_rows(read_pairs(str(tmp_path / "p.jsonl")), tok, 64, "p")
    picked = [3, 0, 7, 11, 5, 9, 1]
    stacked, packed = collate_pairs(rows, picked, 0), collate_packed_pairs(rows, picked, 0, row_tokens)
    with torch.no_grad():
        want, got = pair_logps(model, stacked), pair_logps(model, packed)
    for field in ("chosen", "rejected"):
        torch.testing.assert_close(getattr(got, field), getattr(want, field), rtol=0, atol=1e-4)
    assert torch.equal(got.chosen_tokens, want.chosen_tokens) and torch.equal(got.rejected_tokens, want.rejected_tokens)
    assert int(packed.attention_mask.sum()) < int(stacked.attention_mask.sum())  # each prompt read once
    assert packed.tokens < stacked.inputs.numel()
    if row_tokens == 20:
        assert packed.inputs.shape[0] > 1


def test_a_packed_dpo_run_learns_as_the_stacked_one(folders, tmp_path):  # noqa: F811
    # no LoRA dropout: its random masks would differ between the two layouts
    packed = align(options(folders, tmp_path / "packed", packing=True, lora_dropout=0.0), log=lambda s: None)
    stacked = align(options(folders, tmp_path / "stacked", lora_dropout=0.0), log=lambda s: None)
    assert packed.step == 40
    assert _margin(tmp_path / "packed", folders) > _margin(folders / "base", folders) + 1.0
    for step in range(1, 41):  # the same batches and the same numbers, up to float rounding
        assert packed.train_losses[step] == pytest.approx(stacked.train_losses[step], rel=1e-3, abs=1e-4), step


def test_packing_refuses_a_relative_position_bias(tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT, "the film was good bad"], kind="char", family="decoder")
    config = ModelConfig.from_preset("gpt2-nano", n_layer=1, n_head=2, n_embd=16, block_size=64,
                                     vocab_size=tok.vocab_size, positions="relative")  # fmt: skip
    save_checkpoint(tmp_path / "base", build_model(config), tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in _pairs(8)))
    code, _, err = run_cli(capsys, "align", tmp_path / "base", "--data", tmp_path / "p.jsonl", "--out",
                           tmp_path / "out", "--max-steps", "2", "--device", "cpu", "--packing")  # fmt: skip
    assert_one_line_error(code, err, "--packing needs positions the model reads per token")
    assert not (tmp_path / "out").exists()


def test_an_empty_cut_completion_scores_nothing_in_both_layouts():
    from llmlab.align.data import Pair

    tok = train_tokenizer([SAMPLE_TEXT, "the film was good bad"], kind="char", family="decoder")
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64)
    pairs = [Pair("the film", "", " bad", chosen_ended=False), Pair("the film was", " good", " bad")]
    rows = pair_rows(pairs, tok, 64, "p")
    with torch.no_grad():
        want = pair_logps(model, collate_pairs(rows, [0, 1], 0))
        got = pair_logps(model, collate_packed_pairs(rows, [0, 1], 0, 64))
    assert want.chosen_tokens.tolist() == got.chosen_tokens.tolist() == [0, 6]
    torch.testing.assert_close(got.chosen, want.chosen, rtol=0, atol=1e-4)
    torch.testing.assert_close(got.rejected, want.rejected, rtol=0, atol=1e-4)
