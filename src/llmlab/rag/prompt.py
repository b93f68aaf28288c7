"""The RAG prompt: numbered passages (best first), the question, the answer slot, within a token budget.

Passages are dropped from the lowest-ranked up until the prompt fits (the caller is told which); if even
the best passage alone does not fit, it is cut at its end. The instruction, the question and the answer
slot are never cut, as in the few-shot prompt builder (`evaluation/prompts.py`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from llmlab.errors import LlmlabError

INSTRUCTION = "Answer the question from the passages below. Cite the passages you used by number, like [1]."
MARKER = " [...]"


@dataclass(frozen=True)
class Passage:
    text: str
    source: str


@dataclass
class RagPrompt:
    text: str
    tokens: int
    passages: list[Passage]  # those in the prompt, numbered from 1 in this order
    dropped: list[Passage]  # those that did not fit
    notes: list[str] = field(default_factory=list)


def render(question: str, passages: list[Passage], instruction: str = INSTRUCTION) -> str:
    numbered = "\n\n".join(f"[{i}] ({p.source}) {p.text.strip()}" for i, p in enumerate(passages, 1))
    body = f"{instruction}\n\n{numbered}\n\n" if passages else f"{instruction}\n\n"
    return f"{body}Question: {question.strip()}\nAnswer:"


def fit_prompt(question: str, passages: list[Passage], count_tokens: Callable[[str], int], budget: int,
               instruction: str = INSTRUCTION) -> RagPrompt:  # fmt: skip
    """As many of the passages (best first) as fit in `budget` tokens; see the module's doc."""
    bare = count_tokens(render(question, [], instruction))
    if bare > budget:
        raise LlmlabError(f"the question and instruction alone take {bare} tokens, more than the {budget} the "
                          "context window leaves", "ask a shorter question or reserve fewer new tokens")  # fmt: skip
    kept = len(passages)
    while kept > 0 and count_tokens(render(question, passages[:kept], instruction)) > budget:
        kept -= 1
    used, notes = list(passages[:kept]), []
    if kept == 0 and passages:  # the best passage, cut at its end to the most characters that fit
        best, low, high = passages[0], 0, len(passages[0].text)
        while low < high:
            middle = (low + high + 1) // 2
            cut = Passage(best.text[:middle] + MARKER, best.source)
            fits = count_tokens(render(question, [cut], instruction)) <= budget
            low, high = (middle, high) if fits else (low, middle - 1)
        if low > 0:
            used = [Passage(best.text[:low] + MARKER, best.source)]
            kept = 1
            notes.append(f"passage 1 was cut from {len(best.text)} to {low} characters to fit")
    dropped = list(passages[kept:])
    if dropped:
        notes.append(f"{len(dropped)} of {len(passages)} passages did not fit in the {budget}-token budget")
    text = render(question, used, instruction)
    return RagPrompt(text, count_tokens(text), used, dropped, notes)
