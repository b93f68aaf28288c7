"""Evaluation: rank classification by hand, ROUGE against rouge-score, perplexity windows, reproducibility."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from llmlab.errors import LlmlabError
from llmlab.evaluation.evaluate import (
    Scorer,
    bootstrap_interval,
    distinct_n,
    evaluate_task,
    normalize_answer,
    perplexity,
    repetition_rate,
    rouge,
)
from llmlab.evaluation.prompts import PromptTemplate
from llmlab.evaluation.tasks import Task, icl_task
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

ALPHABET = SAMPLE_TEXT + "PositiveNegative:\n"


@pytest.fixture(scope="module")
def decoder():
    tokenizer = train_tokenizer([ALPHABET], kind="char")
    return tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=128), tokenizer


def tiny_task(n: int = 6) -> Task:
    template = PromptTemplate("In: {text}\nOut: {label}", "label", "text")
    rows = [{"text": f"def add{i}(self)", "label": "Positive" if i % 2 else "Negative"} for i in range(2 * n)]
    return Task("tiny", template, rows[:n], rows[n:], labels=["Positive", "Negative"])


def test_rank_classification_picks_the_label_with_the_highest_total_log_probability(decoder):
    model, tokenizer = decoder
    context, labels = "In: def add(self)\nOut:", [" Positive", " Negative", " P"]
    by_hand = []
    with torch.no_grad():
        for label in labels:  # multi-token labels: the sum of each token's log-probability
            ids = tokenizer.encode(context) + tokenizer.encode(label)
            logp = F.log_softmax(model(torch.tensor([ids[:-1]])), dim=-1)[0]
            n = len(tokenizer.encode(label))
            by_hand.append(sum(logp[len(ids) - 1 - n + j, ids[len(ids) - n + j]].item() for j in range(n)))
    scored = Scorer(model, tokenizer).logprobs([context] * 3, labels)
    assert [score.tokens for score in scored] == [9, 9, 2]
    assert [score.logprob for score in scored] == pytest.approx(by_hand, abs=1e-4)

    task = tiny_task()
    (result,) = evaluate_task(model, tokenizer, task, [1], seed=0)
    for example, row in zip(task.examples, result.predictions):
        from llmlab.evaluation.evaluate import prompts_for

        (prompt,) = prompts_for(task, Scorer(model, tokenizer), [example], 1, "random", 0, reserve=11)
        totals = [s.logprob for s in Scorer(model, tokenizer).logprobs([prompt.text] * 2, [" Positive", " Negative"])]
        assert row["ranked"] == ["Positive", "Negative"][totals.index(max(totals))]


def test_encoder_decoder_scores_the_continuation_as_decoder_targets(char_tokenizer):
    tokenizer = train_tokenizer([ALPHABET], kind="char", family="encoder-decoder")
    model = tiny_model("t5", vocab_size=tokenizer.vocab_size)
    model.config.decoder_start_token_id = tokenizer.pad_id
    ((total, n, _),) = Scorer(model, tokenizer).logprobs(["In: def add"], [" Positive"])
    src = torch.tensor([tokenizer.encode("In: def add") + [tokenizer.eos_id]])
    target = tokenizer.encode(" Positive")
    with torch.no_grad():
        logp = F.log_softmax(model(src, torch.tensor([[tokenizer.pad_id, *target[:-1]]])), dim=-1)[0]
    assert n == len(target) and total == pytest.approx(sum(logp[j, t].item() for j, t in enumerate(target)), abs=1e-4)


def test_rouge_equals_rouge_score_and_takes_the_best_reference():
    from rouge_score import rouge_scorer

    reference = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    pairs = [
        ("the cat sat on the mat", ["the cat was sitting on the mat"]),
        (
            "#Person1# asks for a dictation",
            ["#Person1# dictates a memo.", "Ms. Dawson takes a dictation for #Person1#."],
        ),
        ("nothing in common", ["completely different words"]),
    ]
    for prediction, references in pairs:
        ours = rouge(prediction, references)
        for name in ("rouge1", "rouge2", "rougeL"):
            best = max(reference.score(r, prediction)[name].fmeasure for r in references)
            assert ours[name] == pytest.approx(best)
    assert rouge("the cat sat", ["the cat sat on the mat"])["rouge1"] == pytest.approx(2 * 1 * 0.5 / 1.5)


def test_helpers_for_answers_intervals_and_diversity():
    assert normalize_answer("  Positive.\nMore text") == "positive"
    low, high = bootstrap_interval([0, 1] * 50, seed=1)
    assert low < 0.5 < high and (low, high) == bootstrap_interval([0, 1] * 50, seed=1)
    assert distinct_n(["a b a b"], 1) == 0.5 and distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert repetition_rate(["x y z x y z"], n=3) == pytest.approx(1 - 3 / 4)
    from llmlab.evaluation.evaluate import bootstrap_statistic

    texts = [f"w{i} shared" for i in range(20)]  # resamples repeat some words: distinct-1 varies
    low, high = bootstrap_statistic(texts, lambda ts: distinct_n(ts, 1), seed=0)
    assert low <= distinct_n(texts, 1) <= high and low < high


def test_perplexity_scores_every_token_once_and_matches_one_window(decoder):
    model, tokenizer = decoder
    text = SAMPLE_TEXT[:100]
    ids = tokenizer.encode(text)
    with torch.no_grad():
        logp = F.log_softmax(model(torch.tensor([ids[:-1]])), dim=-1)[0]
    expected = math.exp(-logp.gather(1, torch.tensor(ids[1:])[:, None]).mean().item())
    ppl, scored = perplexity(model, tokenizer, text)
    assert scored == len(ids) - 1 and ppl == pytest.approx(expected, rel=1e-4)
    long_text = SAMPLE_TEXT * 3  # longer than the window: stride 32 and stride 128 both score every token
    a, n_a = perplexity(model, tokenizer, long_text, stride=32)
    b, n_b = perplexity(model, tokenizer, long_text, stride=128)
    assert n_a == n_b == len(tokenizer.encode(long_text)) - 1 and a != b  # more context changes the figure


def test_the_same_seed_gives_identical_results(decoder):
    model, tokenizer = decoder
    task = icl_task(episodes=12)
    task.template = PromptTemplate("In: {input}\nOut: {label}", "label", "input", separator="\n")
    task.labels = ["Positive", "Negative"]
    for example in task.examples:  # map the synthetic labels onto this alphabet
        for row in [example, *example["_demos"]]:
            row["label"] = "Positive" if row["label"] == "left" else "Negative"
    first = evaluate_task(model, tokenizer, task, [0, 3], limit=8, seed=5)
    second = evaluate_task(model, tokenizer, task, [0, 3], limit=8, seed=5)
    assert [r.predictions for r in first] == [r.predictions for r in second]
    assert [r.metrics for r in first] == [r.metrics for r in second]
    assert first[1].mean_shots_used == 3.0 and first[0].mean_shots_used == 0.0


def test_evaluate_and_prompt_commands(decoder, tmp_path, capsys):
    from llmlab.checkpoint.folder import save_checkpoint

    model, tokenizer = decoder
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    data = tmp_path / "reviews.jsonl"
    data.write_text(
        "".join(
            json.dumps({"review": f"def add{i}", "label": ["Positive", "Negative"][i % 2]}) + "\n" for i in range(20)
        )
    )
    task = ["--task", str(data), "--input-field", "review", "--template", "Review: {review}\\nSentiment: {label}"]
    code, out, _ = run_cli(capsys, "prompt", tmp_path / "ckpt", *task, "--shots", "2", "--select", "balanced")
    assert code == 0 and out.startswith("Review: def add") and out.count("Sentiment:") == 3
    assert "tokens with this model's tokenizer" in out and "2 of 2 examples" in out
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "ckpt", *task, "--shots", "0,2", "--out", tmp_path / "ev")
    assert code == 0 and "accuracy (rank)" in out
    results = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert [r["shots"] for r in results["results"]] == [0, 2] and results["results"][0]["examples"] == 10
    assert (tmp_path / "ev" / "shots.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "ckpt", *task, "--shots", "1,x")
    assert_one_line_error(code, err, "--shots '1,x'")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "ckpt", "--task", "nonsense")
    assert_one_line_error(code, err, "unknown task 'nonsense'")
    (tmp_path / "text.txt").write_text(SAMPLE_TEXT)
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "ckpt", "--perplexity", tmp_path / "text.txt", "--json")
    assert code == 0 and json.loads(out)["tokens"] == len(tokenizer.encode(SAMPLE_TEXT)) - 1


def test_sweep_measures_each_setting_once_reproducibly(decoder, tmp_path, capsys):
    from llmlab.checkpoint.folder import save_checkpoint
    from llmlab.evaluation.evaluate import sweep

    model, tokenizer = decoder
    task = tiny_task()
    task.labels = None  # a generation task: ROUGE against the answer field
    rows = sweep(model, tokenizer, task, [0, 1.0], [0, 5], [1.0], limit=4, seed=3, max_new_tokens=8)
    assert [(r.temperature, r.top_k) for r in rows] == [(0, 0), (1.0, 0), (1.0, 5)]  # greedy once
    again = sweep(model, tokenizer, task, [0, 1.0], [0, 5], [1.0], limit=4, seed=3, max_new_tokens=8)
    assert [r.metrics for r in rows] == [r.metrics for r in again]
    assert {"rougeL", "distinct-1", "distinct-2", "repetition"} <= set(rows[0].metrics)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"text": f"add{i}", "label": f"summary {i}"}) + "\n" for i in range(40)))
    code, out, _ = run_cli(
        capsys, "sweep", tmp_path / "ckpt", "--task", data, "--temperature", "0,0.8", "--top-k", "0", "--top-p", "1",
        "--limit", "3", "--max-new-tokens", "6", "--out", tmp_path / "sw",
    )  # fmt: skip
    assert code == 0 and "best rougeL" in out and len(json.loads((tmp_path / "sw" / "sweep.json").read_text())) == 2
    code, _, err = run_cli(capsys, "sweep", tmp_path / "ckpt", "--task", data, "--temperature", "hot")
    assert_one_line_error(code, err, "--temperature 'hot'")


def test_bad_evaluation_options_are_one_line_errors(decoder, tmp_path, capsys):
    from llmlab.checkpoint.folder import save_checkpoint

    model, tokenizer = decoder
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"add{i}", "label": "Positive"}) + "\n" for i in range(6)))
    for args, fragment in (
        (["evaluate", "--limit", "-1"], "--limit must be >= 1"),
        (["evaluate", "--max-new-tokens", "-3"], "max-new-tokens must be >= 0"),
        (["sweep", "--top-k", "0.5"], "--top-k '0.5' is not a list of whole numbers"),
        (["evaluate", "--perplexity", tmp_path / "missing.txt"], "cannot read"),
    ):
        code, _, err = run_cli(capsys, args[0], tmp_path / "ckpt", "--task", data, *args[1:])
        assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "ckpt" / "eval-rows").exists()  # nothing written for a refused run


def test_rouge_stems_words_as_rouge_score_does():
    """'cats running' and 'cat runs' share both words only once stemmed (Porter: cat, run)."""
    scores = rouge("cats running", ["cat runs"])
    assert scores["rouge1"] == pytest.approx(1.0) and scores["rouge2"] == pytest.approx(1.0)


def test_the_plot_takes_bounds_a_rounding_past_the_value(tmp_path):
    """Equal scores give bootstrap bounds like 0.20000000000000004 around 0.2; a statistic's interval need
    not contain the whole sample's value. Neither may stop the plot (matplotlib refuses negative bars)."""
    from llmlab.evaluation.evaluate import ShotResult, plot_shots

    result = ShotResult(0, {"distinct-1": 0.2, "rougeL": 0.5}, {"distinct-1": (0.2 + 4e-17, 0.2 + 4e-17),
                        "rougeL": (0.1, 0.45)}, examples=5, mean_shots_used=0.0, queries_shortened=0)  # fmt: skip
    assert plot_shots([result], tmp_path / "shots.png", "t").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("stride", [1, 37, 64])
