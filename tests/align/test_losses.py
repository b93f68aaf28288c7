"""The preference losses against TRL's DPOTrainer on the same log-probabilities (its own `_compute_loss`,
fed precomputed reference log-probs and a stand-in model that returns the given per-token log-probs),
and the reference-free ones against their papers' formulas written out by hand."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from llmlab.align.losses import PairLogps, PreferenceLoss, preference_loss, preference_metrics

B, L = 6, 9


def _pairs(seed: int = 0):
    """Per-token policy log-probs (2B, L) for [chosen; rejected], completion masks, and reference sums."""
    g = torch.Generator().manual_seed(seed)
    per_token = -torch.rand(2 * B, L, generator=g) * 3
    mask = torch.zeros(2 * B, L + 1, dtype=torch.long)
    for row in range(2 * B):
        start = int(torch.randint(1, 4, (1,), generator=g))
        mask[row, start + 1 : start + 1 + int(torch.randint(2, L - 3, (1,), generator=g))] = 1
    reference = -torch.rand(2 * B, generator=g) * 10
    return per_token, mask, reference


def _trl_loss(loss_type: str, beta: float, per_token: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor):
    """TRL's own DPOTrainer._compute_loss on these tensors, and the metrics it logged."""
    trl = pytest.importorskip("trl", reason="pip install trl (a dev dependency)")
    shift = mask[:, 1:]
    log_probs = per_token * shift  # TRL's fused head zeroes the positions without a label
    zeros = torch.zeros_like(log_probs)
    outputs = SimpleNamespace(log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool())
    trainer = trl.DPOTrainer.__new__(trl.DPOTrainer)
    identity = lambda t: t  # noqa: E731
    trainer.__dict__.update(
        model=SimpleNamespace(training=True), accelerator=SimpleNamespace(device="cpu", gather=identity,
        gather_for_metrics=identity), aux_loss_enabled=False, ld_alpha=None, precompute_ref_logps=True,
        f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=0.0,
        use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1,
    )  # fmt: skip
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": reference[:B], "ref_rejected_logps": reference[B:]}  # fmt: skip
    loss = trl.DPOTrainer._compute_loss(trainer, lambda **kwargs: outputs, inputs, return_outputs=False)
    return loss, {k: v[-1] for k, v in trainer._metrics["train"].items()}


def _ours(per_token: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor | None):
    shift = mask[:, 1:].bool()
    sums, counts = (per_token * shift).sum(1), shift.sum(1)
    policy = PairLogps(sums[:B], sums[B:], counts[:B], counts[B:])
    ref = None if reference is None else PairLogps(reference[:B], reference[B:], counts[:B], counts[B:])
    return policy, ref


@pytest.mark.parametrize("method,loss_type", [("dpo", "sigmoid"), ("ipo", "ipo")])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_dpo_and_ipo_equal_trl_with_its_logged_rewards(method, loss_type, beta):
    per_token, mask, reference = _pairs()
    theirs, logged = _trl_loss(loss_type, beta, per_token, mask, reference)
    result = preference_loss(method, *_ours(per_token, mask, reference), beta)
    assert result.losses.mean().item() == pytest.approx(theirs.item(), rel=1e-6)
    ours = preference_metrics(result)
    names = {"rewards_chosen": "rewards/chosen", "rewards_rejected": "rewards/rejected",
             "rewards_margin": "rewards/margins", "rewards_accuracy": "rewards/accuracies"}  # fmt: skip
    for name, trl_name in names.items():
        assert ours[name] == pytest.approx(logged[trl_name], rel=1e-6, abs=1e-7), name


def test_conservative_dpo_simpo_and_orpo_follow_their_formulas():
    per_token, mask, reference = _pairs(1)
    policy, ref = _ours(per_token, mask, reference)
    beta, eps, gamma = 0.3, 0.1, 0.7
    d = (policy.chosen - ref.chosen) - (policy.rejected - ref.rejected)
    expected = -(1 - eps) * F.logsigmoid(beta * d) - eps * F.logsigmoid(-beta * d)
    assert torch.allclose(preference_loss("dpo", policy, ref, beta, label_smoothing=eps).losses, expected)
    avg_w, avg_l = policy.chosen / policy.chosen_tokens, policy.rejected / policy.rejected_tokens
    simpo = -F.logsigmoid(beta * avg_w - beta * avg_l - gamma)
    assert torch.allclose(preference_loss("simpo", policy, None, beta, gamma=gamma).losses, simpo)
    odds = lambda m: m - torch.log(1 - torch.exp(m))  # noqa: E731
    orpo = -avg_w - beta * torch.log(torch.sigmoid(odds(avg_w) - odds(avg_l)))
    assert torch.allclose(preference_loss("orpo", policy, None, beta).losses, orpo, atol=1e-6)


def test_labelled_logps_sum_the_labelled_tokens_of_each_row():
    """The head at labelled positions only, log p = logit - logsumexp: equal to the full log-softmax's."""
    from llmlab.align.recipe import labelled_logps
    from tests.helpers import tiny_model

    model = tiny_model("llama", vocab_size=40)
    inputs = torch.randint(0, 40, (2, 5))
    labels = torch.tensor([[-100, 3, 1, -100, -100], [2, 2, 2, 2, 6]])
    sums, counts = labelled_logps(model, inputs, labels)
    logp = torch.log_softmax(model(inputs), -1)
    assert counts.tolist() == [2, 5]
    assert sums[0].item() == pytest.approx((logp[0, 1, 3] + logp[0, 2, 1]).item(), rel=1e-5)
    assert sums[1].item() == pytest.approx(sum(logp[1, t, labels[1, t]] for t in range(5)).item(), rel=1e-5)
    assert not math.isnan(sums.sum().item())


