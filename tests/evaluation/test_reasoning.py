"""Reasoning prompts: the generated word problems' own solutions and programs give their answers (read the
way a model's are read), the three modes' prompts show their demonstrations, and `llmlab evaluate --task
arithmetic --reasoning program` runs what the model writes in the sandbox and scores it."""

from __future__ import annotations

import json

import pytest

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.evaluation.arithmetic import arithmetic_problems
from llmlab.evaluation.evaluate import evaluate_task
from llmlab.evaluation.reasoning import read_answer, same_number
from llmlab.evaluation.tasks import load_task
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model


def test_problems_are_seeded_distinct_and_their_solutions_and_programs_agree():
    problems = arithmetic_problems(60, seed=5)
    assert problems == arithmetic_problems(60, seed=5) != arithmetic_problems(60, seed=6)
    assert len({p["question"] for p in problems}) == 60
    for problem in problems[:12]:  # a dozen programs: one sandboxed interpreter each
        answer, problem_text = read_answer(problem["program"], "program")
        assert same_number(answer, problem["answer"]) and not problem_text
    for problem in problems:
        assert same_number(read_answer(problem["reasoning"], "cot")[0], problem["answer"])
        assert int(problem["answer"]) >= 0


def test_answers_are_read_per_mode():
    assert read_answer("3 + 4 = 7, so 7 - 2 = 5. The answer is 5.", "cot") == ("5", "")
    assert read_answer("12 apples", "direct") == ("12", "")
    assert read_answer("no idea", "direct") == (None, "no number in the answer")
    assert read_answer("print('total:', 2 ** 5)", "program") == ("32", "")
    assert read_answer("while True: pass", "program", timeout=0.5) == (None, "the program ran out of time")
    assert read_answer("print(", "program")[1].startswith("SyntaxError")
    assert not same_number("4.0001", "4") and same_number("4.0", "4")


@pytest.fixture(scope="module")
def decoder():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    return tiny_model("llama", vocab_size=tok.vocab_size, block_size=512), tok


@pytest.mark.parametrize("mode", ["direct", "cot", "program"])
def test_each_mode_prompts_with_its_demonstrations_and_scores(decoder, mode):
    model, tok = decoder
    task = load_task("arithmetic", reasoning=mode)
    (result,) = evaluate_task(model, tok, task, [1], limit=3, seed=0)
    assert result.examples == 3 and 0.0 <= result.metrics["accuracy"] <= 1.0
    second = "programs that ran" if mode == "program" else "answered"
    assert set(result.metrics) == {"accuracy", second}
    assert all(row["gold"].isdigit() for row in result.predictions)


def test_evaluate_command_with_reasoning(decoder, tmp_path, capsys):
    model, tok = decoder
    save_checkpoint(tmp_path / "ckpt", model, tok)
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "ckpt", "--task", "arithmetic", "--reasoning", "program",
                             "--shots", "0,1", "--limit", "2", "--max-new-tokens", "24", "--json",
                             "--out", tmp_path / "ev")  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert [r["shots"] for r in rows] == [0, 1] and "programs that ran" in rows[0]["metrics"]
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "ckpt", "--task", "sentiment", "--reasoning", "cot")
    assert_one_line_error(code, err, "--reasoning applies to the arithmetic task")
