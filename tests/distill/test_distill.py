"""Distillation: the divergences equal TRL's generalized JSD on the same tensors (forward KL, reverse KL,
JSD), the loss is the stated mix, and `llmlab distill` trains a student on a teacher's soft targets for
each family, on the teacher's tokenizer, refusing a student that reads text otherwise."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.data.objectives import IGNORE, Batch
from llmlab.distill.losses import distillation_loss, divergence
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model


@pytest.mark.parametrize(("kind", "beta"), [("forward", 0.0), ("reverse", 1.0), ("jsd", 0.5)])
def test_divergences_equal_trls_generalized_jsd(kind, beta):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer", reason="trl is a dev dependency")
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 11) * 3, torch.randn(2, 5, 11) * 3
    labels = torch.randint(0, 11, (2, 5))
    labels[0, :2] = IGNORE
    theirs = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=2.0)
    kept = labels != IGNORE
    ours = divergence(student[kept], teacher[kept], 2.0, kind).mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_the_loss_mixes_soft_targets_and_labels():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    student = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32)
    torch.manual_seed(3)
    teacher = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32, n_layer=3)
    ids = torch.tensor([tok.encode(SAMPLE_TEXT)[:17]])
    batch = Batch(ids[:, :-1], ids[:, 1:])
    with torch.no_grad():
        s, t = student(batch.inputs)[0], teacher(batch.inputs)[0]
    soft = divergence(s, t, 2.0, "forward").mean() * 4
    hard = torch.nn.functional.cross_entropy(s, batch.labels[0])
    loss, parts = distillation_loss(teacher, 2.0, 0.3, "forward", student, batch)
    torch.testing.assert_close(loss, 0.3 * soft + 0.7 * hard)
    torch.testing.assert_close(parts["distill"], soft)
    only_labels, _ = distillation_loss(teacher, 2.0, 0.0, "forward", student, batch)
    torch.testing.assert_close(only_labels, hard)


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


def test_top_k_forward_kl_is_the_teachers_renormalised_top_k():
    """With k = V it is the full forward KL; with k < V, the KL from the teacher restricted to its top k."""
    from llmlab.distill.losses import top_k_forward_kl

    torch.manual_seed(0)
    student, teacher = torch.randn(6, 11) * 3, torch.randn(6, 11) * 3
    values, ids = teacher.topk(11, dim=-1)
    torch.testing.assert_close(
        top_k_forward_kl(student, values, ids, 2.0), divergence(student, teacher, 2.0, "forward")
    )
    values, ids = teacher.topk(4, dim=-1)
    p = torch.softmax(values / 2.0, dim=-1)  # the teacher, renormalised over its 4 best tokens
    log_q = torch.log_softmax(student / 2.0, dim=-1).gather(-1, ids)
    expected = (p * (p.log() - log_q)).sum(-1)
    torch.testing.assert_close(top_k_forward_kl(student, values, ids, 2.0), expected)


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
    code, _, err = run_cli(capsys, *args, "--divergence", "jsd", "--out", tmp_path / "d")
    assert_one_line_error(code, err, "use --divergence forward")
