"""Metrics of task heads: accuracy, per-label and macro-averaged precision/recall/F1 and the confusion
matrix for classifiers; entity-level precision/recall/F1 per type and micro-averaged for taggers, the
way CoNLL's evaluation (and seqeval by default) counts them: an entity is right only when its type and
both of its boundaries are."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from llmlab.data.tagging import bio_spans


@dataclass
class PRF:
    precision: float
    recall: float
    f1: float
    support: int  # true instances


def prf(correct: int, predicted: int, true: int) -> PRF:
    """Zero where nothing was predicted or nothing was true (scikit-learn's and seqeval's zero_division=0)."""
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1, true)


def confusion_matrix(true: list[int], predicted: list[int], n: int) -> np.ndarray:
    """(n, n) counts: row = true label, column = predicted label."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(true, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def per_label(matrix: np.ndarray) -> list[PRF]:
    diagonal = np.diag(matrix)
    return [prf(int(diagonal[i]), int(matrix[:, i].sum()), int(matrix[i].sum())) for i in range(len(matrix))]


def macro_f1(true: list[int], predicted: list[int], n: int) -> float:
    """The unweighted mean of every label's F1 (labels absent from both count as 0, as scikit-learn's
    f1_score(average='macro', labels=range(n)))."""
    return float(np.mean([s.f1 for s in per_label(confusion_matrix(true, predicted, n))]))


def entity_counts(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict[str, tuple[int, int, int]]:
    """Per entity type: (correct, predicted, true) entities over all sentences."""
    correct: Counter[str] = Counter()
    predicted: Counter[str] = Counter()
    true: Counter[str] = Counter()
    for gold, guess in zip(true_tags, predicted_tags):
        gold_spans, guess_spans = set(bio_spans(gold)), set(bio_spans(guess))
        true.update(s.type for s in gold_spans)
        predicted.update(s.type for s in guess_spans)
        correct.update(s.type for s in gold_spans & guess_spans)
    return {kind: (correct[kind], predicted[kind], true[kind]) for kind in sorted(set(true) | set(predicted))}


def entity_scores(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict[str, PRF]:
    """Per type and "micro avg" over all entities."""
    counts = entity_counts(true_tags, predicted_tags)
    scores = {kind: prf(*c) for kind, c in counts.items()}
    totals = [sum(c[i] for c in counts.values()) for i in range(3)]
    scores["micro avg"] = prf(*totals)
    return scores
