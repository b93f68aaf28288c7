"""The distillation loss on its own tensors: the divergences equal TRL's generalized JSD and their written-out
definitions, in fp32 whatever the logits' dtype; the loss reads each family's labelled positions, mixes the
soft and hard terms as documented, normalises by the positions or the given count, reads a cached top-k
teacher instead of running the teacher, and sends no gradient to the teacher. Fast: mutation testing runs it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llmlab.data.objectives import IGNORE, Batch
from llmlab.distill.losses import distillation_loss, divergence, labelled_logits, top_k_forward_kl
from llmlab.distill.teacher_cache import TopKBatch
from tests.helpers import tiny_model

V = 48


def logits(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


@pytest.mark.parametrize(("kind", "beta"), [("forward", 0.0), ("reverse", 1.0), ("jsd", 0.5), ("jsd", 0.3)])
def test_divergences_equal_trls_generalized_jsd(kind, beta):
    gkd = pytest.importorskip("trl.experimental.gkd.gkd_trainer", reason="trl is a dev dependency")
    student, teacher = logits(0, 2, 5, 11), logits(1, 2, 5, 11)
    labels = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    labels[0, :2] = IGNORE
    theirs = gkd.GKDTrainer.generalized_jsd_loss(student, teacher, labels, beta=beta, temperature=2.0)
    kept = labels != IGNORE
    ours = divergence(student[kept], teacher[kept], 2.0, kind, beta=beta).mean()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return (p * (p.log() - q.log())).sum(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_divergences_are_their_definitions_at_each_position(temperature):
    student, teacher = logits(3, 7, 13), logits(4, 7, 13)
    s, t = F.softmax(student.double() / temperature, -1), F.softmax(teacher.double() / temperature, -1)
    mixture = 0.8 * s + 0.2 * t  # beta 0.2: the mixture leans to the student
    expected = {"forward": kl(t, s), "reverse": kl(s, t), "jsd": 0.2 * kl(t, mixture) + 0.8 * kl(s, mixture)}
    for kind, want in expected.items():
        got = divergence(student, teacher, temperature, kind, beta=0.2)
        assert got.shape == (7,) and (got >= 0).all()
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(divergence(student, teacher, temperature, "jsd"),  # the default beta is 0.5
                               divergence(teacher, student, temperature, "jsd"))  # fmt: skip


def test_low_precision_logits_are_compared_in_fp32():
    student, teacher = logits(5, 4, V).bfloat16(), logits(6, 4, V).bfloat16()
    for kind in ("forward", "reverse", "jsd"):
        got = divergence(student, teacher, 2.0, kind)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, divergence(student.float(), teacher.float(), 2.0, kind), rtol=0, atol=0)
    values, ids = teacher.topk(5, dim=-1)
    got = top_k_forward_kl(student, values, ids, 2.0)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, top_k_forward_kl(student.float(), values.float(), ids, 2.0), rtol=0, atol=0)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_top_k_forward_kl_is_the_teachers_renormalised_top_k(temperature):
    """With k = V it is the full forward KL; with k < V, the KL from the teacher restricted to its top k."""
    student, teacher = logits(7, 6, 11), logits(8, 6, 11)
    values, ids = teacher.topk(11, dim=-1)
    torch.testing.assert_close(
        top_k_forward_kl(student, values, ids, temperature), divergence(student, teacher, temperature, "forward")
    )
    values, ids = teacher.topk(4, dim=-1)
    p = torch.softmax(values / temperature, dim=-1)  # the teacher, renormalised over its 4 best tokens
    log_q = torch.log_softmax(student / temperature, dim=-1).gather(-1, ids)  # the student over all 11
    torch.testing.assert_close(top_k_forward_kl(student, values, ids, temperature), (p * (p.log() - log_q)).sum(-1))


def decoder_batch() -> Batch:
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(9))
    labels = ids[:, 1:].clone()
    labels[1, :3] = IGNORE
    return Batch(ids[:, :-1], labels)


def test_labelled_logits_are_each_familys_logits_at_the_labelled_positions():
    batch = decoder_batch()
    model = tiny_model("llama", vocab_size=V)
    with torch.no_grad():
        got, full = labelled_logits(model, batch), model(batch.inputs)
    assert got.shape == (13, V) and torch.equal(got, full[batch.labels != IGNORE])

    encoder = tiny_model("bert", vocab_size=V)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 6:] = False
    labels = torch.full((2, 8), IGNORE)
    labels[0, 2], labels[1, 4] = 5, 7
    masked = Batch(batch.inputs, labels, mask)
    with torch.no_grad():
        got, full = labelled_logits(encoder, masked), encoder(masked.inputs, mask)
    torch.testing.assert_close(got, full[labels != IGNORE])

    seq2seq = tiny_model("t5", vocab_size=V)
    targets = torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(1))
    targets[0, 3:] = IGNORE
    pair = Batch(batch.inputs, targets, mask, decoder_inputs=torch.randint(0, V, (2, 5)))
    with torch.no_grad():
        got, full = labelled_logits(seq2seq, pair), seq2seq(pair.inputs, pair.decoder_inputs, mask)
    assert got.shape == (8, V) and torch.equal(got, full[targets != IGNORE])


@pytest.fixture(scope="module")
def pair():
    student = tiny_model("llama", vocab_size=V)
    torch.manual_seed(3)
    teacher = tiny_model("llama", vocab_size=V, n_layer=3)
    for p in teacher.parameters():
        torch.nn.init.normal_(p, std=0.2)  # another model than the student
    return student, teacher


def parts(student, teacher, batch, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft, hard) per labelled position, written out."""
    kept = batch.labels != IGNORE
    with torch.no_grad():
        s, t = student(batch.inputs)[kept], teacher(batch.inputs)[kept]
    soft = divergence(s, t, temperature, "forward") * temperature**2
    return soft, F.cross_entropy(s, batch.labels[kept], reduction="none")


