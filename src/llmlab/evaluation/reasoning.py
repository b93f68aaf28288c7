"""Reasoning prompts, measured: the same problems answered directly, by chain of thought (a worked
solution, then "The answer is N"), or by a program the model writes and llmlab runs in a sandbox
(program-aided: the arithmetic is the interpreter's, not the model's).

`MODES` maps each to the field its demonstrations show; the answer is read from the text (the number
after "The answer is", else the last number) or from the program's last printed line."""

from __future__ import annotations

import re

from llmlab.evaluation.prompts import PromptTemplate
from llmlab.tools.sandbox import run_python

MODES = {
    "direct": PromptTemplate("Question: {question}\nAnswer: {answer}", "answer", "question"),
    "cot": PromptTemplate("Question: {question}\nAnswer: {reasoning}", "reasoning", "question",
                          instruction="Solve each problem step by step, then write: The answer is N."),
    "program": PromptTemplate("Question: {question}\nProgram:\n{program}", "program", "question",
                              instruction="Write a Python program that prints the answer to each problem."),
}  # fmt: skip
NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
STATED = re.compile(r"answer is\s*(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def read_answer(text: str, mode: str, timeout: float = 5.0) -> tuple[str | None, str]:
    """(the answer read from a completion, what went wrong or ""). A program is run in the sandbox."""
    if mode == "program":
        result = run_python(text, timeout=timeout)
        if not result.ok:
            return None, result.error()
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        numbers = NUMBER.findall(lines[-1]) if lines else []
        return (numbers[-1], "") if numbers else (None, "the program printed no number")
    stated = STATED.findall(text) if mode == "cot" else []
    numbers = stated or NUMBER.findall(text)
    if not numbers:
        return None, "no number in the answer"
    return (numbers[-1] if mode == "cot" else numbers[0]), ""


def same_number(answer: str | None, gold: str) -> bool:
    try:
        return answer is not None and abs(float(answer) - float(gold)) < 1e-9
    except ValueError:
        return False
