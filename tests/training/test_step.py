"""train_step against its definition: accumulated micro-batches give the gradient of one big batch."""

from __future__ import annotations

import copy

import pytest
import torch

from llmlab.data.objectives import IGNORE, Batch
from llmlab.training.config import OptimConfig
from llmlab.training.distributed import DistContext
from llmlab.training.losses import lm_loss, token_loss
from llmlab.training.optim import make_optimizers
from llmlab.training.step import Metrics, StepParts, global_counts, train_step
from tests.helpers import tiny_model

CPU = torch.device("cpu")


def parts_for(model) -> StepParts:
    cpu = torch.device("cpu")
    optimizers = make_optimizers(model, OptimConfig(lr=1e-2), cpu)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return StepParts(model, model, optimizers, scaler, lm_loss, cpu, torch.float32)


def test_two_accumulated_halves_equal_one_batch_in_loss_and_gradients():
    """For causal LM, whose micro-batches hold equal label counts (masked LM's do not: each micro-batch's
    mean is averaged, see issue 22). The updates then differ only where Adam divides a near-zero gradient
    by its own size."""
    torch.manual_seed(0)
    inputs, labels = torch.randint(0, 64, (8, 16)), torch.randint(0, 64, (8, 16))
    whole = tiny_model().train()
    halves = copy.deepcopy(whole)
    seen: dict[str, list[torch.Tensor]] = {"whole": [], "halves": []}

    def grads(name: str, model) -> None:
        seen[name] = [p.grad.clone() for p in model.parameters()]

    one = train_step(parts_for(whole), lambda micro: Batch(inputs, labels), 1, 1e9, lambda: grads("whole", whole))
    two = train_step(
        parts_for(halves),
        lambda micro: Batch(inputs[4 * micro : 4 * micro + 4], labels[4 * micro : 4 * micro + 4]),
        2,
        1e9,
        lambda: grads("halves", halves),
    )
    assert abs(one.loss - two.loss) < 1e-6 and one.tokens == two.tokens == 128
    assert len(seen["whole"]) == len(seen["halves"]) == len(list(whole.parameters()))
    for g1, g2 in zip(seen["whole"], seen["halves"]):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in whole.parameters())  # zeroed for the next step (set to None)


def test_clipping_bounds_the_update_and_a_loss_can_report_metrics():
    model = tiny_model().train()
    before = [p.detach().clone() for p in model.parameters()]
    inputs, labels = torch.randint(0, 64, (4, 16)), torch.randint(0, 64, (4, 16))
    norms: list[float] = []

    def measure() -> None:  # before zero_grad: the gradients the optimizer used, already clipped
        norms.append(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()])).item())

    parts = parts_for(model)
    parts.loss = lambda m, batch, normalizer: (lm_loss(m, batch, normalizer), {"answer": 42.0})
    result = train_step(parts, lambda micro: Batch(inputs, labels), 2, 0.5, measure)
    assert norms[0] <= 0.5 + 1e-5
    assert result.metrics == {"answer": 42.0}
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


# -- the loss against cross-entropy written out, for every family --------------------------------------


def hand_ce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy of (N, V) logits against (N,) targets, by its definition."""
    return -torch.log_softmax(logits.double(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def padded(lengths: list[int], vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (B, max length) ids, zero after each row's length, and the (B, T) real-token mask."""
    width = max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return torch.randint(1, vocab, (len(lengths), width)).masked_fill(~mask, 0), mask


def attentive(model):
    """The model with its weight matrices redrawn larger (std 0.2): at the usual 0.02 attention is nearly
    uniform, and padding that leaks into it moves the loss by only ~1e-5."""
    generator = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    return model


