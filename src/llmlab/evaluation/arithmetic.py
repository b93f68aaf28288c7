"""`arithmetic`: word problems generated from a seed, each with its answer, a worked solution (for
chain-of-thought demonstrations) and a program that computes it (for program-aided demonstrations).

Two or three steps of +, -, x or an exact division over small numbers, in a handful of everyday stories,
so that a model's score says whether it reasons, not whether it read the problem before."""

from __future__ import annotations

import random
from collections.abc import Callable

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Ema", "Finn", "Gia", "Hugo", "Iris", "Jon", "Kai", "Lena", "Mo", "Nia"]
ITEMS = ["apples", "marbles", "stickers", "books", "coins", "pencils", "cookies", "stamps", "shells", "cards"]


def _gain_loss(rng: random.Random, name: str, item: str) -> dict[str, str]:
    a, b, c = rng.randint(3, 40), rng.randint(2, 30), rng.randint(1, 20)
    c = min(c, a + b)
    answer = a + b - c
    return {"question": f"{name} has {a} {item}. {name} gets {b} more and then gives away {c}. "
                        f"How many {item} does {name} have now?",
            "reasoning": f"{name} starts with {a}. After getting {b} more: {a} + {b} = {a + b}. After giving away {c}: "
                         f"{a + b} - {c} = {answer}. The answer is {answer}.",
            "program": f"{item} = {a}\n{item} = {item} + {b}\n{item} = {item} - {c}\nprint({item})",
            "answer": str(answer)}  # fmt: skip


def _boxes(rng: random.Random, name: str, item: str) -> dict[str, str]:
    a, b, c = rng.randint(2, 12), rng.randint(2, 9), rng.randint(1, 10)
    c = min(c, a * b)
    answer = a * b - c
    return {"question": f"A box holds {a} {item}. {name} fills {b} boxes and then loses {c} {item}. "
                        f"How many {item} are left?",
            "reasoning": f"{b} boxes of {a}: {b} * {a} = {a * b}. After losing {c}: {a * b} - {c} = {answer}. "
                         f"The answer is {answer}.",
            "program": f"total = {b} * {a}\ntotal = total - {c}\nprint(total)",
            "answer": str(answer)}  # fmt: skip


def _share(rng: random.Random, name: str, item: str) -> dict[str, str]:
    friends, each, extra = rng.randint(2, 8), rng.randint(2, 12), rng.randint(1, 15)
    total = friends * each
    answer = each + extra
    return {"question": f"{name} shares {total} {item} equally among {friends} friends. One friend then finds "
                        f"{extra} more. How many {item} does that friend have?",
            "reasoning": f"Each friend gets {total} / {friends} = {each}. With {extra} more: {each} + {extra} = "
                         f"{answer}. The answer is {answer}.",
            "program": f"each = {total} // {friends}\neach = each + {extra}\nprint(each)",
            "answer": str(answer)}  # fmt: skip


STORIES: list[Callable[[random.Random, str, str], dict[str, str]]] = [_gain_loss, _boxes, _share]


def arithmetic_problems(n: int, seed: int) -> list[dict[str, str]]:
    """n distinct problems (question, reasoning, program, answer), the same for the same seed."""
    rng, problems, seen = random.Random(seed), [], set()
    while len(problems) < n:
        problem = rng.choice(STORIES)(rng, rng.choice(NAMES), rng.choice(ITEMS))
        if problem["question"] not in seen:
            seen.add(problem["question"])
            problems.append(problem)
    return problems
