"""What alignment bought, measured on sampled completions: the mean reward under a reward, the win rate
of one model over another judged by it, the KL divergence from a reference, and the toxicity rate.

The KL term is estimated as Ziegler et al. and TRL do, from samples of the policy's own unmodified
distribution (temperature 1, no top-k or top-p): KL(pi || ref) ~ mean over samples of
sum_t [log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t)], end-of-sequence included where a sample ended.
Sampling with a changed distribution would make that estimate biased (and possibly negative)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from llmlab.align.recipe import labelled_logps
from llmlab.align.rewards import RewardFn
from llmlab.data.collate import pad_rows
from llmlab.data.objectives import IGNORE
from llmlab.evaluation.metrics import bootstrap_interval
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Completion, Generator
from llmlab.model import LanguageModel
from llmlab.tokenizer import TextTokenizer


@dataclass
class RewardReport:
    samples: int
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    completions: list[Completion] = field(default_factory=list)  # the scored samples, one per prompt
    rewards: list[float] = field(default_factory=list)  # their rewards


def sample(model: LanguageModel, tok: TextTokenizer, prompts: list[str], config: GenerationConfig) -> list[Completion]:
    return [c for samples in Generator(model, tok).generate(prompts, config) for c in samples]


@torch.no_grad()
def sequence_logps(model: LanguageModel, tok: TextTokenizer, prompts: list[str], completions: list[Completion],
                   batch_size: int = 16) -> torch.Tensor:  # fmt: skip
    """Summed log-probabilities of each completion's tokens (and its end-of-sequence) given its prompt,
    under a decoder."""
    if family_spec(model.config).seq2seq:
        from llmlab.errors import LlmlabError

        raise LlmlabError("the KL to a reference is estimated for decoders", "leave out --reference")
    eos = tok.require("eos", "to score completions")
    prefix = family_spec(model.config).prompt_prefix(tok)
    rows = []
    for prompt, completion in zip(prompts, completions):
        head = prefix + tok.encode(prompt) or [eos]  # as the generator starts an empty prompt
        tail = completion.token_ids + ([eos] if completion.finish_reason == "eos" else [])
        ids = head + tail
        rows.append((ids[:-1], [IGNORE] * (len(head) - 1) + tail))
    sums = []
    pad = family_spec(model.config).pad_id(tok)
    for first in range(0, len(rows), batch_size):
        chunk = rows[first : first + batch_size]
        inputs, _ = pad_rows([ids for ids, _ in chunk], pad)
        labels, _ = pad_rows([lab for _, lab in chunk], IGNORE)
        sums.append(labelled_logps(model, inputs.to(model.device), labels.to(model.device))[0].cpu())
    return torch.cat(sums)


def kl_to_reference(
    model: LanguageModel, reference: LanguageModel, tok: TextTokenizer, prompts: list[str], max_new_tokens: int,
    seed: int = 0, samples: int = 4,
) -> tuple[float, tuple[float, float]]:  # fmt: skip
    """Monte-Carlo KL(model || reference) per sequence, with a 95% bootstrap interval."""
    pure = GenerationConfig(max_new_tokens=max_new_tokens, temperature=1.0, top_k=0, top_p=1.0, seed=seed,
                            num_samples=samples)  # fmt: skip
    completions = sample(model, tok, prompts, pure)
    rows = [p for p in prompts for _ in range(samples)]
    gaps = (sequence_logps(model, tok, rows, completions) - sequence_logps(reference, tok, rows, completions)).tolist()
    return sum(gaps) / len(gaps), bootstrap_interval(gaps, seed)


def reward_report(model: LanguageModel, tok: TextTokenizer, prompts: list[str], reward: RewardFn,
                  config: GenerationConfig, baseline: LanguageModel | None = None,
                  reference: LanguageModel | None = None, toxicity: RewardFn | None = None,
                  seed: int = 0) -> RewardReport:  # fmt: skip
    """Mean reward of `config.num_samples` samples per prompt (returned with their rewards); with `baseline`,
    the share of samples where this model's scores higher than the baseline's (ties count half); with
    `reference`, the KL; with `toxicity`, the share flagged."""
    for other in (baseline, reference):
        if other is not None and other.config.vocab_size != model.config.vocab_size:
            from llmlab.errors import LlmlabError

            raise LlmlabError(f"the baseline or reference has a vocabulary of {other.config.vocab_size} tokens, the "
                              f"model {model.config.vocab_size}", "compare models that share a tokenizer")  # fmt: skip
    completions = sample(model, tok, prompts, config)
    texts = [c.text for c in completions]
    rows = [p for p in prompts for _ in range(config.num_samples)]  # each sample's prompt
    rewards = reward(rows, texts)
    report = RewardReport(len(rows), {"mean_reward": sum(rewards) / len(rewards)},
                          {"mean_reward": bootstrap_interval(rewards, seed)}, completions, rewards)  # fmt: skip
    if baseline is not None:
        theirs = reward(rows, [c.text for c in sample(baseline, tok, prompts, config)])
        wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards, theirs)]
        report.metrics.update(win_rate=sum(wins) / len(wins), baseline_mean_reward=sum(theirs) / len(theirs))
        report.intervals["win_rate"] = bootstrap_interval(wins, seed)
    if reference is not None:
        kl, interval = kl_to_reference(model, reference, tok, prompts, config.max_new_tokens, seed)
        report.metrics["kl_to_reference"] = kl
        report.intervals["kl_to_reference"] = interval
    if toxicity is not None:
        flagged = [float(p > 0.5) for p in toxicity(rows, texts)]
        report.metrics["toxicity_rate"] = sum(flagged) / len(flagged)
        report.intervals["toxicity_rate"] = bootstrap_interval(flagged, seed)
    return report
