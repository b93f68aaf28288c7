"""Verifiable rewards from a shared-data task: `--prompts task:sentiment --reward task:sentiment`.

The prompts are the task's training records rendered exactly as `llmlab finetune --data task:NAME` renders
them, and the reward checks a completion against that record's own answer: 1 for the right label, else 0
(classification: the completion's first word), or ROUGE-L F1 against the reference (generation). Reinforcement
learning on answers that can be checked (as GRPO on maths problems) needs no learned reward model, so there is
no reward model for the policy to exploit; the KL penalty still keeps it near the fine-tuned model.
"""

from __future__ import annotations

from llmlab.errors import LlmlabError
from llmlab.evaluation.metrics import normalize_answer, rouge
from llmlab.finetune.examples import TASK_TEMPLATES, ResponseTemplate
from llmlab.finetune.rows import TASKS

PREFIX = "task:"


def is_task_source(spec: str | None) -> bool:
    return bool(spec) and spec.startswith(PREFIX)


def task_answers(spec: str) -> tuple[dict[str, str], bool]:
    """Each training record's prompt (as fine-tuning renders it) -> its answer; and whether answers are labels.
    A prompt that occurs twice keeps its first answer (rt-polarity repeats a few sentences)."""
    name = spec[len(PREFIX) :]
    if name not in TASKS:
        raise LlmlabError(f"unknown task {name!r} in {spec}", f"use task:{' or task:'.join(TASKS)}")
    task = TASKS[name]()
    template = ResponseTemplate(TASK_TEMPLATES[name])
    answers: dict[str, str] = {}
    for record in task.demonstrations:
        (prompt, _), (answer, _) = template.pieces(record)
        answers.setdefault(prompt, answer.strip())
    return answers, task.labels is not None


def task_prompts(spec: str) -> list[str]:
    """The task's training prompts, in the task's order."""
    return list(task_answers(spec)[0])


def task_reward(spec: str):
    """The reward of a completion for one of the task's own prompts (any other prompt is an error: its answer
    is unknown)."""
    answers, labelled = task_answers(spec)

    def reward(prompts: list[str], completions: list[str]) -> list[float]:
        unknown = next((p for p in prompts if p not in answers), None)
        if unknown is not None:
            raise LlmlabError(f"--reward {spec} knows the answers of its own prompts only, not {unknown[:50]!r}",
                              f"pass --prompts {spec}")  # fmt: skip
        if labelled:
            return [float(_first_word(c) == normalize_answer(answers[p])) for p, c in zip(prompts, completions)]
        return [rouge(c.strip(), [answers[p]])["rougeL"] for p, c in zip(prompts, completions)]

    return reward


def _first_word(completion: str) -> str:
    words = normalize_answer(completion).split()
    return words[0] if words else ""
