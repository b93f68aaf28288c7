"""Where a reward comes from: a scoring function of (prompts, completions) -> one number each.

`load_reward(spec)` reads:
- a checkpoint with a score head (`llmlab reward`, or `--task regress`): its score of prompt + completion;
- a classifier (`--task classify`, or a Hugging Face sequence-classification folder) with `label`: the
  probability of that label (`--reward-label Positive`);
- `module:function`, a Python function taking (prompts, completions) and returning a list of numbers;
- a packaged scorer: `vader` (vaderSentiment's compound sentiment of the completion, -1..1), `toxicity`
  (alt-profanity-check's probability that the completion is offensive) or `harmless` (1 - toxicity);
- `task:sentiment` / `task:dialogsum`: a verifiable reward against the task's own answers (task_rewards.py).
Every reward is checked: one finite number per completion, or one clear error.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from pathlib import Path

import torch

from llmlab.align.task_rewards import is_task_source, task_reward
from llmlab.errors import LlmlabError

RewardFn = Callable[[list[str], list[str]], list[float]]
PACKAGED = ("vader", "toxicity", "harmless")


def load_reward(spec: str, label: str | None = None, device: str | torch.device = "cpu") -> RewardFn:
    """The reward `spec` names (see the module doc), wrapped so its outputs are checked."""
    if spec in PACKAGED:
        fn = _packaged(spec)
    elif is_task_source(spec):
        fn = task_reward(spec)
    elif ":" in spec and not Path(spec).exists():
        fn = _function(spec)
    else:
        fn = _model_reward(spec, label, device)
    return _checked(fn, spec)


def _checked(fn: RewardFn, spec: str) -> RewardFn:
    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        values = fn(prompts, completions)
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise LlmlabError(f"the reward {spec} did not return numbers", "return one float per completion") from None
        if len(values) != len(completions):
            raise LlmlabError(f"the reward {spec} returned {len(values)} values for {len(completions)} completions",
                              "return one number per completion")  # fmt: skip
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise LlmlabError(f"the reward {spec} returned {values[bad]} for {completions[bad][:40]!r}",
                              "make the reward finite for every text")  # fmt: skip
        return values

    return reward


def _packaged(name: str) -> RewardFn:
    if name == "vader":
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ImportError:
            raise LlmlabError("the vader reward needs vaderSentiment", "pip install vaderSentiment") from None
        analyzer = SentimentIntensityAnalyzer()
        return lambda prompts, completions: [analyzer.polarity_scores(c)["compound"] for c in completions]
    try:
        from profanity_check import predict_prob
    except ImportError:
        raise LlmlabError(f"the {name} reward needs alt-profanity-check", "pip install alt-profanity-check") from None
    if name == "toxicity":
        return lambda prompts, completions: list(predict_prob(list(completions)))
    return lambda prompts, completions: [1.0 - p for p in predict_prob(list(completions))]


def _function(spec: str) -> RewardFn:
    module_name, _, name = spec.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise LlmlabError(
            f"cannot load the reward {spec}: {exc}", "pass module:function of an importable module"
        ) from None
    if not callable(fn):
        raise LlmlabError(f"the reward {spec} is not a function", "pass module:function")
    return fn


def _model_reward(source: str, label: str | None, device) -> RewardFn:
    from llmlab.load import load_checkpoint
    from llmlab.tasks.predict import classify_texts

    ckpt = load_checkpoint(source, device=device, dtype=torch.float32)
    task, labels = ckpt.model.config.task, ckpt.model.config.labels
    if task == "regress":
        key = "score"
    elif task == "classify":
        if label not in labels:
            raise LlmlabError(f"the reward classifier {source} needs --reward-label, one of {', '.join(labels)}",
                              "name the label whose probability is the reward")  # fmt: skip
        key = label
    else:
        fix = "use a reward model (llmlab reward), a classifier with --reward-label, or a scorer"
        raise LlmlabError(f"{source} cannot score text: it has {'a ' + task if task else 'no'} head", fix)

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        texts = [p + c for p, c in zip(prompts, completions)]
        return [r.scores[key] for r in classify_texts(ckpt.model, ckpt.tokenizer, texts)]

    return reward
