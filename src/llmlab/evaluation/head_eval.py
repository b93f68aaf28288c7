"""`llmlab evaluate` for an encoder with a task head: its predictions on labelled data, scored with
`head_metrics`, with 95% bootstrap intervals (examples or sentences resampled), and for classifiers a
confusion matrix plot."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmlab.data.tagging import TaggedSentence
from llmlab.errors import LlmlabError
from llmlab.evaluation.head_metrics import confusion_matrix, entity_scores, macro_f1, per_label, prf
from llmlab.evaluation.metrics import bootstrap_interval, bootstrap_statistic
from llmlab.model import LanguageModel
from llmlab.tasks.predict import classify_texts, tag_words
from llmlab.tokenizer import TextTokenizer


@dataclass
class HeadReport:
    task: str
    examples: int
    metrics: dict[str, float]
    intervals: dict[str, tuple[float, float]]
    per_label: dict[str, dict[str, float]]  # label or entity type -> precision, recall, f1, support
    labels: list[str] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)  # classifiers: row true, column predicted


def evaluate_classifier(model: LanguageModel, tokenizer: TextTokenizer, texts: list[str], gold: list[str],
                        seed: int = 0) -> HeadReport:  # fmt: skip
    """Accuracy and macro-F1 of a one-label classifier on (text, label) pairs."""
    labels = model.config.labels
    index = {n: i for i, n in enumerate(labels)}
    unknown = sorted({g for g in gold if g not in index})
    if unknown:
        raise LlmlabError(f"the evaluation data has the label {unknown[0]!r}, which the classifier never learned "
                          f"({', '.join(labels)})", "evaluate on data with the trained labels")  # fmt: skip
    predicted = [index[r.labels[0]] for r in classify_texts(model, tokenizer, texts)]
    true = [index[g] for g in gold]
    hits = [float(t == p) for t, p in zip(true, predicted)]
    pairs = list(zip(true, predicted))
    macro = lambda items: macro_f1([t for t, _ in items], [p for _, p in items], len(labels))  # noqa: E731
    matrix = confusion_matrix(true, predicted, len(labels))
    return HeadReport(
        "classify", len(texts), {"accuracy": sum(hits) / len(hits), "macro_f1": macro(pairs)},
        {"accuracy": bootstrap_interval(hits, seed), "macro_f1": bootstrap_statistic(pairs, macro, seed)},
        {n: vars(s) for n, s in zip(labels, per_label(matrix))}, list(labels), matrix.tolist(),
    )  # fmt: skip


def evaluate_tagger(model: LanguageModel, tokenizer: TextTokenizer, sentences: list[TaggedSentence],
                    seed: int = 0) -> HeadReport:  # fmt: skip
    """Entity precision, recall and F1 (micro over all entities, and per type) and tag accuracy."""
    gold = [s.tags for s in sentences]
    guess = [tag_words(model, tokenizer, s.words).tags for s in sentences]
    pairs = list(zip(gold, guess))
    f1 = lambda items: entity_scores([g for g, _ in items], [p for _, p in items])["micro avg"].f1  # noqa: E731
    scores = entity_scores(gold, guess)
    hits = [float(g == p) for gs, ps in pairs for g, p in zip(gs, ps)]
    micro = scores["micro avg"]
    metrics = {"entity_f1": micro.f1, "entity_precision": micro.precision, "entity_recall": micro.recall,
               "tag_accuracy": sum(hits) / len(hits)}  # fmt: skip
    intervals = {"entity_f1": bootstrap_statistic(pairs, f1, seed), "tag_accuracy": bootstrap_interval(hits, seed)}
    return HeadReport("tag", len(sentences), metrics, intervals, {k: vars(s) for k, s in scores.items()})


def evaluate_multilabel(model: LanguageModel, tokenizer: TextTokenizer, texts: list[str], gold: list[list[str]],
                        seed: int = 0) -> HeadReport:  # fmt: skip
    """Micro-F1 over every (text, label) decision, macro-F1 over labels, and exact match."""
    labels = model.config.labels
    unknown = sorted({g for names in gold for g in names if g not in labels})
    if unknown:
        raise LlmlabError(f"the evaluation data has the label {unknown[0]!r}, which the classifier never learned "
                          f"({', '.join(labels)})", "evaluate on data with the trained labels")  # fmt: skip
    guess = [set(r.labels) for r in classify_texts(model, tokenizer, texts)]
    pairs = list(zip([set(g) for g in gold], guess))

    def counts(items, label=None) -> tuple[int, int, int]:
        chosen = [label] if label else labels
        correct = sum(len(g & p & set(chosen)) for g, p in items)
        return correct, sum(len(p & set(chosen)) for _, p in items), sum(len(g & set(chosen)) for g, _ in items)

    micro = lambda items: prf(*counts(items)).f1  # noqa: E731
    per = {name: prf(*counts(pairs, name)) for name in labels}
    exact = [float(g == p) for g, p in pairs]
    metrics = {"micro_f1": micro(pairs), "macro_f1": sum(v.f1 for v in per.values()) / len(per),
               "exact_match": sum(exact) / len(exact)}  # fmt: skip
    intervals = {"micro_f1": bootstrap_statistic(pairs, micro, seed), "exact_match": bootstrap_interval(exact, seed)}
    return HeadReport("multilabel", len(texts), metrics, intervals, {k: vars(v) for k, v in per.items()}, list(labels))


def evaluate_regressor(model: LanguageModel, tokenizer: TextTokenizer, texts: list[str], gold: list[float],
                       seed: int = 0) -> HeadReport:  # fmt: skip
    """Mean squared and absolute error, and Pearson's correlation of predicted and true scores."""
    guess = [r.scores["score"] for r in classify_texts(model, tokenizer, texts)]
    squared = [(g - p) ** 2 for g, p in zip(gold, guess)]
    pairs = list(zip(gold, guess))
    metrics = {"mse": sum(squared) / len(squared), "mae": sum(abs(g - p) for g, p in pairs) / len(pairs),
               "pearson": _pearson(pairs)}  # fmt: skip
    intervals = {"mse": bootstrap_interval(squared, seed), "pearson": bootstrap_statistic(pairs, _pearson, seed)}
    return HeadReport("regress", len(texts), metrics, intervals, {})


def _pearson(pairs: list[tuple[float, float]]) -> float:
    import numpy as np

    x, y = np.array(pairs, dtype=np.float64).T
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def plot_confusion(report: HeadReport, out: Path, title: str) -> Path:
    """The confusion matrix as a heat map with its counts."""
    from llmlab.plot import pyplot, save_figure

    plt = pyplot()
    n = len(report.labels)
    fig, ax = plt.subplots(figsize=(2 + 0.8 * n, 1.6 + 0.8 * n))
    ax.imshow(report.confusion, cmap="Blues")
    ax.set_xticks(range(n), report.labels, rotation=45, ha="right")
    ax.set_yticks(range(n), report.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(report.confusion):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center")
    ax.set_title(title)
    fig.tight_layout()
    return save_figure(fig, out)