@pytest.mark.parametrize(("temperature", "alpha"), [(2.0, 0.3), (1.0, 1.0), (0.5, 0.0)])
def test_the_loss_mixes_soft_targets_and_labels_as_a_mean_over_positions(pair, temperature, alpha):
    student, teacher = pair
    batch = decoder_batch()
    soft, hard = parts(student, teacher, batch, temperature)
    loss, logged = distillation_loss(teacher, temperature, alpha, "forward", student, batch)
    torch.testing.assert_close(loss, alpha * soft.mean() + (1 - alpha) * hard.mean())
    torch.testing.assert_close(logged["distill"], soft.mean())
    torch.testing.assert_close(logged["ce"], hard.mean())
    assert not logged["distill"].requires_grad and not logged["ce"].requires_grad


def test_the_kind_chooses_the_divergence(pair):
    student, teacher = pair
    batch = decoder_batch()
    kept = batch.labels != IGNORE
    with torch.no_grad():
        s, t = student(batch.inputs)[kept], teacher(batch.inputs)[kept]
    for kind in ("reverse", "jsd"):
        _, logged = distillation_loss(teacher, 2.0, 0.5, kind, student, batch)
        torch.testing.assert_close(logged["distill"], divergence(s, t, 2.0, kind).mean() * 4)


def test_a_normalizer_replaces_the_count_of_positions(pair):
    """Under gradient accumulation and DDP the sum is divided by the global count of labelled positions."""
    student, teacher = pair
    batch = decoder_batch()
    soft, hard = parts(student, teacher, batch, 2.0)
    loss, logged = distillation_loss(teacher, 2.0, 0.25, "forward", student, batch, normalizer=40.0)
    torch.testing.assert_close(loss, (0.25 * soft.sum() + 0.75 * hard.sum()) / 40)
    torch.testing.assert_close(logged["distill"], soft.sum() / 40)
    torch.testing.assert_close(logged["ce"], hard.sum() / 40)


def test_gradients_reach_the_student_only(pair):
    student, teacher = pair
    loss, _ = distillation_loss(teacher, 2.0, 0.5, "forward", student, decoder_batch())
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.lm_head.weight.grad is not None and student.lm_head.weight.grad.abs().sum() > 0
    student.zero_grad(set_to_none=True)


class NotRun(torch.nn.Module):
    def forward(self, *args):
        raise AssertionError("a cached batch must not run the teacher")


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_a_cached_top_k_teacher_is_read_instead_of_run(pair, temperature):
    student, teacher = pair
    plain = decoder_batch()
    kept = plain.labels != IGNORE
    with torch.no_grad():
        s, t = student(plain.inputs)[kept], teacher(plain.inputs)[kept]
    values, ids = t.topk(6, dim=-1)
    cached = TopKBatch(plain.inputs, plain.labels, teacher_values=values, teacher_ids=ids)
    loss, logged = distillation_loss(NotRun(), temperature, 0.6, "forward", student, cached)
    soft = top_k_forward_kl(s, values, ids, temperature) * temperature**2
    hard = F.cross_entropy(s, plain.labels[kept], reduction="none")
    torch.testing.assert_close(logged["distill"], soft.mean())
    torch.testing.assert_close(loss, 0.6 * soft.mean() + 0.4 * hard.mean())


def test_cached_whole_rows_give_the_teachers_exact_forward_kl(pair):
    """A cache that kept whole rows (k >= the vocabulary, no ids) gives the loss of the teacher run on the fly."""
    student, teacher = pair
    plain = decoder_batch()
    kept = plain.labels != IGNORE
    with torch.no_grad():
        rows = teacher(plain.inputs)[kept]
    cached = TopKBatch(plain.inputs, plain.labels, teacher_values=rows, teacher_ids=None)
    loss, logged = distillation_loss(NotRun(), 2.0, 0.6, "forward", student, cached)
    expected, expected_logged = distillation_loss(teacher, 2.0, 0.6, "forward", student, plain)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logged["distill"], expected_logged["distill"])
