"""The arithmetic of online RLHF, on per-token tensors (B, T) with a mask of the response tokens.

Written here rather than taken from TRL because it is the subject being taught: PPO as InstructGPT ran it
(Ouyang et al. 2022; Ziegler et al. 2019): a per-token KL penalty to the frozen reference with the
reward model's score added at the last token, generalised advantage estimation (Schulman et al. 2016)
over a learned value, whitened advantages, the clipped policy and value losses (Schulman et al. 2017),
a fixed or adaptive KL coefficient; and GRPO (Shao et al. 2024): no value, the advantage of a completion
is its reward against the other completions of the same prompt, the KL to the reference in the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(values - mean) / std over the masked entries (the unbiased variance, as TRL); with shift_mean False
    the mean is added back (rewards keep their sign, only their scale changes)."""
    mean = masked_mean(values, mask)
    centred = values - mean
    n = mask.sum().clamp(min=2)
    var = masked_mean(centred**2, mask) * n / (n - 1)
    whitened = centred * torch.rsqrt(var + 1e-8)
    return (whitened if shift_mean else whitened + mean) * mask


def per_token_rewards(scores: torch.Tensor, logps: torch.Tensor, ref_logps: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(rewards, per-token KL): r_t = -kl_coef (log pi - log pi_ref) at every response token, plus the
    sequence's score at its last one. The KL estimate is the plain log-ratio of tokens sampled from the
    policy's own distribution, so its expectation is KL(pi || pi_ref) >= 0."""
    kl = (logps - ref_logps) * mask
    rewards = -kl_coef * kl
    last = mask.sum(dim=1).long() - 1
    rows = torch.arange(scores.shape[0], device=scores.device)
    rewards[rows, last.clamp(min=0)] += scores.to(rewards.dtype)
    return rewards * mask, kl


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(advantages, returns) by generalised advantage estimation over right-padded responses: the value
    after a response's last token is 0 (the episode ends)."""
    values = values * mask
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, advantages + values


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                        clip: float) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """PPO's clipped surrogate, the mean over response tokens, with the share of tokens clipped and the
    approximate KL between the policy that sampled and the one updating (how far an update strayed)."""
    log_ratio = logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
                 "approx_kl": float(masked_mean(0.5 * log_ratio**2, mask))}  # fmt: skip
    return loss, stats


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                       clip: float) -> torch.Tensor:  # fmt: skip
    """0.5 max((V - R)^2, (V_clipped - R)^2): the value moves at most `clip` from the rollout's estimate."""
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def group_advantages(scores: torch.Tensor, group: int, scale: bool = True) -> torch.Tensor:
    """GRPO: each completion's score minus the mean of its prompt's `group` completions (consecutive), over
    their standard deviation (+1e-4, as TRL) when `scale`."""
    grouped = scores.view(-1, group)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(centred)
        centred = centred / (std + 1e-4)
    return centred.reshape(-1)


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """exp(ref - pi) - (ref - pi) - 1 per token: an unbiased, never negative estimate of KL(pi || pi_ref)."""
    diff = ref_logps - logps
    return torch.exp(diff) - diff - 1


def grpo_loss(logps: torch.Tensor, old_logps: torch.Tensor, ref_logps: torch.Tensor | None, advantages: torch.Tensor,
              mask: torch.Tensor, clip: float, beta: float) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """GRPO's loss: the clipped surrogate with a sequence's advantage at each of its tokens, plus beta times
    the k3 KL to the reference, averaged over each completion's tokens and then over completions (TRL's
    `loss_type="grpo"`; its default is now "dapo", a token-level mean, and beta 0)."""
    ratio = torch.exp(logps - old_logps)
    adv = advantages[:, None]
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1.0 - clip, 1.0 + clip) * adv)
    stats = {}
    if beta != 0.0 and ref_logps is not None:
        kl = k3_kl(logps, ref_logps)
        per_token = per_token + beta * kl
        stats["kl_k3"] = float(masked_mean(kl.detach(), mask))
    loss = masked_mean(per_token, mask, dim=1).mean()
    return loss, stats


@dataclass
class KLController:
    """The KL coefficient: fixed, or adapted towards a target KL per sequence (Ziegler et al. 2019):
    beta *= 1 + clip((KL - target) / target, -0.2, 0.2) * n / horizon after every rollout of n sequences."""

    value: float
    target: float | None = None
    horizon: int = 10000

    def update(self, kl: float, n: int) -> None:
        if self.target is None:
            return
        error = min(max((kl - self.target) / self.target, -0.2), 0.2)
        self.value *= 1.0 + error * n / self.horizon
