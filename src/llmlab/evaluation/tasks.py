"""Evaluation tasks: examples, a prompt template, and what counts as the answer.

Built in: `sentiment` (rt-polarity, Positive/Negative), `dialogsum` (dialogue -> summary, three
references per test dialogue) and `icl-synthetic` (a fresh random input-to-label mapping per
episode: only the examples in the context can tell the answer). Any JSONL file is a task too, with
its fields and template given as options. Data is read from `$LLMLAB_DATA` (default
`../shared/data`), never copied.
"""

from __future__ import annotations

import json
import os
import random
import string
from dataclasses import dataclass
from pathlib import Path

from llmlab.data.records import SUFFIXES, read_records
from llmlab.errors import LlmlabError
from llmlab.evaluation.prompts import PromptTemplate

DEMOS = "_demos"  # an example may carry its own demonstration pool (episodic tasks)


@dataclass
class Task:
    name: str
    template: PromptTemplate
    demonstrations: list[dict[str, str]]  # the pool shots are drawn from
    examples: list[dict[str, str]]  # what is evaluated
    labels: list[str] | None = None  # classification: the answers ranked against each other
    references: tuple[str, ...] = ()  # generation: the fields holding reference answers
    reasoning: str = ""  # a numeric task: how the model answers (evaluation/reasoning.py's MODES)

    @property
    def kind(self) -> str:
        if self.reasoning:
            return "numeric"
        return "classification" if self.labels else "generation"

    def pool(self, example: dict[str, str]) -> list[dict[str, str]]:
        return example.get(DEMOS, self.demonstrations)  # type: ignore[return-value]

    def reference_answers(self, example: dict[str, str]) -> list[str]:
        fields = self.references or (self.template.answer_field,)
        return [example[f] for f in fields if example.get(f)]


SENTIMENT_TEMPLATE = PromptTemplate("Classify this review:\n{text}\nSentiment: {label}", "label", "text")
DIALOGSUM_TEMPLATE = PromptTemplate(
    "Dialogue:\n{dialogue}\nSummary: {summary}", "summary", "dialogue",
    instruction="Summarize the following conversation.",
)  # fmt: skip


def data_dir() -> Path:
    return Path(os.environ.get("LLMLAB_DATA", "../shared/data"))


