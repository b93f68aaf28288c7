"""Distillation end to end (the loss on its own tensors is test_losses.py's): `llmlab distill` trains a student
on a teacher's soft targets for each family, on the teacher's tokenizer, refusing a student that reads text
otherwise, and caches the teacher's top-k."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

PAIRS = [("decoder", "llama-micro", "llama-nano"), ("encoder", "bert-micro", "bert-nano")]


@pytest.mark.parametrize(("family", "teacher_preset", "student_preset"), PAIRS)
def test_distill_command_trains_a_student_on_the_teachers_tokenizer(tmp_path, capsys, family, teacher_preset,
                                                                    student_preset):  # fmt: skip
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT * 20)
    code, _, err = run_cli(capsys, "pretrain", "--data", corpus, "--preset", teacher_preset, "--out",
                           tmp_path / "teacher", "--max-steps", 3, "--vocab-size", 400, "--block-size", 32,
                           "--batch-size", 4)  # fmt: skip
    assert code == 0, err
    code, _, err = run_cli(capsys, "distill", "--teacher", tmp_path / "teacher", "--data", corpus, "--preset",
                           student_preset, "--out", tmp_path / "student", "--max-steps", 4, "--block-size", 32,
                           "--batch-size", 4, "--temperature", 2, "--alpha", 0.7, "--eval-interval", 2)  # fmt: skip
    assert code == 0, err
    assert "teacher:" in err and "forward divergence at temperature 2.0, alpha 0.7" in err
    rows = [json.loads(line) for line in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
    assert any("train_distill" in row and "train_ce" in row for row in rows)
    student_tok = json.loads((tmp_path / "student" / "tokenizer.json").read_text())
    assert student_tok == json.loads((tmp_path / "teacher" / "tokenizer.json").read_text())
    if family == "decoder":  # a student that reads text otherwise is refused
        other = train_tokenizer([SAMPLE_TEXT[::-1]], kind="bpe", vocab_size=400, family="decoder")
        save_checkpoint(tmp_path / "other", tiny_model("llama", vocab_size=other.vocab_size, block_size=32), other)
        code, _, err = run_cli(capsys, "distill", "--teacher", tmp_path / "teacher", "--data", corpus, "--init",
                               tmp_path / "other", "--out", tmp_path / "s2", "--max-steps", 1)  # fmt: skip
        assert_one_line_error(code, err, "another tokenizer than the teacher")


def test_bad_distillation_options_are_one_line(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT)
    code, _, err = run_cli(capsys, "distill", "--data", corpus, "--out", tmp_path / "s")
    assert_one_line_error(code, err, "no teacher")
    code, _, err = run_cli(capsys, "distill", "--teacher", "x", "--alpha", 2, "--data", corpus, "--out", tmp_path / "s")
    assert_one_line_error(code, err, "--alpha 2")
    code, _, err = run_cli(capsys, "distill", "--teacher", "x", "--divergence", "kl", "--data", corpus, "--out",
                           tmp_path / "s")  # fmt: skip
    assert_one_line_error(code, err, "divergence")


def test_teacher_cache_is_written_once_and_read_by_the_next_run(tmp_path, capsys, monkeypatch):
    """The second run with the same data, seed and batch shape never runs the teacher on a training batch,
    and (same student seed) trains to exactly the same losses; another seed writes a new cache."""
    import llmlab.distill.teacher_cache as teacher_cache

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT * 20)
    code, _, err = run_cli(capsys, "pretrain", "--data", corpus, "--preset", "llama-nano", "--out",
                           tmp_path / "teacher", "--max-steps", 2, "--vocab-size", 400, "--block-size", 32,
                           "--batch-size", 4)  # fmt: skip
    assert code == 0, err
    misses = []
    original = teacher_cache.TeacherCache.targets

    def counting(self, step, micro, rank, compute):
        result = original(self, step, micro, rank, compute)
        misses.append(self.misses)
        return result

    monkeypatch.setattr(teacher_cache.TeacherCache, "targets", counting)
    args = ["distill", "--teacher", tmp_path / "teacher", "--data", corpus, "--preset", "llama-nano", "--max-steps", 4,
            "--block-size", 32, "--batch-size", 4, "--teacher-cache", tmp_path / "cache", "--teacher-top-k", 8,
            "--eval-interval", 100, "--log-interval", 1]  # fmt: skip
    losses = []
    for run in ("a", "b"):
        misses.clear()
        code, _, err = run_cli(capsys, *args, "--out", tmp_path / run)
        assert code == 0, err
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        losses.append([row["train_loss"] for row in rows if "train_loss" in row])
        assert max(misses) == (4 if run == "a" else 0)  # run b: every batch read from the cache
    assert len(losses[0]) == 4 and losses[0] == losses[1]
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 1 and len(list(folders[0].glob("*.safetensors"))) == 4
    code, _, err = run_cli(capsys, *args, "--seed", 7, "--out", tmp_path / "c")
    assert code == 0, err
    assert len(list((tmp_path / "cache").iterdir())) == 2
    # students whose block sizes come from --init, not --block-size, read other rows: a folder each
    unsized = [a for i, a in enumerate(args) if a != "--block-size" and (i == 0 or args[i - 1] != "--block-size")]
    for block in (16, 24):
        code, _, err = run_cli(capsys, "pretrain", "--data", corpus, "--preset", "llama-nano", "--out",
                               tmp_path / f"s{block}", "--max-steps", 1, "--vocab-size", 400, "--block-size", block,
                               "--batch-size", 4)  # fmt: skip
        assert code == 0, err
        code, _, err = run_cli(capsys, *unsized, "--init", tmp_path / f"s{block}", "--out", tmp_path / f"e{block}")
        assert code == 0, err
    assert len(list((tmp_path / "cache").iterdir())) == 4
    for k in (400, 1000):  # any k covering the vocabulary (<= 400 entries): whole rows without ids, one folder
        misses.clear()
        whole = [k if i and args[i - 1] == "--teacher-top-k" else a for i, a in enumerate(args)]
        code, _, err = run_cli(capsys, *whole, "--out", tmp_path / f"k{k}")
        assert code == 0, err
        assert max(misses) == (4 if k == 400 else 0)
    folders = list((tmp_path / "cache").iterdir())
    assert len(folders) == 5
    newest = max(folders, key=lambda f: f.stat().st_mtime_ns)
    files = sorted(newest.glob("*.safetensors"))
    with safe_open(str(files[0]), "pt") as f:
        vocab = json.loads((tmp_path / "teacher" / "config.json").read_text())["model"]["vocab_size"]
        assert set(f.keys()) == {"values"} and f.get_slice("values").get_shape()[-1] == vocab
    code, _, err = run_cli(capsys, *args, "--divergence", "jsd", "--out", tmp_path / "d")
    assert_one_line_error(code, err, "use --divergence forward")