def test_ipo_averages_the_log_ratios_over_at_least_one_token_and_returns_beta_times_the_log_ratios():
    """Token counts 0 and 1 both divide by 1 (an empty completion does not divide by zero)."""
    chosen, rejected = torch.tensor([-2.0, -3.0, -6.0]), torch.tensor([-4.0, -1.0, -5.0])
    ref_chosen, ref_rejected = torch.tensor([-1.0, -2.5, -3.0]), torch.tensor([-2.0, -2.0, -1.0])
    chosen_tokens, rejected_tokens = torch.tensor([0, 1, 3]), torch.tensor([1, 0, 2])
    policy = PairLogps(chosen, rejected, chosen_tokens, rejected_tokens)
    reference = PairLogps(ref_chosen, ref_rejected, chosen_tokens, rejected_tokens)
    beta = 0.25
    r_w, r_l = [-1.0, -0.5, -3.0], [-2.0, 1.0, -4.0]  # policy - reference, written out
    n_w, n_l = [1, 1, 3], [1, 1, 2]  # the counts, at least 1
    expected = [(r_w[i] / n_w[i] - r_l[i] / n_l[i] - 1 / (2 * beta)) ** 2 for i in range(3)]
    result = preference_loss("ipo", policy, reference, beta)
    torch.testing.assert_close(result.losses, torch.tensor(expected))
    torch.testing.assert_close(result.chosen_rewards, beta * torch.tensor(r_w))
    torch.testing.assert_close(result.rejected_rewards, beta * torch.tensor(r_l))


def test_simpo_and_orpo_return_beta_times_the_length_averaged_logps_as_rewards():
    policy = PairLogps(
        torch.tensor([-3.0, -8.0]), torch.tensor([-6.0, -2.0]), torch.tensor([2, 4]), torch.tensor([3, 1])
    )
    beta = 0.3
    mean_w, mean_l = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    for method in ("simpo", "orpo"):
        result = preference_loss(method, policy, None, beta, gamma=0.5)
        torch.testing.assert_close(result.chosen_rewards, beta * mean_w, msg=method)
        torch.testing.assert_close(result.rejected_rewards, beta * mean_l, msg=method)


def test_orpo_clamps_a_probability_of_one_below_one_so_its_log_odds_stay_finite():
    """A chosen completion with mean log-prob 0 (p = 1): log odds = 0 - log(1 - (1 - 1e-6)), not infinity."""
    q = 1e-5  # the rejected completion's 1 - p: log odds log((1 - q) / q), about 11.5
    sums = torch.tensor([0.0, 2 * math.log1p(-q)], dtype=torch.float64)  # 3 and 2 tokens: means 0 and log(1 - q)
    policy = PairLogps(sums[:1], sums[1:], torch.tensor([3]), torch.tensor([2]))
    beta = 0.5
    odds_w = 0.0 - math.log1p(-(1 - 1e-6))
    odds_l = math.log1p(-q) - math.log(q)
    log_sigmoid = -math.log1p(math.exp(-(odds_w - odds_l)))  # about -0.095: the clamp's value shows
    result = preference_loss("orpo", policy, None, beta)
    assert result.losses.dtype == torch.float64
    assert result.losses.item() == pytest.approx(-0.0 - beta * log_sigmoid, rel=1e-9)


def test_reward_accuracy_counts_ties_as_not_accurate():
    result = PreferenceLoss(torch.zeros(4), torch.tensor([1.0, 2.0, 0.5, -1.0]), torch.tensor([1.0, 3.0, 0.25, -1.0]))
    metrics = preference_metrics(result)
    assert metrics["rewards_accuracy"] == 0.25  # only 0.5 > 0.25; the two ties are not accurate
    assert metrics["rewards_chosen"] == pytest.approx(2.5 / 4)
    assert metrics["rewards_rejected"] == pytest.approx(3.25 / 4)
    assert metrics["rewards_margin"] == pytest.approx(-0.75 / 4)


def test_simpo_margin_defaults_to_one_half():
    """gamma = 0.5 when not given (the default of simpo_gamma in TRL's experimental CPOConfig)."""
    policy = PairLogps(
        torch.tensor([-3.0, -8.0]), torch.tensor([-6.0, -2.0]), torch.tensor([2, 4]), torch.tensor([3, 1])
    )
    beta = 2.0
    expected = -F.logsigmoid(torch.tensor([2.0 * (-1.5 - -2.0) - 0.5, 2.0 * (-2.0 - -2.0) - 0.5]))
    torch.testing.assert_close(preference_loss("simpo", policy, None, beta).losses, expected)


def test_dpo_without_label_smoothing_is_plain_dpo():
    from llmlab.align.losses import dpo_loss

    policy = PairLogps(torch.tensor([-3.0]), torch.tensor([-5.0]), torch.tensor([3]), torch.tensor([4]))
    reference = PairLogps(torch.tensor([-4.0]), torch.tensor([-4.5]), torch.tensor([3]), torch.tensor([4]))
    got = dpo_loss(policy, reference, beta=0.1)
    assert got.losses.item() == pytest.approx(-F.logsigmoid(torch.tensor(0.1 * (1.0 - -0.5))).item())
