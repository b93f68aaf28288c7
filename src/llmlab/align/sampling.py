"""Sampling against a reward: best-of-n (the baseline every alignment method is compared with) and
preference pairs built from it (n samples per prompt, the best as chosen and the worst as rejected, as
the DPO paper built its IMDb pairs), for a user without human labels. A pair records whether each
completion ended; one cut by --max-new-tokens is read without an end-of-sequence token, so the pair does
not teach the policy to stop mid-sentence."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.align.rewards import RewardFn
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator


@dataclass
class Scored:
    prompt: str
    completions: list[str]
    rewards: list[float]
    ended: list[bool]  # whether each completion ended (end-of-sequence or a stop string), not cut by the length

    @property
    def best(self) -> int:
        return max(range(len(self.rewards)), key=self.rewards.__getitem__)

    @property
    def worst(self) -> int:
        return min(range(len(self.rewards)), key=self.rewards.__getitem__)


def sample_and_score(generator: Generator, prompts: list[str], reward: RewardFn, n: int,
                     config: GenerationConfig) -> list[Scored]:  # fmt: skip
    """n sampled completions per prompt, each with its reward."""
    if n < 1:
        raise LlmlabError(f"--n must be at least 1, got {n}", "use e.g. --n 4")
    if not prompts:
        raise LlmlabError("no prompts", "pass --prompts FILE (one a line, or .jsonl records with a prompt field)")
    outputs = generator.generate(prompts, GenerationConfig(**{**config.to_dict(), "num_samples": n}))
    texts = [[c.text for c in samples] for samples in outputs]
    ended = [[c.finish_reason != "length" for c in samples] for samples in outputs]
    rewards = reward([p for p, samples in zip(prompts, texts) for _ in samples], [t for s in texts for t in s])
    return [Scored(p, t, rewards[i * n : (i + 1) * n], e) for i, (p, t, e) in enumerate(zip(prompts, texts, ended))]


def preference_pairs(scored: list[Scored], min_margin: float = 0.0) -> tuple[list[dict], int]:
    """(pairs, prompts skipped): best against worst; a prompt whose samples all score the same, are all the
    same text, or whose best beats its worst by less than `min_margin`, gives no preference. The margin keeps
    out pairs that the reward's noise decided: DPO pushes both sides of such a pair down, and on a reward
    that is flat for most samples (a toxicity score on text that is mostly harmless) those are most pairs."""
    pairs, skipped = [], 0
    for s in scored:
        best, worst = s.completions[s.best], s.completions[s.worst]
        margin = s.rewards[s.best] - s.rewards[s.worst]
        if margin == 0 or margin < min_margin or best == worst:
            skipped += 1
            continue
        pairs.append({"prompt": s.prompt, "chosen": best, "rejected": worst, "chosen_reward": s.rewards[s.best],
                      "rejected_reward": s.rewards[s.worst], "chosen_ended": s.ended[s.best],
                      "rejected_ended": s.ended[s.worst]})  # fmt: skip
    return pairs, skipped
