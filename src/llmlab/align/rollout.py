"""Rollouts of online RLHF: sample completions of prompts with the generator from the policy's own,
unmodified distribution (temperature 1, no top-k or top-p: the KL penalty's log-ratios are then an
estimate of KL(pi || pi_ref) that cannot go negative on average), score them with the reward, and
keep what the updates need: the sampling policy's and the reference's log-probabilities, values,
advantages and returns, per response token."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from llmlab.align.rewards import RewardFn
from llmlab.align.rl_losses import KLController, gae, group_advantages, masked_whiten, per_token_rewards
from llmlab.data.collate import pad_rows
from llmlab.data.objectives import IGNORE
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Completion, Generator


class ActorCritic(nn.Module):
    """The policy and, for PPO, a value head on its last hidden states (one trunk for both, as in the
    original RLHF code: no second model is held). The value head starts at zero."""

    def __init__(self, policy: nn.Module, with_value: bool) -> None:
        super().__init__()
        self.policy = policy
        self.value_head = None
        if with_value:
            n_embd = policy.config.n_embd
            self.value_head = nn.Linear(n_embd, 1, device=policy.embed.weight.device)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probability of each labelled token, its value or None), flat in row-major order."""
        scored = labels != IGNORE
        hidden = self.policy.hidden_states(inputs)[scored]
        logits = self.policy.lm_head(hidden).float()
        logps = logits.gather(-1, labels[scored][:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        values = self.value_head(hidden).float().squeeze(-1) if self.value_head is not None else None
        return logps, values


def padded(flat: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Flat per-token values (row-major over `mask`) as (B, R) with zeros where `mask` is False."""
    out = torch.zeros(mask.shape, dtype=flat.dtype, device=flat.device)
    out[mask] = flat
    return out


@dataclass
class RolloutBatch:
    """Sequences of a rollout (or a slice of one) and what the PPO / GRPO losses read."""

    inputs: torch.Tensor  # (B, L) prompt + response, right-padded, without the last token
    labels: torch.Tensor  # (B, L) the next token at response positions, IGNORE elsewhere
    mask: torch.Tensor  # (B, R) the response tokens
    old_logps: torch.Tensor  # (B, R) under the policy that sampled
    ref_logps: torch.Tensor  # (B, R) under the reference
    advantages: torch.Tensor  # (B, R) PPO, (B,) GRPO
    returns: torch.Tensor  # (B, R) PPO's value targets (zeros for GRPO)
    old_values: torch.Tensor  # (B, R)
    scores: torch.Tensor  # (B,)
    stats: dict[str, float] = field(default_factory=dict)  # the whole rollout's: reward, KL, diversity

    TENSORS = ("inputs", "labels", "mask", "old_logps", "ref_logps", "advantages", "returns", "old_values", "scores")

    @property
    def labelled(self) -> int:
        return int(self.mask.sum())

    @property
    def tokens(self) -> int:
        return self.inputs.numel()  # every position is read, padding included

    def to(self, device: torch.device) -> RolloutBatch:
        return RolloutBatch(*(getattr(self, n).to(device) for n in self.TENSORS), stats=self.stats)

    def rows(self, index: torch.Tensor) -> RolloutBatch:
        return RolloutBatch(*(getattr(self, n)[index] for n in self.TENSORS), stats=self.stats)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {n: getattr(self, n) for n in self.TENSORS}


@dataclass
class RolloutSettings:
    method: str  # ppo or grpo
    max_new_tokens: int
    group: int  # completions per prompt
    gamma: float = 1.0
    lam: float = 0.95
    whiten_rewards: bool = False
    eos_penalty: float | None = None
    kl_coef: float = 0.0  # GRPO's: whether the reference is needed
    chunk: int = 16  # sequences per forward pass while scoring


def sample(generator: Generator, prompts: list[str], settings: RolloutSettings, seed: int) -> list[Completion]:
    """`group` completions per prompt (consecutive), sampled from the unmodified distribution."""
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                              seed=seed, num_samples=settings.group)  # fmt: skip
    generator.refresh()  # the weights changed since the last rollout
    step = max(1, 64 // settings.group)  # prompts decoded together: the KV cache stays bounded
    return [c for first in range(0, len(prompts), step)
            for samples in generator.generate(prompts[first : first + step], config) for c in samples]  # fmt: skip


def sequence_rows(generator: Generator, completions: list[Completion], pad: int) -> tuple[torch.Tensor, ...]:
    """(inputs, labels, response mask) of prompt + response (its end-of-sequence token included when it ended)."""
    config = GenerationConfig(max_new_tokens=0)
    eos = generator.eos_id
    rows, labels, lengths = [], [], []
    for c in completions:
        prompt = generator.encode_prompt(c.prompt, config)
        response = c.token_ids + ([eos] if c.finish_reason == "eos" else [])
        full = prompt + response
        rows.append(full[:-1])
        labels.append([IGNORE] * (len(prompt) - 1) + response)
        lengths.append(len(response))
    inputs, _ = pad_rows(rows, pad)
    labels, _ = pad_rows(labels, IGNORE)
    mask = torch.arange(max(lengths))[None, :] < torch.tensor(lengths)[:, None]
    return inputs, labels, mask


@torch.no_grad()
def score_tokens(actor: ActorCritic, inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                 chunk: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(log-probabilities, values) per response token, `chunk` sequences at a time."""
    logps, values = [], []
    for first in range(0, inputs.shape[0], chunk):
        part = slice(first, first + chunk)
        lp, v = actor(inputs[part].to(device), labels[part].to(device))
        logps.append(padded(lp, mask[part].to(device)).cpu())
        values.append(padded(v, mask[part].to(device)).cpu() if v is not None else torch.zeros(mask[part].shape))
    return torch.cat(logps), torch.cat(values)


def diversity(texts: list[str]) -> dict[str, float]:
    """Share of distinct completions and distinct-2 (distinct word bigrams / bigrams): both fall towards 0
    when a policy collapses to one repeated answer."""
    bigrams = [tuple(w[i : i + 2]) for w in (t.split() for t in texts) for i in range(max(len(w) - 1, 0))]
    return {"distinct": len(set(texts)) / max(len(texts), 1),
            "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0}  # fmt: skip


def collect(actor: ActorCritic, generator: Generator, prompts: list[str], reward: RewardFn, settings: RolloutSettings,
            reference: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], kl: KLController,
            seed: int, pad: int, device: torch.device) -> RolloutBatch:  # fmt: skip
    """One rollout: sample, score with the reward, and compute the advantages of `settings.method`."""
    completions = sample(generator, prompts, settings, seed)
    actor.policy.train(actor.training)  # the generator switched the policy to eval mode (dropout is off anyway)
    inputs, labels, mask = sequence_rows(generator, completions, pad)
    old_logps, old_values = score_tokens(actor, inputs, labels, mask, settings.chunk, device)
    needs_reference = settings.method == "ppo" or settings.kl_coef > 0  # GRPO at beta 0 reads none (as TRL)
    ref_logps = reference(inputs, labels, mask) if needs_reference else old_logps.clone()
    texts = [c.text for c in completions]
    scores = torch.tensor(reward([c.prompt for c in completions], texts), dtype=torch.float32)
    ended = torch.tensor([c.finish_reason == "eos" for c in completions])
    if settings.eos_penalty is not None:
        scores = torch.where(ended, scores, scores - settings.eos_penalty)
    fmask = mask.float()
    if settings.method == "ppo":
        rewards, token_kl = per_token_rewards(scores, old_logps, ref_logps, fmask, kl.value)
        if settings.whiten_rewards:
            rewards = masked_whiten(rewards, fmask, shift_mean=False)
        advantages, returns = gae(rewards, old_values, fmask, settings.gamma, settings.lam)
        advantages = masked_whiten(advantages, fmask)
    else:
        token_kl = (old_logps - ref_logps) * fmask
        advantages, returns = group_advantages(scores, settings.group), torch.zeros_like(old_logps)
    sequence_kl = float(token_kl.sum(dim=1).mean())
    stats = {"score": float(scores.mean()), "kl": sequence_kl, "kl_coef": kl.value,
             "length": float(mask.sum(dim=1).float().mean()), "ended": float(ended.float().mean()),
             **diversity(texts)}  # fmt: skip
    return RolloutBatch(inputs, labels, mask, old_logps, ref_logps, advantages, returns, old_values, scores, stats)