def test_sliding_perplexity_equals_a_per_token_reference(stride):
    """Strided sliding windows (as in Hugging Face's perplexity guide): with window W and stride s, the tokens
    [1 + k*s, 1 + (k+1)*s) are scored by one window ending at its last one and reaching back W tokens before
    it. The reference scores each token alone, with one forward over exactly that context."""
    from llmlab.evaluation.perplexity import text_nll

    tokenizer = train_tokenizer([ALPHABET], kind="char")
    model = tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=64).eval()
    text = (ALPHABET * 4)[:150]
    ids = tokenizer.encode(text)
    total = 0.0
    with torch.no_grad():
        for t in range(1, len(ids)):
            window_end = min(1 + ((t - 1) // stride + 1) * stride, len(ids))  # one past the window's last target
            context = ids[max(0, window_end - 64 - 1) : t]
            logp = F.log_softmax(model(torch.tensor([context]))[0, -1].float(), dim=-1)
            total -= float(logp[ids[t]])
    nll = text_nll(model, tokenizer, text, stride=stride)
    assert nll.tokens == len(ids) - 1
    assert nll.total == pytest.approx(total, rel=1e-4)
    with pytest.raises(LlmlabError, match="^--stride must be in 1..64, got 65 — use e.g. half the context$"):
        text_nll(model, tokenizer, text, stride=65)
