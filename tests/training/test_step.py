"""train_step against its definition: accumulated micro-batches give the gradient of one big batch."""

from __future__ import annotations

import copy

import torch

from llmlab.data.objectives import Batch
from llmlab.training.config import OptimConfig
from llmlab.training.losses import lm_loss
from llmlab.training.optim import make_optimizers
from llmlab.training.step import StepParts, train_step
from tests.helpers import tiny_model


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
