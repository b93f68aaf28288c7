"""Metrics of evaluated answers: normalised exact match, ROUGE, diversity (distinct-n, repetition) and
bootstrap 95% intervals over the examples."""

from __future__ import annotations

import math
import re
import string
from collections.abc import Callable

import numpy as np


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