def check_mean_and_sum(model, batch: Batch, ce: torch.Tensor, normalizer: float) -> None:
    assert ce.numel() == batch.labelled and normalizer != batch.labelled  # so mean and sum / n differ
    with torch.no_grad():
        mean, share = lm_loss(model, batch), lm_loss(model, batch, normalizer)
    torch.testing.assert_close(mean.double(), ce.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(share.double(), ce.sum() / normalizer, rtol=1e-5, atol=1e-6)


def test_decoder_loss_is_the_cross_entropy_of_the_labelled_positions():
    model = tiny_model("llama")
    torch.manual_seed(1)
    inputs, labels = torch.randint(0, 64, (2, 10)), torch.randint(0, 64, (2, 10))
    labels[:, :3] = IGNORE  # e.g. a prompt that carries no loss
    labels[1, -1] = IGNORE
    with torch.no_grad():
        logits = model(inputs)
    keep = labels != IGNORE
    check_mean_and_sum(model, Batch(inputs, labels), hand_ce(logits[keep], labels[keep]), 4.0)


def test_token_loss_skips_ignored_positions_and_divides_the_sum_by_the_normalizer():
    torch.manual_seed(2)
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[0, 1] = labels[1, 3] = labels[1, 4] = IGNORE
    ce = hand_ce(logits[labels != IGNORE], labels[labels != IGNORE])
    assert ce.numel() == 7
    torch.testing.assert_close(token_loss(logits, labels).double(), ce.mean())
    torch.testing.assert_close(token_loss(logits, labels, 2.5).double(), ce.sum() / 2.5)


def test_masked_lm_loss_scores_the_labelled_positions_of_padded_rows():
    """The head runs only where the labels are; the reference runs the whole head on each unpadded row
    alone, so padding the loss attended to (a dropped attention mask) would show."""
    model = attentive(tiny_model("bert"))
    torch.manual_seed(3)
    lengths = [12, 7, 10]
    inputs, mask = padded(lengths, 64)
    labels = torch.full_like(inputs, IGNORE)
    for row, positions in enumerate([[1, 5, 11], [0, 6], [3, 4, 9]]):
        labels[row, positions] = torch.randint(0, 64, (len(positions),))
    batch = Batch(inputs, labels, mask)
    ce = []
    with torch.no_grad():
        for row, length in enumerate(lengths):
            logits = model(inputs[row : row + 1, :length])[0]  # (length, V): no padding, no selection
            keep = labels[row, :length] != IGNORE
            ce.append(hand_ce(logits[keep], labels[row, :length][keep]))
    check_mean_and_sum(model, batch, torch.cat(ce), 3.0)


def test_encoder_decoder_loss_reads_the_decoder_inputs_and_the_source_mask():
    model = attentive(tiny_model("t5"))
    torch.manual_seed(4)
    lengths = [9, 5, 7]
    inputs, mask = padded(lengths, 64)
    decoder_inputs, labels = torch.randint(0, 64, (3, 6)), torch.randint(0, 64, (3, 6))
    labels[1, -2:] = IGNORE  # shorter targets
    labels[2, -1] = IGNORE
    batch = Batch(inputs, labels, mask, decoder_inputs)
    ce = []
    with torch.no_grad():
        for row, length in enumerate(lengths):
            logits = model(inputs[row : row + 1, :length], decoder_inputs[row : row + 1])[0]
            keep = labels[row] != IGNORE
            ce.append(hand_ce(logits[keep], labels[row][keep]))
    check_mean_and_sum(model, batch, torch.cat(ce), 4.0)


# -- the step's result, its normaliser across ranks, autocast and skipping ---------------------------


class MovedBatch(Batch):
    """A batch that records where the step moves it."""

    moves: list[torch.device | None]

    def to(self, device):
        self.moves.append(device)
        return super().to(device)


def micro_batches(accumulate: int) -> list[MovedBatch]:
    torch.manual_seed(5)
    batches = []
    for micro in range(accumulate):
        inputs, labels = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
        labels[:, : 2 + 3 * micro] = IGNORE  # different labelled counts per micro-batch: 12, then 6
        batch = MovedBatch(inputs, labels)
        batch.moves = []
        batches.append(batch)
    return batches


def with_count(model, batch, normalizer):
    return lm_loss(model, batch, normalizer), {"labelled": float(batch.labelled)}


def hand_losses(model, batches: list[Batch]) -> list[torch.Tensor]:
    """Each micro-batch's per-position cross-entropy, from the model before the step."""
    out = []
    with torch.no_grad():
        for batch in batches:
            keep = batch.labels != IGNORE
            out.append(hand_ce(model(batch.inputs)[keep], batch.labels[keep]))
    return out


@pytest.mark.parametrize("accumulate", [1, 2])
def test_step_result_is_the_mean_of_the_micro_batch_losses_and_keeps_the_last_batch(accumulate):
    model = tiny_model("llama")
    batches = micro_batches(accumulate)
    ce = hand_losses(model, batches)
    parts = parts_for(model)
    parts.loss = with_count
    result = train_step(parts, lambda micro: batches[micro], accumulate, 1e9)
    assert result.loss == pytest.approx(sum(c.mean().item() for c in ce) / accumulate, rel=1e-5)
    assert result.tokens == 16 * accumulate
    assert result.skipped is False
    assert result.last is batches[-1]
    assert result.metrics == pytest.approx({"labelled": sum(b.labelled for b in batches) / accumulate})
    assert all(b.moves == [CPU] for b in batches)  # each micro-batch moved to the step's device


class Peer:
    """torch.distributed.all_reduce (a sum) as if one other rank held `counts` ([labelled, tokens]) and then
    the scalars in `scalars`, in order; every tensor must be on `device`."""

    def __init__(self, counts: list[int], scalars: list[float], device: torch.device = CPU) -> None:
        self.counts, self.scalars, self.device = counts, list(scalars), device

    def __call__(self, tensor, *args, **kwargs) -> None:
        assert isinstance(tensor, torch.Tensor) and tensor.device == self.device
        peer = self.counts if tensor.numel() == 2 else [self.scalars.pop(0)]
        tensor += torch.tensor(peer, dtype=tensor.dtype, device=tensor.device)


def two_ranks() -> DistContext:
    return DistContext(rank=0, world=2, local_rank=0, device=CPU, strategy="ddp", zero=2)


def test_global_counts_sum_the_ranks_and_divide_the_labelled_count_by_the_world(monkeypatch):
    inputs, mask = padded([8, 5, 5], 64)
    labels = torch.full_like(inputs, IGNORE)
    labels[0, :3] = labels[2, 1:3] = 7
    batch = Batch(inputs, labels, mask)
    assert (batch.labelled, batch.tokens) == (5, 18)
    assert global_counts(batch, None) == (None, 18)
    monkeypatch.setattr(torch.distributed, "all_reduce", Peer([7, 40], []))
    assert global_counts(batch, two_ranks()) == ((5 + 7) / 2, 18 + 40)
    with torch.device("meta"):  # the counts are made on the context's device, not on the default one
        assert global_counts(batch, two_ranks()) == ((5 + 7) / 2, 18 + 40)


def test_metrics_are_averaged_over_calls_and_then_over_ranks(monkeypatch):
    metrics = Metrics()
    loss = torch.tensor(0.0)
    assert metrics.take((loss, {"b": 4.0, "a": 1.0})) is loss and metrics.take((loss, {"a": 3.0, "b": 0.0})) is loss
    assert metrics.means(None) == {"a": 2.0, "b": 2.0}
    monkeypatch.setattr(torch.distributed, "all_reduce", Peer([], [6.0, 0.0]))  # the peer's means of a, then b
    assert metrics.means(two_ranks()) == {"a": (2.0 + 6.0) / 2, "b": (2.0 + 0.0) / 2}


def test_a_distributed_step_normalises_by_the_global_count_and_averages_over_ranks(monkeypatch):
    """Each micro-batch's loss is its sum over the global labelled count / world (the peer has 7 labelled
    and 40 tokens every micro-batch); the step's loss and metrics are then averaged with the peer's."""
    model = tiny_model("llama")
    batches = micro_batches(2)
    ce = hand_losses(model, batches)
    peer_loss, peer_metric = 0.5, 100.0
    monkeypatch.setattr(torch.distributed, "all_reduce", Peer([7, 40], [peer_loss, peer_metric]))
    parts = parts_for(model)
    parts.loss, parts.ctx = with_count, two_ranks()
    result = train_step(parts, lambda micro: batches[micro], 2, 1e9)
    local = sum(c.sum().item() / ((c.numel() + 7) / 2) for c in ce) / 2
    assert result.loss == pytest.approx((local + peer_loss) / 2, rel=1e-5)
    assert result.tokens == 2 * (16 + 40)
    assert result.metrics == pytest.approx({"labelled": ((12 + 6) / 2 + peer_metric) / 2})


def test_the_loss_runs_under_autocast_in_the_steps_dtype():
    model = tiny_model("llama")
    inputs, labels = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    seen = []

    def loss(m, batch, normalizer):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return lm_loss(m, batch, normalizer)

    parts = parts_for(model)
    parts.loss, parts.dtype = loss, torch.bfloat16
    train_step(parts, lambda micro: Batch(inputs, labels), 1, 1e9)
    assert seen == [(True, torch.bfloat16)]


def test_a_step_with_infinite_gradients_is_skipped_by_the_loss_scaler():
    model = tiny_model("llama")
    before = [p.detach().clone() for p in model.parameters()]
    inputs, labels = torch.randint(0, 64, (2, 8)), torch.randint(0, 64, (2, 8))
    parts = parts_for(model)
    parts.scaler = torch.amp.GradScaler("cpu", enabled=True)
    parts.loss = lambda m, batch, normalizer: lm_loss(m, batch, normalizer) * float("inf")
    result = train_step(parts, lambda micro: Batch(inputs, labels), 1, 1e9)
    assert result.skipped is True
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))
