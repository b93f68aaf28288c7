"""Prompts: templates, shot selection, and budgeting that never exceeds the context window."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.errors import LlmlabError
from llmlab.evaluation.prompts import MARKER, PromptTemplate, _cut_middle, build_prompt, select_examples

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
    _assert_nothing_more_fits(prompt, demos, query, budget)


def _assert_nothing_more_fits(prompt, demos, query, budget):
    """The budget is used, not only respected: one more example, or one more character of a shortened query,
    would not fit."""

    def assemble(k, query_text):
        parts = [TEMPLATE.instruction] + [TEMPLATE.render_example(d) for d in demos[:k]]
        return TEMPLATE.separator.join([*parts, query_text])

    if prompt.shots_used < len(demos) and not prompt.query_shortened:
        assert words(assemble(prompt.shots_used + 1, TEMPLATE.render_query(query))) > budget
    if prompt.query_shortened:
        kept = int(prompt.notes[-1].rsplit(" to ", 1)[1].split()[0])
        assert prompt.notes[-1] == f"the query's 'text' was cut from {len(query['text'])} to {kept} characters"
        assert prompt.text == assemble(0, TEMPLATE.render_query({"text": _cut_middle(query["text"], kept)}))
        one_more = assemble(0, TEMPLATE.render_query({"text": _cut_middle(query["text"], kept + 1)}))
        assert words(one_more) > budget


def test_examples_are_dropped_before_the_query_is_cut_and_the_count_is_reported():
    demos = [{"text": "good " * 10, "label": "Positive"} for _ in range(5)]
    query = {"text": "bad " * 10, "label": "Negative"}
    prompt = build_prompt(TEMPLATE, demos, query, words, budget=50)
    assert (prompt.shots_used, prompt.query_shortened) == (2, False)
    assert prompt.notes == ["2 of 5 examples fit in the 50-token budget"]


def test_too_small_a_window_for_the_instruction_is_refused():
    with pytest.raises(LlmlabError, match="alone take 6 tokens, more than the 5 .* reserve fewer new tokens$"):
        build_prompt(TEMPLATE, [], {"text": "fine", "label": "x"}, words, budget=5)


def test_budgets_at_exactly_the_count_fit():
    """`<=` not `<` at every boundary: a prompt whose count equals the budget is kept whole."""
    query = {"text": "one two three", "label": "x"}
    whole = build_prompt(TEMPLATE, [], query, words, budget=100).tokens
    exact = build_prompt(TEMPLATE, [], query, words, budget=whole)
    assert (exact.tokens, exact.query_shortened, exact.notes) == (whole, False, [])
    demos = [{"text": "good film", "label": "Positive"}] * 2
    both = build_prompt(TEMPLATE, demos, query, words, budget=100).tokens
    assert build_prompt(TEMPLATE, demos, query, words, budget=both).shots_used == 2
    bare = build_prompt(TEMPLATE, [], query, words, budget=6)  # instruction, marker and slot: exactly 6 words
    assert bare.text == "Classify each review.\n\nReview:  [...] \nSentiment:" and bare.tokens == 6
    assert bare.notes == ["the query's 'text' was cut from 13 to 0 characters"]


@pytest.mark.parametrize("keep", range(0, 9))
def test_cut_middle_keeps_the_head_and_the_tail(keep):
    text = "abcdefg"
    cut = _cut_middle(text, keep)
    if keep >= len(text):
        assert cut == text
    else:
        head, tail = (keep + 1) // 2, keep // 2
        assert cut == text[:head] + MARKER + text[len(text) - tail :]
        assert len(cut) == keep + len(MARKER)


def test_templates_must_end_with_their_answer_slot():
    with pytest.raises(LlmlabError, match=r"must end with its answer slot .* — put the answer last, e\.g\. 'Review"):
        build_prompt(PromptTemplate("{label}: {text}"), [], {"text": "a", "label": "b"}, words, 100)
    with pytest.raises(LlmlabError, match=r"^the template has no \{text\} field — name the input field it uses$"):
        build_prompt(PromptTemplate("Q: {question} A: {label}"), [], {"question": "a"}, words, 100)
    assert TEMPLATE.query == "Review: {text}\nSentiment:" and TEMPLATE.answer("Positive") == " Positive"
    assert TEMPLATE.answer({"text": "t", "label": "Negative"}) == " Negative"
    trailing = PromptTemplate("Review: {text}\nSentiment: {label}\n")  # a trailing newline still ends with the slot
    trailing.validate()
    assert trailing.render_example({"text": " lead", "label": "Positive \n"}) == "Review:  lead\nSentiment: Positive"


def test_balanced_selection_alternates_labels_and_is_seeded():
    pool = [{"text": str(i), "label": "Positive" if i % 4 else "Negative"} for i in range(40)]
    chosen = select_examples(pool, 6, "balanced", seed=3)
    assert sorted(d["label"] for d in chosen) == ["Negative"] * 3 + ["Positive"] * 3
    assert chosen == select_examples(pool, 6, "balanced", seed=3) != select_examples(pool, 6, "balanced", seed=4)
    assert select_examples(pool, 2, "first", seed=0) == pool[:2]
    with pytest.raises(LlmlabError, match="^41 shots asked but only 40 examples to draw from — ask for fewer shots$"):
        select_examples(pool, 41, "random", seed=0)
    assert len(select_examples(pool, 40, "random", seed=0)) == 40  # all of them is allowed
    with pytest.raises(LlmlabError, match=r"^shots must be >= 0, got -1 — pass e\.g\. --shots 0,1,3,5$"):
        select_examples(pool, -1, "first", seed=0)
    with pytest.raises(LlmlabError, match="^unknown selection 'best' — use first, random or balanced$"):
        select_examples(pool, 1, "best", seed=0)


def test_balanced_selection_takes_exactly_k_when_a_label_runs_out():
    """One Negative among ten: it is taken once, the rest are Positive, and an odd k is not overshot.
    Examples without a label form their own group."""
    pool = [{"text": "n", "label": "Negative"}] + [{"text": str(i), "label": "Positive"} for i in range(10)]
    chosen = select_examples(pool, 5, "balanced", seed=0)
    assert sorted(d["label"] for d in chosen) == ["Negative"] + ["Positive"] * 4
    even = [{"text": str(i), "label": "Positive" if i % 2 else "Negative"} for i in range(10)]
    assert len(select_examples(even, 3, "balanced", seed=0)) == 3  # an odd k stops mid-round
    unlabeled = select_examples([*pool[:3], {"text": "?"}], 3, "balanced", seed=0)
    assert len(unlabeled) == 3 and {"text": "?"} in unlabeled


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
