"""PPO's and GRPO's arithmetic against independent statements of it: GAE as the discounted sum of TD errors,
whitening as numpy's unbiased moments, the clipped losses by hand, and GRPO's loss against TRL's own
`GRPOTrainer._compute_loss` on the same per-token log-probabilities."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from llmlab.align.rl_losses import (
    KLController,
    clipped_policy_loss,
    clipped_value_loss,
    gae,
    group_advantages,
    grpo_loss,
    k3_kl,
    masked_whiten,
    per_token_rewards,
)


def _mask(lengths: list[int], width: int) -> torch.Tensor:
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def test_gae_is_the_discounted_sum_of_td_errors():
    torch.manual_seed(0)
    lengths, width, gamma, lam = [5, 3, 1], 5, 0.9, 0.8
    mask = _mask(lengths, width)
    rewards, values = torch.randn(3, width) * mask, torch.randn(3, width)
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    for row, n in enumerate(lengths):
        v = [float(values[row, t]) for t in range(n)] + [0.0]  # the episode ends after the last token
        deltas = [float(rewards[row, t]) + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(n):
            expected = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
            assert advantages[row, t].item() == pytest.approx(expected, abs=1e-5)
            assert returns[row, t].item() == pytest.approx(expected + v[t], abs=1e-5)
        assert not advantages[row, n:].any()


def test_whitening_uses_the_masked_entries_only():
    torch.manual_seed(1)
    mask = _mask([4, 2, 3], 4)
    values = torch.randn(3, 4) * 3 + 2
    picked = values[mask.bool()].numpy()
    whitened = masked_whiten(values, mask)
    expected = (picked - picked.mean()) / math.sqrt(picked.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(whitened[mask.bool()].numpy(), expected, rtol=1e-5, atol=1e-6)
    kept_mean = masked_whiten(values, mask, shift_mean=False)[mask.bool()].numpy()
    np.testing.assert_allclose(kept_mean, expected + picked.mean(), rtol=1e-5, atol=1e-6)
    assert not whitened[~mask.bool()].any()


def test_the_score_lands_on_each_response_last_token_and_the_penalty_on_every_token():
    mask = _mask([3, 1], 3)
    logps, ref = torch.full((2, 3), -1.0), torch.full((2, 3), -1.5)
    rewards, kl = per_token_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.05, -0.05, 1.95], [-1.05, 0.0, 0.0]])
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl, 0.5 * mask)


def test_the_policy_loss_clips_the_ratio_on_the_side_the_advantage_pushes():
    old = torch.zeros(1, 4)
    new = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_()
    advantages, mask = torch.tensor([[1.0, 1.0, -1.0, -1.0]]), torch.ones(1, 4)
    loss, stats = clipped_policy_loss(new, old, advantages, mask, clip=0.2)
    # token 0: min(1.5, 1.2) -> 1.2, clipped; token 1: min(0.5, 0.8) -> 0.5; token 2: -min(-1.5, -1.2)...
    per_token = [-1.2, -0.5, 1.5, 0.8]
    assert loss.item() == pytest.approx(sum(per_token) / 4)
    assert stats["clipfrac"] == pytest.approx(0.5)
    loss.backward()
    assert new.grad[0, 0] == 0 and new.grad[0, 3] == 0  # the clipped tokens pass no gradient
    assert new.grad[0, 1] != 0 and new.grad[0, 2] != 0


def test_the_value_loss_takes_the_worse_of_the_clipped_and_unclipped_errors():
    old, returns, mask = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2)
    values = torch.tensor([[0.5, 2.0]])
    # token 0: clipped to 0.2 -> (0.2 - 1)^2 = 0.64 > 0.25; token 1: unclipped (2 - 1)^2 = 1 > (0.2 - 1)^2
    expected = 0.5 * (0.64 + 1.0) / 2
    assert clipped_value_loss(values, old, returns, mask, clip=0.2).item() == pytest.approx(expected)


def test_group_advantages_compare_completions_of_the_same_prompt():
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    advantages = group_advantages(scores, group=3)
    torch.testing.assert_close(advantages[:3], torch.tensor([-1.0, 0.0, 1.0]) / (1.0 + 1e-4))
    assert not advantages[3:].any()  # all equal: no preference, no update
    torch.testing.assert_close(group_advantages(scores, 3, scale=False)[:3], torch.tensor([-1.0, 0.0, 1.0]))


def test_k3_is_never_negative_and_zero_at_equality():
    logps = torch.randn(1000)
    assert (k3_kl(logps, torch.randn(1000)) >= 0).all()
    assert not k3_kl(logps, logps).any()


def test_kl_controller_moves_towards_its_target_by_at_most_a_fifth_per_horizon():
    fixed = KLController(0.1)
    fixed.update(kl=50.0, n=64)
    assert fixed.value == 0.1
    adaptive = KLController(0.1, target=6.0, horizon=100)
    adaptive.update(kl=60.0, n=50)  # error clipped to +0.2, times 50/100
    assert adaptive.value == pytest.approx(0.1 * 1.1)
    adaptive.update(kl=3.0, n=100)  # error -0.5 clipped to -0.2
    assert adaptive.value == pytest.approx(0.1 * 1.1 * 0.8)


def _trl_grpo_loss(logps, old_logps, ref_logps, advantages, mask, clip, beta):
    """TRL's GRPOTrainer._compute_loss run on the same per-token log-probabilities (loss_type grpo)."""
    pytest.importorskip("trl")
    from trl.trainer.grpo_trainer import GRPOTrainer

    accelerator = SimpleNamespace(gather=lambda x: x, reduce=lambda x, reduction: x, gather_for_metrics=lambda x: x,
                                  num_processes=1, sync_gradients=True)  # fmt: skip
    trainer = SimpleNamespace(
        _get_per_token_logps_and_entropies=lambda *a, **k: (logps, torch.zeros_like(logps), None),
        aux_loss_enabled=False, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        importance_sampling_level="token", beta=beta, loss_type="grpo", epsilon_low=clip, epsilon_high=clip,
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None), use_vllm=False,
        model=SimpleNamespace(training=False), current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
        accelerator=accelerator, _metrics=defaultdict(lambda: defaultdict(list)),
    )  # fmt: skip
    B, T = logps.shape
    inputs = {"prompt_ids": torch.zeros(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2, dtype=torch.long),
              "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask.long(),
              "advantages": advantages, "old_per_token_logps": old_logps, "ref_per_token_logps": ref_logps}  # fmt: skip
    return GRPOTrainer._compute_loss(trainer, None, inputs)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_equals_trl(beta):
    torch.manual_seed(2)
    mask = _mask([6, 4, 2, 5], 6)
    logps = (torch.randn(4, 6) * 0.3 - 2).requires_grad_()
    old, ref = logps.detach() + torch.randn(4, 6) * 0.2, logps.detach() + torch.randn(4, 6) * 0.2
    advantages = group_advantages(torch.tensor([1.0, 0.0, 2.0, 0.5]), group=2)
    ours, _ = grpo_loss(logps, old, ref, advantages, mask, clip=0.2, beta=beta)
    theirs = _trl_grpo_loss(logps, old, ref, advantages, mask, 0.2, beta)
    torch.testing.assert_close(ours, theirs)
    grad_ours = torch.autograd.grad(ours, logps)[0]
    grad_theirs = torch.autograd.grad(_trl_grpo_loss(logps, old, ref, advantages, mask, 0.2, beta), logps)[0]
    torch.testing.assert_close(grad_ours * mask, grad_theirs * mask)


