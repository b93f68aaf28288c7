"""Offline preference losses on sequence log-probabilities, written here because they are the subject
being taught: each is a few lines of the paper's formula.

Inputs are per-pair sums of the completion's token log-probabilities under the policy and (DPO, IPO)
the frozen reference, and the completions' token counts. With r = log pi(y|x) - log ref(y|x):

- DPO (Rafailov et al. 2023): -log sigmoid(beta (r_w - r_l)); with label smoothing e (conservative
  DPO, Mitchell 2023) the labels are trusted with probability 1 - e:
  -(1 - e) log sigmoid(beta d) - e log sigmoid(-beta d).
- IPO (Azar et al. 2023): (d' - 1 / (2 beta))^2 with d' the difference of length-averaged log-ratios
  (as TRL computes it, confirmed there with the authors).
- SimPO (Meng et al. 2024): no reference; -log sigmoid(beta (avg log pi(y_w) - avg log pi(y_l)) - gamma).
- ORPO (Hong et al. 2024): no reference; the chosen completion's NLL plus
  lambda * -log sigmoid(log odds(y_w) - log odds(y_l)), odds = p / (1 - p) of the length-averaged p.

The implicit rewards beta * r (DPO, IPO) or beta * avg log pi (SimPO, ORPO) are returned for logging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

METHODS = ("dpo", "ipo", "simpo", "orpo")
NEEDS_REFERENCE = ("dpo", "ipo")


@dataclass
class PairLogps:
    """Summed completion log-probabilities of a batch of pairs, and the completions' token counts."""

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_tokens.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass
class PreferenceLoss:
    """Per-pair losses and the implicit rewards of chosen and rejected completions."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def dpo_loss(policy: PairLogps, reference: PairLogps, beta: float, label_smoothing: float = 0.0) -> PreferenceLoss:
    chosen, rejected = policy.chosen - reference.chosen, policy.rejected - reference.rejected
    logits = beta * (chosen - rejected)
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def ipo_loss(policy: PairLogps, reference: PairLogps, beta: float) -> PreferenceLoss:
    chosen, rejected = policy.chosen - reference.chosen, policy.rejected - reference.rejected
    delta = chosen / policy.chosen_tokens.clamp(min=1) - rejected / policy.rejected_tokens.clamp(min=1)
    losses = (delta - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen.detach(), beta * rejected.detach())


def simpo_loss(policy: PairLogps, beta: float, gamma: float) -> PreferenceLoss:
    chosen, rejected = beta * policy.chosen_mean, beta * policy.rejected_mean
    return PreferenceLoss(-F.logsigmoid(chosen - rejected - gamma), chosen.detach(), rejected.detach())


def orpo_loss(policy: PairLogps, beta: float) -> PreferenceLoss:
    """`beta` is the paper's lambda, the weight of the odds-ratio term against the chosen NLL."""

    def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
        return mean_logp - torch.log1p(-torch.exp(mean_logp).clamp(max=1 - 1e-6))

    ratio = F.logsigmoid(log_odds(policy.chosen_mean) - log_odds(policy.rejected_mean))
    losses = -policy.chosen_mean - beta * ratio
    return PreferenceLoss(losses, beta * policy.chosen_mean.detach(), beta * policy.rejected_mean.detach())


def preference_loss(method: str, policy: PairLogps, reference: PairLogps | None, beta: float,
                    label_smoothing: float = 0.0, gamma: float = 0.5) -> PreferenceLoss:  # fmt: skip
    """The loss `method` names (one of METHODS)."""
    if method == "dpo":
        return dpo_loss(policy, reference, beta, label_smoothing)
    if method == "ipo":
        return ipo_loss(policy, reference, beta)
    if method == "simpo":
        return simpo_loss(policy, beta, gamma)
    return orpo_loss(policy, beta)


def preference_metrics(result: PreferenceLoss) -> dict[str, float]:
    """What TRL logs, under the same names without the slash: rewards, their margin and accuracy."""
    chosen, rejected = result.chosen_rewards, result.rejected_rewards
    return {
        "rewards_chosen": float(chosen.mean()),
        "rewards_rejected": float(rejected.mean()),
        "rewards_margin": float((chosen - rejected).mean()),
        "rewards_accuracy": float((chosen > rejected).float().mean()),
    }