def _require(path: Path) -> Path:
    if not path.exists():
        raise LlmlabError(f"{path} does not exist", "set LLMLAB_DATA to the folder holding the shared data")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(_require(path), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise LlmlabError(f"{path}:{number} is not JSON", "one JSON object per line") from None
    return rows


def sentiment_task(root: Path | None = None) -> Task:
    """rt-polarity: 5,331 positive and 5,331 negative review sentences; a fixed 80/20 split."""
    folder = (root or data_dir()) / "rt-polarity"
    rows = []
    for label, name in (("Positive", "pos.txt"), ("Negative", "neg.txt")):
        text = _require(folder / name).read_text(encoding="utf-8")
        rows += [{"text": line.strip(), "label": label} for line in text.splitlines() if line.strip()]
    random.Random(0).shuffle(rows)
    cut = int(len(rows) * 0.8)
    return Task("sentiment", SENTIMENT_TEMPLATE, rows[:cut], rows[cut:], labels=["Positive", "Negative"])


def dialogsum_task(root: Path | None = None) -> Task:
    """DialogSum: demonstrations from train, evaluation on test with its three human summaries."""
    folder = (root or data_dir()) / "dialogsum"
    train = [{"dialogue": r["dialogue"], "summary": r["summary"]} for r in _read_jsonl(folder / "train.jsonl")]
    test = [
        {k: r[k] for k in ("dialogue", "summary1", "summary2", "summary3") if k in r}
        for r in _read_jsonl(folder / "test.jsonl")
    ]
    return Task("dialogsum", DIALOGSUM_TEMPLATE, train, test, references=("summary1", "summary2", "summary3"))


ICL_LABELS = ["left", "right"]
ICL_TEMPLATE = PromptTemplate("Input: {input}\nLabel: {label}", "label", "input", separator="\n")


def icl_episode(rng: random.Random, n_inputs: int = 4, n_examples: int = 12) -> list[dict[str, str]]:
    """Examples of one episode: n_inputs random 3-letter inputs, each mapped to a label at random."""
    inputs = ["".join(rng.choice(string.ascii_lowercase) for _ in range(3)) for _ in range(n_inputs)]
    mapping = {x: rng.choice(ICL_LABELS) for x in inputs}
    return [{"input": x, "label": mapping[x]} for x in (rng.choice(inputs) for _ in range(n_examples))]


def icl_corpus(episodes: int, seed: int = 0) -> list[str]:
    """Pre-training documents: each an episode written in the task's own format."""
    rng = random.Random(seed)
    return [ICL_TEMPLATE.separator.join(map(ICL_TEMPLATE.render_example, icl_episode(rng))) for _ in range(episodes)]


def icl_task(episodes: int = 400, seed: int = 12345) -> Task:
    """Held-out episodes (a seed the corpus never used): the query's label is only in its own episode."""
    rng = random.Random(seed)
    examples = []
    for _ in range(episodes):
        *demos, query = icl_episode(rng, n_examples=9)
        examples.append({**query, DEMOS: demos})
    return Task("icl-synthetic", ICL_TEMPLATE, [], examples, labels=list(ICL_LABELS))


def jsonl_task(
    path: str,
    template: str | None = None,
    input_field: str = "text",
    label_field: str = "label",
    labels: list[str] | None = None,
    instruction: str = "",
    demonstrations: str | None = None,
) -> Task:
    """Any records file (.jsonl, .json, .csv, .parquet): classification when there are few distinct labels
    (or --labels), else generation."""
    rows = [{k: str(v) for k, v in r.items()} for r in read_records(_require(Path(path)))]
    if not rows or any(input_field not in r or label_field not in r for r in rows):
        raise LlmlabError(
            f"{path}: every line needs {input_field!r} and {label_field!r}",
            "name them with --input-field/--label-field",
        )
    template_text = template or f"{{{input_field}}}\n{label_field.capitalize()}: {{{label_field}}}"
    pool = [{k: str(v) for k, v in r.items()} for r in read_records(demonstrations)] if demonstrations else []
    if not pool:  # demonstrations from the same file: the first half, evaluated on the second
        half = max(1, len(rows) // 2)
        pool, rows = rows[:half], rows[half:] or rows[:half]
    distinct = sorted({r[label_field] for r in pool + rows})
    if labels is None and len(distinct) <= 20:
        labels = distinct
    tmpl = PromptTemplate(template_text, label_field, input_field, instruction=instruction)
    return Task(Path(path).stem, tmpl, pool, rows, labels=labels)


def arithmetic_task(reasoning: str = "direct", seed: int = 2024) -> Task:
    """Generated word problems (evaluation/arithmetic.py): 300 demonstrations, 500 other problems to answer."""
    from llmlab.evaluation.arithmetic import arithmetic_problems
    from llmlab.evaluation.reasoning import MODES

    if reasoning not in MODES:
        raise LlmlabError(f"unknown reasoning {reasoning!r}", f"use one of {', '.join(MODES)}")
    problems = arithmetic_problems(800, seed)
    return Task("arithmetic", MODES[reasoning], problems[:300], problems[300:], reasoning=reasoning)


BUILT_IN = {"sentiment": sentiment_task, "dialogsum": dialogsum_task, "icl-synthetic": icl_task,
            "arithmetic": arithmetic_task}  # fmt: skip


def load_task(name: str, **options) -> Task:
    """A built-in task by name, or a JSONL file (options: template, input_field, label_field, labels, ...)."""
    reasoning = options.pop("reasoning", None)
    if name == "arithmetic":
        return arithmetic_task(reasoning or "direct")
    if reasoning not in (None, "direct"):
        raise LlmlabError(f"--reasoning applies to the arithmetic task, not {name}", "leave it out")
    if name in BUILT_IN:
        return BUILT_IN[name]()
    if name.endswith(SUFFIXES):
        return jsonl_task(name, **options)
    raise LlmlabError(f"unknown task {name!r}", f"use {', '.join(BUILT_IN)} or a {'/'.join(SUFFIXES)} file")
