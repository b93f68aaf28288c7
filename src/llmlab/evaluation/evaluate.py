"""Evaluation: what prompts, shots and generation settings buy, measured with confidence intervals.

- Classification by rank: each label's continuation is scored by its total log-probability after the
  prompt (multi-token labels summed; optionally divided by their token count) and the best one is
  the prediction. Free generation is scored too, after answer normalisation.
- Generation tasks: ROUGE-1/2/L F1 (the `rouge-score` package, stemming on), the best over the
  references.
- Perplexity of a text with a sliding window, every token scored once with the most context the
  window allows.
- Every metric gets a bootstrap 95% interval over the evaluated examples.
"""

from __future__ import annotations

import math
import random
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.errors import LlmlabError
from llmlab.evaluation.prompts import Prompt, build_prompt, select_examples
from llmlab.evaluation.tasks import Task
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.model import LanguageModel
from llmlab.plot import pyplot, save_figure
from llmlab.tokenizer import TextTokenizer


class ContinuationScore(NamedTuple):
    logprob: float  # sum over the continuation's tokens
    tokens: int
    greedy: bool  # whether greedy decoding would have produced exactly this continuation


class Scorer:
    """Token counts and continuation log-probabilities for decoder and encoder-decoder models."""

    def __init__(self, model: LanguageModel, tokenizer: TextTokenizer, batch_size: int = 16) -> None:
        if model.config.family == "encoder":
            raise LlmlabError("encoder-only models cannot be prompted", "evaluate a decoder or encoder-decoder model")
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size
        self.seq2seq = model.config.family == "encoder-decoder"
        self.block = model.config.block_size

    def prompt_ids(self, text: str) -> list[int]:
        """What the model reads for a prompt: the tokenizer's prefix (decoder) or end-of-sequence (seq2seq)."""
        if self.seq2seq:
            return self.tokenizer.encode(text) + [self.tokenizer.require("eos", "to end the input")]
        return self.tokenizer.prefix_ids + self.tokenizer.encode(text)

    def count_tokens(self, text: str) -> int:
        return len(self.prompt_ids(text))

    def budget(self, reserve: int) -> int:
        """Prompt tokens allowed when `reserve` tokens are kept for the answer."""
        if reserve >= self.block:
            raise LlmlabError(
                f"{reserve} tokens reserved for the answer leave no room in the {self.block}-token window",
                "lower --max-new-tokens",
            )
        return self.block if self.seq2seq else self.block - reserve

    @torch.inference_mode()
    def logprobs(self, contexts: list[str], continuations: list[str]) -> list[ContinuationScore]:
        """Log-probability, token count and greediness of each continuation after its context."""
        results: list[ContinuationScore] = []
        for start in range(0, len(contexts), self.batch_size):
            pairs = list(zip(contexts[start : start + self.batch_size], continuations[start : start + self.batch_size]))
            results += self._seq2seq_batch(pairs) if self.seq2seq else self._decoder_batch(pairs)
        return results

    def _decoder_batch(self, pairs: list[tuple[str, str]]) -> list[ContinuationScore]:
        rows, lengths = [], []
        for context, continuation in pairs:
            cont = self.tokenizer.encode(continuation)
            ids = (self.prompt_ids(context) + cont)[-(self.block + 1) :]  # the continuation always survives
            rows.append(ids)
            lengths.append(len(cont))
        width = max(len(r) for r in rows) - 1
        x = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):  # right padding: a causal model's real tokens never see it
            x[i, : len(r) - 1] = torch.tensor(r[:-1])
        logp = F.log_softmax(self.model(x.to(self.model.device)).float(), dim=-1).cpu()
        out = []
        for i, (r, n) in enumerate(zip(rows, lengths)):
            positions, target = torch.arange(len(r) - 1 - n, len(r) - 1), torch.tensor(r[-n:])
            greedy = bool((logp[i, positions].argmax(-1) == target).all())
            out.append(ContinuationScore(float(logp[i, positions, target].sum()), n, greedy))
        return out

    def _seq2seq_batch(self, pairs: list[tuple[str, str]]) -> list[ContinuationScore]:
        sources = [self.prompt_ids(c)[-self.block :] for c, _ in pairs]
        targets = [self.tokenizer.encode(t)[: self.block] for _, t in pairs]
        S, T = max(map(len, sources)), max(map(len, targets))
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        start = self.model.config.decoder_start_token_id
        start = pad if start is None else start
        src = torch.full((len(pairs), S), pad, dtype=torch.long)
        mask = torch.zeros((len(pairs), S), dtype=torch.bool)
        tgt = torch.full((len(pairs), T), pad, dtype=torch.long)
        for i, (s, t) in enumerate(zip(sources, targets)):
            src[i, : len(s)], mask[i, : len(s)], tgt[i, : len(t)] = torch.tensor(s), True, torch.tensor(t)
        decoder_in = torch.cat([torch.full((len(pairs), 1), start), tgt[:, :-1]], dim=1)
        device = self.model.device
        logp = F.log_softmax(self.model(src.to(device), decoder_in.to(device), mask.to(device)).float(), -1).cpu()
        out = []
        for i, t in enumerate(targets):
            positions, target = torch.arange(len(t)), torch.tensor(t)
            greedy = bool((logp[i, positions].argmax(-1) == target).all())
            out.append(ContinuationScore(float(logp[i, positions, target].sum()), len(t), greedy))
        return out