def test_whitening_two_entries_uses_the_unbiased_variance_and_a_constant_input_stays_finite():
    values, mask = torch.tensor([[1.0, 4.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    # mean 2.5, deviations -1.5 and 1.5, unbiased variance (2.25 + 2.25) / (2 - 1) = 4.5
    expected = torch.tensor([[-1.5, 1.5, 0.0]]) / math.sqrt(4.5 + 1e-8)
    torch.testing.assert_close(masked_whiten(values, mask), expected)
    constant, mask = torch.full((2, 3), 3.0), _mask([3, 1], 3)  # variance 0: the epsilon keeps it finite
    torch.testing.assert_close(masked_whiten(constant, mask), torch.zeros(2, 3))
    torch.testing.assert_close(masked_whiten(constant, mask, shift_mean=False), 3.0 * mask)


def test_the_score_is_added_in_the_rewards_dtype():
    """A bfloat16 policy and a float32 reward model: the score is rounded to bfloat16, then added in bfloat16."""
    mask = torch.ones(1, 2, dtype=torch.long)
    logps, ref = torch.full((1, 2), -2.0, dtype=torch.bfloat16), torch.full((1, 2), -1.0, dtype=torch.bfloat16)
    score = torch.tensor([2.0**-8 + 2.0**-20])  # rounds to 2^-8 in bfloat16; 1 + 2^-8 is a tie, rounded to 1
    rewards, _ = per_token_rewards(score, logps, ref, mask, kl_coef=1.0)  # -1 * (-2 - -1) = 1 at each token
    assert rewards.dtype == torch.bfloat16
    last = torch.tensor(1.0, dtype=torch.bfloat16) + score[0].to(torch.bfloat16)
    torch.testing.assert_close(
        rewards, torch.stack([torch.tensor(1.0, dtype=torch.bfloat16), last])[None], rtol=0, atol=0
    )


def test_gae_of_single_token_responses_is_the_reward_minus_the_value():
    rewards, values, mask = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.5], [0.3]]), torch.tensor([[1.0], [0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    torch.testing.assert_close(advantages, torch.tensor([[0.5], [0.0]]))
    torch.testing.assert_close(returns, torch.tensor([[1.0], [0.0]]))


def test_the_policy_loss_uses_the_ratio_to_the_old_policy_and_reports_clipfrac_and_approx_kl_as_trl():
    """Ratio exp(logp - old_logp); clipfrac counts tokens whose clipped loss is strictly the larger (ties, in
    the band or with a zero advantage, are not clipped); approx_kl = mean(0.5 (logp - old_logp)^2)."""
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, -3.0, -1.0]])
    log_ratio = [math.log(1.5), math.log(0.5), 0.1, -0.1, 0.5, 3.0]
    new = old + torch.tensor([log_ratio])
    advantages = torch.tensor([[1.0, -1.0, 2.0, -1.0, 0.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    loss, stats = clipped_policy_loss(new, old, advantages, mask, clip=0.2)
    per_token = [-1.2, 0.8, -2.0 * math.exp(0.1), math.exp(-0.1), 0.0]
    assert loss.item() == pytest.approx(sum(per_token) / 5, rel=1e-5)
    assert stats["clipfrac"] == pytest.approx(2 / 5)
    assert stats["approx_kl"] == pytest.approx(sum(0.5 * r**2 for r in log_ratio[:5]) / 5, rel=1e-5)


def test_the_value_loss_clips_a_move_down_as_well_as_up_from_the_old_value():
    old, returns = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    values, mask = torch.tensor([[0.5, 3.0, 0.1]]), torch.ones(1, 3)
    # token 0: moved -0.5, clipped to 0.8: (0.8 - 0)^2 = 0.64 > (0.5 - 0)^2; token 1: moved +2, clipped to 1.2:
    # (3 - 1)^2 = 4 > (1.2 - 1)^2; token 2: within the clip, 0.01 either way
    expected = 0.5 * (0.64 + 4.0 + 0.01) / 3
    assert clipped_value_loss(values, old, returns, mask, clip=0.2).item() == pytest.approx(expected, rel=1e-6)


def test_group_advantages_of_groups_of_one_and_two():
    torch.testing.assert_close(group_advantages(torch.tensor([1.0, -2.0, 3.0]), group=1), torch.zeros(3))
    pairs = group_advantages(torch.tensor([1.0, 3.0, 2.0, 2.0]), group=2)
    # the pair (1, 3): mean 2, unbiased std sqrt(2)
    torch.testing.assert_close(
        pairs, torch.tensor([-1.0, 1.0, 0.0, 0.0]) / torch.tensor([math.sqrt(2) + 1e-4] * 2 + [1e-4] * 2)
    )


def test_grpo_clips_ratios_above_one_plus_clip_for_a_positive_advantage():
    old = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    logps = old + torch.log(torch.tensor([[1.5, 1.5, 0.7], [1.5, 0.5, 20.0]]))
    advantages, mask = torch.tensor([2.0, -1.0]), torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    # row 0 (A = 2): -min(1.5 * 2, 1.2 * 2) twice, -min(0.7 * 2, 0.8 * 2); row 1 (A = -1): 1.5, 0.8
    expected = ((-2.4 - 2.4 - 1.4) / 3 + (1.5 + 0.8) / 2) / 2
    loss, stats = grpo_loss(logps, old, None, advantages, mask, clip=0.2, beta=0.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats == {}
    torch.testing.assert_close(loss, _trl_grpo_loss(logps, old, old, advantages, mask, 0.2, 0.0))


def test_kl_controller_moves_by_the_relative_error_when_it_is_within_the_clip():
    controller = KLController(0.1, target=0.5, horizon=100)
    controller.update(kl=0.55, n=10)  # error (0.55 - 0.5) / 0.5 = 0.1, times 10 / 100
    assert controller.value == pytest.approx(0.1 * 1.01)
    controller.update(kl=0.45, n=50)  # error -0.1, times 50 / 100
    assert controller.value == pytest.approx(0.1 * 1.01 * 0.95)


def test_grpo_adds_beta_times_the_k3_kl_only_with_a_reference_and_reports_it():
    """beta 1 is an ordinary coefficient (no special case); beta 0 or no reference: no KL term, no statistic."""
    from llmlab.align.rl_losses import masked_mean

    logps = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    mask, adv = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([0.7])
    plain, stats = grpo_loss(logps, logps, None, adv, mask, clip=0.2, beta=1.0)
    assert stats == {} and plain.item() == pytest.approx(-0.7)  # ratio 1: -adv at each token
    assert grpo_loss(logps, logps, ref, adv, mask, clip=0.2, beta=0.0) == (plain, {})
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]  # exp(ref - pi) - (ref - pi) - 1, two unmasked tokens
    loss, stats = grpo_loss(logps, logps, ref, adv, mask, clip=0.2, beta=1.0)
    assert stats == {"kl_k3": pytest.approx(sum(k3) / 2)}
    assert loss.item() == pytest.approx(-0.7 + sum(k3) / 2)
    one = torch.tensor([[0.0, 0.0, 1.0]])
    assert masked_mean(torch.tensor([[3.0, 4.0, 5.0]]), one).item() == 5.0  # a single entry is its own mean
    assert masked_mean(torch.tensor([[3.0, 4.0, 5.0]]), one, dim=1).tolist() == [5.0]
