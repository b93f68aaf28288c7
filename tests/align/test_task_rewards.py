"""Verifiable rewards from a shared-data task: the prompts are the task's training records as fine-tuning
renders them, and a completion scores 1 for its record's label (0 otherwise), or its ROUGE-L against the
summary; a prompt from elsewhere is refused. Built on a small stand-in data folder, so it needs no shared data."""

from __future__ import annotations

import json

import pytest
from rouge_score import rouge_scorer

from llmlab.align.data import read_prompts
from llmlab.align.rewards import load_reward
from llmlab.errors import LlmlabError
from llmlab.evaluation.tasks import sentiment_task

POSITIVE = ["a gripping , funny film .", "warm and wise ."]
NEGATIVE = ["a dull , lifeless mess .", "warm and wise ."]  # the repeated sentence keeps its first label


@pytest.fixture
def data(tmp_path, monkeypatch):
    (tmp_path / "rt-polarity").mkdir()
    (tmp_path / "rt-polarity" / "pos.txt").write_text("\n".join(POSITIVE * 5) + "\n")
    (tmp_path / "rt-polarity" / "neg.txt").write_text("\n".join(NEGATIVE * 5) + "\n")
    (tmp_path / "dialogsum").mkdir()
    dialogue = {"dialogue": "#Person1#: Lunch at noon?\n#Person2#: Yes.", "summary": "They agree to lunch."}
    (tmp_path / "dialogsum" / "train.jsonl").write_text(json.dumps(dialogue) + "\n")
    (tmp_path / "dialogsum" / "test.jsonl").write_text(json.dumps({"dialogue": "x", "summary1": "y"}) + "\n")
    monkeypatch.setenv("LLMLAB_DATA", str(tmp_path))
    return tmp_path


def _prompt(text: str) -> str:
    return f"Classify this review:\n{text}\nSentiment:"  # the sentiment template's query, as fine-tuning shows it


def test_the_prompts_are_the_training_records_as_fine_tuning_renders_them(data):
    prompts = read_prompts("task:sentiment")
    assert len(prompts) == len(set(prompts)) and set(prompts) <= {_prompt(t) for t in POSITIVE + NEGATIVE}
    assert len(prompts) >= 2  # 80% of 20 sentences, three of them distinct


def test_a_completion_scores_one_for_its_records_label_and_zero_otherwise(data):
    reward = load_reward("task:sentiment")
    good, bad, both = _prompt(POSITIVE[0]), _prompt(NEGATIVE[0]), _prompt(POSITIVE[1])
    prompts = [good, good, good, good, bad, bad, both]
    completions = [" Positive", " positive.\nMore", " Negative", "", " Negative", " Positively", " Positive"]
    first = next(r["label"] for r in sentiment_task().demonstrations if r["text"] == POSITIVE[1])
    assert reward(prompts, completions) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, float(first == "Positive")]


def test_a_summary_scores_its_rouge_l_against_the_reference(data):
    reward = load_reward("task:dialogsum")
    (prompt,) = read_prompts("task:dialogsum")
    assert prompt.startswith("Summarize the following conversation.") and prompt.endswith("Summary:")
    expected = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score("They agree to lunch.", "they agreed")
    assert reward([prompt], [" they agreed\n"]) == [pytest.approx(expected["rougeL"].fmeasure)]
    assert 0 < expected["rougeL"].fmeasure < 1


def test_a_prompt_the_task_does_not_hold_and_an_unknown_task_are_refused(data):
    with pytest.raises(LlmlabError, match="knows the answers of its own prompts only"):
        load_reward("task:sentiment")(["What is 2 + 2?"], [" 4"])
    with pytest.raises(LlmlabError, match="unknown task 'poetry'"):
        load_reward("task:poetry")