# -- metrics -----------------------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """First line, lower case, no punctuation, single spaces: how a free-form answer is compared."""
    first = text.strip().split("\n")[0].lower()
    first = first.translate(str.maketrans("", "", string.punctuation))
    return re.sub(r"\s+", " ", first).strip()


def rouge(prediction: str, references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F1 of a prediction, the best over its references (rouge-score, stemming on)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    scores = scorer.score_multi(references, prediction)
    return {name: scores[name].fmeasure for name in ("rouge1", "rouge2", "rougeL")}


def bootstrap_interval(values: list[float], seed: int = 0, resamples: int = 1000) -> tuple[float, float]:
    """95% percentile interval of the mean, from resampling the examples with replacement."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) < 2:
        return (float(data.mean()) if len(data) else math.nan,) * 2
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def bootstrap_statistic(
    items: list, statistic: Callable[[list], float], seed: int = 0, resamples: int = 300
) -> tuple[float, float]:
    """95% interval of a corpus-level statistic (distinct-n), resampling the items.

    Resampling adds duplicates, so distinct-n of a resample is biased low and a plain percentile
    interval would sit below the estimate: the resampled values are shifted by their mean bias
    (estimate - mean of the resamples) before taking the percentiles."""
    if len(items) < 2:
        value = statistic(items)
        return value, value
    rng = np.random.default_rng(seed)
    values = [statistic([items[i] for i in rng.integers(0, len(items), len(items))]) for _ in range(resamples)]
    shift = statistic(items) - float(np.mean(values))
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low + shift), float(high + shift)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct n-grams over all n-grams of the outputs (word level): diversity of what is generated."""
    grams = [tuple(words[i : i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition_rate(texts: list[str], n: int = 4) -> float:
    """Share of an output's word n-grams that already occurred in it, averaged over the outputs."""
    rates = []
    for text in texts:
        words = text.split()
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        if grams:
            rates.append(1 - len(set(grams)) / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


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


def _generate(task, scorer, generator, examples, k, select, seed, generation) -> ShotResult:
    config = generation or GenerationConfig(greedy=True, max_new_tokens=64)
    if not scorer.seq2seq:  # a decoder would go on to write the next example
        config = GenerationConfig(**{**config.to_dict(), "stop": sorted({*config.stop, task.template.separator})})
    prompts = prompts_for(task, scorer, examples, k, select, seed, reserve=config.max_new_tokens)
    outputs = generator.generate([p.text for p in prompts], config)
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


@torch.inference_mode()
def perplexity(
    model: LanguageModel, tokenizer: TextTokenizer, text: str, stride: int | None = None
) -> tuple[float, int]:
    """(perplexity, tokens scored) of a text, with a sliding window of the model's context.

    Each window scores only the tokens the previous one did not, so every token is predicted once,
    from up to block_size - stride tokens of preceding context (stride defaults to half the window).
    """
    if model.config.family != "decoder":
        raise LlmlabError("perplexity is defined here for decoder-only models", "evaluate a decoder checkpoint")
    ids = tokenizer.prefix_ids + tokenizer.encode(text)
    block = model.config.block_size
    stride = stride or max(1, block // 2)
    if not 0 < stride <= block:
        raise LlmlabError(f"--stride must be in 1..{block}, got {stride}", "use e.g. half the context")
    if len(ids) < 2:
        raise LlmlabError("the text has fewer than two tokens", "pass more text")
    nll, scored, end = 0.0, 0, 1  # tokens [1, end) are scored
    while end < len(ids):
        new_end = min(end + stride, len(ids))
        begin = max(0, new_end - block - 1)
        window = torch.tensor([ids[begin:new_end]], device=model.device)
        logp = F.log_softmax(model(window[:, :-1]).float(), dim=-1)[0]
        targets = window[0, 1:]
        first = end - begin - 1  # position (within the window's predictions) of the first unscored token
        nll -= float(logp[first:].gather(1, targets[first:, None]).sum())
        scored += len(targets) - first
        end = new_end
    return math.exp(nll / scored), scored


def plot_shots(results: list[ShotResult], out: Path, title: str) -> Path:
    """Each interval-carrying metric against the number of shots, with its 95% bootstrap interval."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=110)
    shots = [r.shots for r in results]
    for name in results[0].intervals:
        values = [r.metrics[name] for r in results]
        low = [r.metrics[name] - r.intervals[name][0] for r in results]
        high = [r.intervals[name][1] - r.metrics[name] for r in results]
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
