"""Evaluation: what prompts, shots and generation settings buy, measured with confidence intervals.

- Classification by rank: each label's continuation is scored by its total log-probability after the
  prompt (`scorer.Scorer`; multi-token labels summed, optionally divided by their token count) and
  the best one is the prediction. Free generation is scored too, after answer normalisation.
- Generation tasks: ROUGE-1/2/L F1 and diversity (`metrics`).
- Generation settings: `sweep` measures quality against diversity for each sampling setting.
- Every metric gets a bootstrap 95% interval over the evaluated examples.

The scorer, the metrics and the perplexity live in their own modules; their names stay importable
from here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmlab.errors import LlmlabError
from llmlab.evaluation.metrics import (
    bootstrap_interval,
    bootstrap_statistic,
    distinct_n,
    normalize_answer,
    repetition_rate,
    rouge,
)
from llmlab.evaluation.perplexity import text_perplexity
from llmlab.evaluation.prompts import Prompt, build_prompt, select_examples
from llmlab.evaluation.reasoning import read_answer, same_number
from llmlab.evaluation.scorer import ContinuationScore, Scorer
from llmlab.evaluation.tasks import Task
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.model import LanguageModel
from llmlab.plot import pyplot, save_figure
from llmlab.tokenizer import TextTokenizer

perplexity = text_perplexity  # the name `llmlab evaluate --perplexity` has always imported

__all__ = [
    "ContinuationScore",
    "Scorer",
    "ShotResult",
    "SweepRow",
    "bootstrap_interval",
    "bootstrap_statistic",
    "distinct_n",
    "evaluate_task",
    "normalize_answer",
    "perplexity",
    "plot_shots",
    "plot_sweep",
    "prompts_for",
    "quality_metric",
    "repetition_rate",
    "rouge",
    "sweep",
]


# -- evaluation --------------------------------------------------------------------------------------


@dataclass
class ShotResult:
    shots: int
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    examples: int
    mean_shots_used: float
    queries_shortened: int
    predictions: list[dict] = field(default_factory=list)


def pick_examples(task: Task, limit: int | None, seed: int) -> list[dict[str, str]]:
    if limit is not None and limit < 1:
        raise LlmlabError(f"--limit must be >= 1, got {limit}", "pass a number of examples, e.g. 200")
    examples = task.examples
    if limit is not None and limit < len(examples):
        indices = sorted(random.Random(seed).sample(range(len(examples)), limit))
        examples = [examples[i] for i in indices]
    return examples


def prompts_for(
    task: Task, scorer: Scorer, examples: list[dict[str, str]], shots: int, select: str, seed: int, reserve: int
) -> list[Prompt]:
    """One prompt per example; demonstrations drawn per example (seeded), never the example itself."""
    prompts = []
    for i, example in enumerate(examples):
        pool = [d for d in task.pool(example) if d is not example]
        demos = select_examples(pool, shots, select, seed * 1_000_003 + i, task.template.answer_field)
        prompts.append(build_prompt(task.template, demos, example, scorer.count_tokens, scorer.budget(reserve)))
    return prompts


def evaluate_task(
    model: LanguageModel,
    tokenizer: TextTokenizer,
    task: Task,
    shots: list[int],
    limit: int | None = None,
    seed: int = 0,
    select: str = "random",
    length_normalize: bool = False,
    generation: GenerationConfig | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> list[ShotResult]:
    """The task's metrics at each shot count, on the same examples (a seeded sample of `limit`)."""
    if generation is not None:
        generation.validate()
        if generation.max_new_tokens < 1:
            raise LlmlabError(f"--max-new-tokens must be >= 1, got {generation.max_new_tokens}", "pass e.g. 64")
    scorer = Scorer(model, tokenizer)
    generator = Generator(model, tokenizer)
    examples = pick_examples(task, limit, seed)
    if not examples:
        raise LlmlabError(f"task {task.name} has no examples to evaluate", "check the data files")
    results = []
    for k in shots:
        if task.kind == "classification":
            result = _classify(task, scorer, generator, examples, k, select, seed, length_normalize, generation)
        elif task.kind == "numeric":
            result = _solve(task, scorer, generator, examples, k, select, seed, generation)
        else:
            result = _generate(task, scorer, generator, examples, k, select, seed, generation)
        results.append(result)
        summary = ", ".join(f"{name} {value:.3f}" for name, value in result.metrics.items())
        log(f"{task.name}, {k} shots ({result.mean_shots_used:.1f} fit on average): {summary}")
    return results


