"""Prompts: templates, shot selection, and budgeting that never exceeds the context window."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.errors import LlmlabError
from llmlab.evaluation.prompts import MARKER, PromptTemplate, build_prompt, select_examples

TEMPLATE = PromptTemplate("Review: {text}\nSentiment: {label}", "label", "text", instruction="Classify each review.")


def words(text: str) -> int:
    return len(text.split())  # a stand-in tokenizer: one token per word


@settings(max_examples=300, deadline=None)
@given(
    example_words=st.lists(st.integers(1, 60), min_size=0, max_size=8),
    query_words=st.integers(1, 400),
    budget=st.integers(12, 300),
)
def test_budgeting_never_exceeds_the_window_and_keeps_instruction_and_answer_slot(example_words, query_words, budget):
    demos = [{"text": " ".join(["w"] * n), "label": "Positive"} for n in example_words]
    query = {"text": " ".join(f"q{i}" for i in range(query_words)), "label": "Negative"}
    prompt = build_prompt(TEMPLATE, demos, query, words, budget)
    assert prompt.tokens == words(prompt.text) <= budget
    assert prompt.text.startswith(TEMPLATE.instruction) and prompt.text.endswith("\nSentiment:")
    assert prompt.shots_used <= len(demos) and prompt.text.count("Sentiment: Positive") == prompt.shots_used
    if prompt.query_shortened:
        assert prompt.shots_used == 0 and MARKER.strip() in prompt.text
        assert "q0" in prompt.text or budget < 20  # the head of the field is kept
    else:
        assert f"q{query_words - 1}" in prompt.text  # the whole query


def test_examples_are_dropped_before_the_query_is_cut_and_the_count_is_reported():
    demos = [{"text": "good " * 10, "label": "Positive"} for _ in range(5)]
    query = {"text": "bad " * 10, "label": "Negative"}
    prompt = build_prompt(TEMPLATE, demos, query, words, budget=50)
    assert (prompt.shots_used, prompt.query_shortened) == (2, False)
    assert prompt.notes == ["2 of 5 examples fit in the 50-token budget"]


def test_too_small_a_window_for_the_instruction_is_refused():
    with pytest.raises(LlmlabError, match="instruction and the answer slot alone take"):
        build_prompt(TEMPLATE, [], {"text": "fine", "label": "x"}, words, budget=3)


def test_templates_must_end_with_their_answer_slot():
    with pytest.raises(LlmlabError, match="must end with its answer slot"):
        build_prompt(PromptTemplate("{label}: {text}"), [], {"text": "a", "label": "b"}, words, 100)
    assert TEMPLATE.query == "Review: {text}\nSentiment:" and TEMPLATE.answer("Positive") == " Positive"


def test_balanced_selection_alternates_labels_and_is_seeded():
    pool = [{"text": str(i), "label": "Positive" if i % 4 else "Negative"} for i in range(40)]
    chosen = select_examples(pool, 6, "balanced", seed=3)
    assert sorted(d["label"] for d in chosen) == ["Negative"] * 3 + ["Positive"] * 3
    assert chosen == select_examples(pool, 6, "balanced", seed=3) != select_examples(pool, 6, "balanced", seed=4)
    assert select_examples(pool, 2, "first", seed=0) == pool[:2]
    with pytest.raises(LlmlabError, match="only 40 examples"):
        select_examples(pool, 41, "random", seed=0)


def test_built_in_tasks_read_the_shared_data(monkeypatch):
    from llmlab.evaluation.tasks import load_task
    from tests.helpers import require_data

    monkeypatch.setenv("LLMLAB_DATA", str(require_data("rt-polarity").parent))
    require_data("dialogsum/test.jsonl")
    sentiment = load_task("sentiment")
    assert len(sentiment.demonstrations) + len(sentiment.examples) == 2 * 5331 and sentiment.labels == [
        "Positive",
        "Negative",
    ]
    assert {e["label"] for e in sentiment.examples} == {"Positive", "Negative"}
    dialogsum = load_task("dialogsum")
    assert len(dialogsum.demonstrations) == 12460 and len(dialogsum.examples) == 500
    assert len(dialogsum.reference_answers(dialogsum.examples[0])) == 3
    prompt = build_prompt(dialogsum.template, dialogsum.demonstrations[:3], dialogsum.examples[0], words, budget=60)
    assert prompt.tokens <= 60 and prompt.shots_used == 0 and prompt.query_shortened
    assert prompt.text.startswith("Summarize the following conversation.") and prompt.text.endswith("Summary:")
