"""Zero-, one- and few-shot prompts that fit the model's context window.

A prompt is an instruction, K solved examples and the query, each example rendered by one template
(`Classify this review:\\n{text}\\nSentiment: {label}`) and the query by the same template cut
before its answer slot. When the prompt and the tokens reserved for the answer would not fit, the
examples are dropped from the end, then the query's long field is shortened from the middle (with
a marker); the instruction and the answer slot are never cut.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from llmlab.errors import LlmlabError

MARKER = " [...] "


@dataclass
class PromptTemplate:
    example: str  # one solved example; the answer field's placeholder ends it
    answer_field: str = "label"
    long_field: str = "text"  # the field cut from the middle when even the bare query is too long
    instruction: str = ""
    separator: str = "\n\n"

    def validate(self) -> None:
        slot = "{" + self.answer_field + "}"
        fields = {name for _, name, _, _ in string.Formatter().parse(self.example) if name}
        if not self.example.rstrip().endswith(slot):
            raise LlmlabError(
                f"the example template must end with its answer slot {slot}: {self.example!r}",
                "put the answer last, e.g. 'Review: {text}\\nSentiment: {label}'",
            )
        if self.long_field not in fields:
            raise LlmlabError(f"the template has no {{{self.long_field}}} field", "name the input field it uses")

    @property
    def query(self) -> str:
        """The example template up to its answer slot, without trailing spaces (they start the answer)."""
        return self.example[: self.example.rindex("{" + self.answer_field + "}")].rstrip(" ")

    @property
    def answer_prefix(self) -> str:
        """The spaces between the query and the answer: part of the answer, as lm-evaluation-harness has it."""
        head = self.example[: self.example.rindex("{" + self.answer_field + "}")]
        return head[len(head.rstrip(" ")) :]

    def render_example(self, example: dict[str, str]) -> str:
        return self.example.format(**example).rstrip()

    def render_query(self, example: dict[str, str]) -> str:
        return self.query.format(**example)

    def answer(self, example_or_label: dict[str, str] | str) -> str:
        label = example_or_label if isinstance(example_or_label, str) else example_or_label[self.answer_field]
        return self.answer_prefix + label


@dataclass
class Prompt:
    text: str
    tokens: int
    shots_requested: int
    shots_used: int
    query_shortened: bool = False
    notes: list[str] = field(default_factory=list)


def select_examples(
    pool: list[dict[str, str]], k: int, how: str, seed: int, label_field: str = "label"
) -> list[dict[str, str]]:
    """k demonstrations from the pool: the first k, k at random, or balanced over the labels."""
    if k < 0:
        raise LlmlabError(f"shots must be >= 0, got {k}", "pass e.g. --shots 0,1,3,5")
    if k > len(pool):
        raise LlmlabError(f"{k} shots asked but only {len(pool)} examples to draw from", "ask for fewer shots")
    rng = random.Random(seed)
    if how == "first":
        return pool[:k]
    if how == "random":
        return rng.sample(pool, k)
    if how == "balanced":
        by_label: dict[str, list[dict[str, str]]] = {}
        for example in pool:
            by_label.setdefault(example.get(label_field, ""), []).append(example)
        queues = {label: rng.sample(items, len(items)) for label, items in sorted(by_label.items())}
        chosen: list[dict[str, str]] = []
        while len(chosen) < k:
            for label in list(queues):
                if queues[label] and len(chosen) < k:
                    chosen.append(queues[label].pop())
        rng.shuffle(chosen)  # no label runs in a fixed order
        return chosen
    raise LlmlabError(f"unknown selection {how!r}", "use first, random or balanced")


def build_prompt(
    template: PromptTemplate,
    demonstrations: list[dict[str, str]],
    query: dict[str, str],
    count_tokens: Callable[[str], int],
    budget: int,
) -> Prompt:
    """The prompt with as many of the demonstrations as fit in `budget` tokens (see the module doc)."""
    template.validate()

    def assemble(k: int, query_text: str) -> str:
        parts = ([template.instruction] if template.instruction else []) + [
            template.render_example(d) for d in demonstrations[:k]
        ]
        return template.separator.join([*parts, query_text])

    query_text = template.render_query(query)
    k = len(demonstrations)
    while k > 0 and count_tokens(assemble(k, query_text)) > budget:
        k -= 1
    notes = []
    if k < len(demonstrations):
        notes.append(f"{k} of {len(demonstrations)} examples fit in the {budget}-token budget")
    shortened = False
    if count_tokens(assemble(0, query_text)) > budget:
        long_text = query[template.long_field]
        bare = assemble(0, template.render_query({**query, template.long_field: MARKER.strip()}))
        if count_tokens(bare) > budget:
            raise LlmlabError(
                f"the instruction and the answer slot alone take {count_tokens(bare)} tokens, "
                f"more than the {budget} the context window leaves",
                "shorten the instruction or the template, or reserve fewer new tokens",
            )
        low, high = 0, len(long_text)  # the most characters of the field that fit, half from each end
        while low < high:
            middle = (low + high + 1) // 2
            cut = _cut_middle(long_text, middle)
            if count_tokens(assemble(0, template.render_query({**query, template.long_field: cut}))) <= budget:
                low = middle
            else:
                high = middle - 1
        query_text = template.render_query({**query, template.long_field: _cut_middle(long_text, low)})
        shortened = True
        notes.append(f"the query's {template.long_field!r} was cut from {len(long_text)} to {low} characters")
    text = assemble(k, query_text)
    return Prompt(text, count_tokens(text), len(demonstrations), k, shortened, notes)


def _cut_middle(text: str, keep: int) -> str:
    if keep >= len(text):
        return text
    head = (keep + 1) // 2
    return text[:head] + MARKER + text[len(text) - (keep - head) :]