def _classify(task, scorer, generator, examples, k, select, seed, length_normalize, generation) -> ShotResult:
    labels = task.labels
    answers = [task.template.answer(label) for label in labels]
    answer_tokens = max(len(scorer.tokenizer.encode(a)) for a in answers)
    prompts = prompts_for(task, scorer, examples, k, select, seed, reserve=answer_tokens + 2)
    scores = scorer.logprobs([p.text for p in prompts for _ in labels], [a for _ in prompts for a in answers])
    config = GenerationConfig(
        **{**(generation or GenerationConfig(greedy=True)).to_dict(), "max_new_tokens": answer_tokens + 2}
    )
    config.stop = sorted({*config.stop, "\n"})
    outputs = generator.generate([p.text for p in prompts], config)
    rank, free, rows = [], [], []
    normalized_labels = [normalize_answer(label) for label in labels]
    for i, (example, prompt) in enumerate(zip(examples, prompts)):
        row = scores[i * len(labels) : (i + 1) * len(labels)]
        values = [score.logprob / score.tokens if length_normalize else score.logprob for score in row]
        predicted = labels[int(np.argmax(values))]
        gold = example[task.template.answer_field]
        text = outputs[i][0].text
        rank.append(float(predicted == gold))
        free.append(
            float(normalize_answer(text) == normalize_answer(gold) and normalize_answer(text) in normalized_labels)
        )
        rows.append({"prompt_tokens": prompt.tokens, "gold": gold, "ranked": predicted, "generated": text})
    metrics = {"accuracy (rank)": float(np.mean(rank)), "accuracy (generation)": float(np.mean(free))}
    intervals = {
        "accuracy (rank)": bootstrap_interval(rank, seed),
        "accuracy (generation)": bootstrap_interval(free, seed),
    }
    return ShotResult(k, metrics, intervals, len(examples), float(np.mean([p.shots_used for p in prompts])),
                      sum(p.query_shortened for p in prompts), rows)  # fmt: skip


def _prompted(task, scorer, generator, examples, k, select, seed, config: GenerationConfig):
    """The prompts and each one's generated answer, stopped where a decoder would write the next example."""
    if not scorer.seq2seq:
        config = GenerationConfig(**{**config.to_dict(), "stop": sorted({*config.stop, task.template.separator})})
    prompts = prompts_for(task, scorer, examples, k, select, seed, reserve=config.max_new_tokens)
    return prompts, generator.generate([p.text for p in prompts], config)


def _generate(task, scorer, generator, examples, k, select, seed, generation) -> ShotResult:
    config = generation or GenerationConfig(greedy=True, max_new_tokens=64)
    prompts, outputs = _prompted(task, scorer, generator, examples, k, select, seed, config)
    per_metric: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
    rows, texts = [], []
    for example, prompt, samples in zip(examples, prompts, outputs):
        text = samples[0].text.strip()
        texts.append(text)
        for name, value in rouge(text, task.reference_answers(example)).items():
            per_metric[name].append(value)
        rows.append({"prompt_tokens": prompt.tokens, "generated": text})
    metrics = {name: float(np.mean(v)) for name, v in per_metric.items()}
    intervals = {name: bootstrap_interval(v, seed) for name, v in per_metric.items()}
    diversity = {
        "distinct-1": lambda ts: distinct_n(ts, 1),
        "distinct-2": lambda ts: distinct_n(ts, 2),
        "repetition": repetition_rate,
    }
    for name, statistic in diversity.items():
        metrics[name] = statistic(texts)
        intervals[name] = bootstrap_statistic(texts, statistic, seed)
    return ShotResult(k, metrics, intervals, len(examples), float(np.mean([p.shots_used for p in prompts])),
                      sum(p.query_shortened for p in prompts), rows)  # fmt: skip


