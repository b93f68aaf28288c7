"""The lm-evaluation-harness adapter answers with llmlab's own scoring, on a task over a local JSONL file."""

import json

import pytest

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.evaluation.evaluate import Scorer
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model

lm_eval = pytest.importorskip("lm_eval", reason="pip install lm-eval (a dev dependency)")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm-eval")
    tokenizer = train_tokenizer([SAMPLE_TEXT + "PositiveNegative:R"], kind="char")
    save_checkpoint(root / "ckpt", tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=128), tokenizer)
    return root


def test_loglikelihoods_equal_llmlabs_own_scoring(checkpoint):
    from lm_eval.api.instance import Instance

    from llmlab.evaluation.lm_eval_adapter import LlmlabLM

    lm = LlmlabLM(str(checkpoint / "ckpt"))
    pairs = [("Review: def add(self)\nSentiment:", " Positive"), ("Review: class Stack:", " Negative")]
    requests = [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]
    theirs = lm.loglikelihood(requests)
    ours = Scorer(lm.checkpoint.model, lm.checkpoint.tokenizer).logprobs([c for c, _ in pairs], [t for _, t in pairs])
    assert theirs == [(s.logprob, s.greedy) for s in ours]
    (rolling,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (SAMPLE_TEXT[:80],), 0)])
    assert rolling < 0
    (text,) = lm.generate_until([Instance("generate_until", {}, ("def ", {"until": ["\n"], "max_gen_toks": 5}), 0)])
    assert isinstance(text, str) and "\n" not in text


def test_a_local_jsonl_task_runs_through_lm_eval(checkpoint, tmp_path, monkeypatch, capsys):
    from llmlab.evaluation.lm_eval_adapter import main

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    rows = [{"text": f"def add{i}(self)", "label": i % 2} for i in range(12)]
    data = tmp_path / "reviews.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local_reviews.yaml").write_text(
        "task: local_reviews\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "Review: {{text}}\\nSentiment:"\n'
        'doc_to_choice: ["Positive", "Negative"]\n'
        "doc_to_target: label\n"
        "metric_list:\n  - metric: acc\n"
    )
    assert main([str(checkpoint / "ckpt"), "--tasks", "local_reviews", "--include-path", str(tmp_path / "tasks")]) == 0
    accuracy = json.loads(capsys.readouterr().out)["local_reviews"]["acc,none"]
    ckpt_scorer = Scorer(*_model_and_tokenizer(checkpoint / "ckpt"))
    correct = 0
    for row in rows:  # the same ranking, done by llmlab alone
        context = f"Review: {row['text']}\nSentiment:"
        scores = ckpt_scorer.logprobs([context] * 2, [" Positive", " Negative"])
        correct += int(max(range(2), key=lambda i: scores[i].logprob) == row["label"])
    assert accuracy == pytest.approx(correct / len(rows))


def _model_and_tokenizer(path):
    from llmlab.load import load_checkpoint

    ckpt = load_checkpoint(path)
    return ckpt.model, ckpt.tokenizer