def _solve(task, scorer, generator, examples, k, select, seed, generation) -> ShotResult:
    """A numeric task: the answer read from the text, or from what the model's program prints (sandboxed)."""
    config = generation or GenerationConfig(greedy=True, max_new_tokens=128)
    prompts, outputs = _prompted(task, scorer, generator, examples, k, select, seed, config)
    correct, answered, rows = [], [], []
    for example, prompt, samples in zip(examples, prompts, outputs):
        text = samples[0].text.strip()
        answer, problem = read_answer(text, task.reasoning)
        correct.append(float(same_number(answer, example["answer"])))
        answered.append(float(answer is not None))
        rows.append({"prompt_tokens": prompt.tokens, "generated": text, "answer": answer, "gold": example["answer"],
                     "problem": problem})  # fmt: skip
    name = "programs that ran" if task.reasoning == "program" else "answered"
    metrics = {"accuracy": float(np.mean(correct)), name: float(np.mean(answered))}
    intervals = {"accuracy": bootstrap_interval(correct, seed), name: bootstrap_interval(answered, seed)}
    return ShotResult(k, metrics, intervals, len(examples), float(np.mean([p.shots_used for p in prompts])),
                      sum(p.query_shortened for p in prompts), rows)  # fmt: skip


def plot_shots(results: list[ShotResult], out: Path, title: str) -> Path:
    """Each interval-carrying metric against the number of shots, with its 95% bootstrap interval."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    shots = [r.shots for r in results]
    for name in results[0].intervals:
        values = [r.metrics[name] for r in results]
        # a bootstrap interval of a statistic (distinct-n) need not contain the whole sample's value, and
        # equal scores give bounds a rounding away from it: the bar never reaches past the point
        low = [max(0.0, r.metrics[name] - r.intervals[name][0]) for r in results]
        high = [max(0.0, r.intervals[name][1] - r.metrics[name]) for r in results]
        ax.errorbar(shots, values, yerr=[low, high], marker="o", capsize=4, label=name)
    ax.set_xlabel("examples in the prompt (shots)")
    ax.set_ylabel("score (95% bootstrap interval)")
    ax.set_xticks(shots)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)


# -- generation settings, measured -------------------------------------------------------------------


@dataclass
class SweepRow:
    temperature: float
    top_k: int
    top_p: float
    metrics: dict[str, float]


def sweep(
    model: LanguageModel,
    tokenizer: TextTokenizer,
    task: Task,
    temperatures: list[float],
    top_ks: list[int],
    top_ps: list[float],
    shots: int = 0,
    limit: int | None = None,
    seed: int = 0,
    max_new_tokens: int = 64,
    log: Callable[[str], None] = lambda s: None,
) -> list[SweepRow]:
    """Quality and diversity of generated answers for every combination of the sampling settings.

    Greedy (temperature 0) ignores top-k and top-p, so it is measured once. Sampling is seeded: the
    same seed gives the same table."""
    rows = []
    combinations = sorted(
        {(t, 0 if t == 0 else k, 1.0 if t == 0 else p) for t in temperatures for k in top_ks for p in top_ps}
    )
    for temperature, top_k, top_p in combinations:
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            greedy=temperature == 0,
        )  # fmt: skip
        config.validate()
        (result,) = evaluate_task(model, tokenizer, task, [shots], limit, seed, generation=config)
        texts = [p["generated"] for p in result.predictions]
        metrics = {k: v for k, v in result.metrics.items() if k != "accuracy (rank)"}  # rank ignores sampling
        metrics.update({"distinct-1": distinct_n(texts, 1), "distinct-2": distinct_n(texts, 2),
                        "repetition": repetition_rate(texts)})  # fmt: skip
        rows.append(SweepRow(temperature, top_k, top_p, metrics))
        log(
            f"temperature {temperature}, top-k {top_k}, top-p {top_p}: "
            + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items())
        )
    return rows


def quality_metric(rows: list[SweepRow]) -> str:
    return "accuracy (generation)" if "accuracy (generation)" in rows[0].metrics else "rougeL"


def plot_sweep(rows: list[SweepRow], out: Path, title: str) -> Path:
    """Quality against diversity (distinct-2), one point per setting: where the trade-off sits."""
    plt = pyplot()
    quality = quality_metric(rows)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for r in rows:
        ax.scatter(r.metrics["distinct-2"], r.metrics[quality], s=30)
        label = "greedy" if r.temperature == 0 else f"T={r.temperature:g} k={r.top_k or '-'} p={r.top_p:g}"
        ax.annotate(label, (r.metrics["distinct-2"], r.metrics[quality]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")  # fmt: skip
    ax.set_xlabel("diversity: distinct-2 of the generated answers")
    ax.set_ylabel(quality)
    ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)
