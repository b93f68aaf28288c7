"""The evaluation metrics on inputs small enough to score by hand (each expected figure worked out in the
comments), the bootstrap intervals against their definition written out, classifier and tagger scores
against scikit-learn and seqeval, perplexity's bookkeeping and refusals. Fast: mutation testing runs it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llmlab.data.objectives import IGNORE
from llmlab.errors import LlmlabError
from llmlab.evaluation import head_metrics as H
from llmlab.evaluation.metrics import (
    bootstrap_interval,
    bootstrap_statistic,
    distinct_n,
    normalize_answer,
    repetition_rate,
    rouge,
)
from llmlab.evaluation.perplexity import Nll, text_loglikelihood, text_nll, text_perplexity
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model


def test_answers_are_compared_by_their_first_line_without_case_punctuation_or_extra_spaces():
    assert normalize_answer("  The  Cat,\tsat!\nsecond line") == "the cat sat"
    assert normalize_answer("\n\n Yes. \n no") == "yes"
    assert normalize_answer("(a) -- b ") == "a b"
    assert normalize_answer("") == ""


def test_rouge_stems_and_keeps_the_best_reference():
    # stemmed: "the cat ran" against "the cat run": unigrams 2 of 3 each way; bigram "the cat" 1 of 2
    scores = rouge("the cats ran", ["dogs bark loudly", "the cat runs"])
    assert scores["rouge1"] == pytest.approx(2 / 3) and scores["rouge2"] == pytest.approx(1 / 2)
    assert scores["rougeL"] == pytest.approx(2 / 3) and set(scores) == {"rouge1", "rouge2", "rougeL"}


def percentile_bootstrap(values, seed, resamples):
    """The definition: resample the examples with replacement, take the mean, the 2.5th and 97.5th
    percentiles of those means."""
    rng = np.random.default_rng(seed)
    data = np.asarray(values, dtype=np.float64)
    means = [data[rng.integers(0, len(data), size=len(data))].mean() for _ in range(resamples)]
    return np.percentile(means, 2.5), np.percentile(means, 97.5)


def test_bootstrap_interval_of_the_mean():
    values = [0.1, 0.9, 0.4, 0.4, 1.0, 0.0, 0.7]
    got = bootstrap_interval(values, seed=5, resamples=200)
    assert got == pytest.approx(percentile_bootstrap(values, 5, 200), rel=1e-12)
    low, high = bootstrap_interval(values)  # seed 0, 1000 resamples by default
    assert (low, high) == pytest.approx(percentile_bootstrap(values, 0, 1000), rel=1e-12)
    assert low < np.mean(values) < high and bootstrap_interval(values, seed=1) != (low, high)
    assert bootstrap_interval([1, 0, 1], seed=2) == pytest.approx(percentile_bootstrap([1.0, 0.0, 1.0], 2, 1000))


def test_the_default_bootstrap_draws_a_thousand_resamples_and_two_examples_are_resampled():
    values = list(np.random.default_rng(9).normal(size=40))  # continuous: every percentile moves with the draws
    assert bootstrap_interval(values) == pytest.approx(percentile_bootstrap(values, 0, 1000), rel=1e-12)
    assert bootstrap_interval(values) != pytest.approx(percentile_bootstrap(values, 0, 1001), rel=1e-12)
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)  # resampled means 0, 0.5 or 1
    low, high = bootstrap_statistic(["a", "a b"], lambda ts: distinct_n(ts, 1))  # resampled, not one point
    assert low < high


def test_a_bootstrap_of_one_or_no_example_is_that_example():
    assert bootstrap_interval([0.25]) == (0.25, 0.25)
    low, high = bootstrap_interval([])
    assert math.isnan(low) and math.isnan(high)


def test_bootstrap_statistic_shifts_the_percentiles_by_the_resampling_bias():
    texts = ["a b c", "a a", "b c d e", "e e e", "f g"]
    statistic = lambda ts: distinct_n(ts, 1)  # noqa: E731
    rng = np.random.default_rng(3)
    values = [statistic([texts[i] for i in rng.integers(0, 5, 5)]) for _ in range(50)]
    shift = statistic(texts) - np.mean(values)
    expected = np.percentile(values, 2.5) + shift, np.percentile(values, 97.5) + shift
    assert bootstrap_statistic(texts, statistic, seed=3, resamples=50) == pytest.approx(expected)
    rng = np.random.default_rng(0)
    values = [statistic([texts[i] for i in rng.integers(0, 5, 5)]) for _ in range(300)]
    shift = statistic(texts) - np.mean(values)
    default = np.percentile(values, 2.5) + shift, np.percentile(values, 97.5) + shift
    assert bootstrap_statistic(texts, statistic) == pytest.approx(default)
    assert bootstrap_statistic(["a b"], statistic) == (1.0, 1.0)
    assert bootstrap_statistic([], lambda ts: 0.5) == (0.5, 0.5)


def test_distinct_n_counts_n_grams_over_all_outputs():
    # bigrams: ab ba ab | ab bc = 5, distinct {ab, ba, bc} = 3; unigrams: 7, distinct 3
    assert distinct_n(["a b a b", "a b c"], 2) == 3 / 5
    assert distinct_n(["a b a b", "a b c"], 1) == 3 / 7
    assert distinct_n(["a b a b", "a b c"], 3) == 3 / 3  # aba bab abc
    assert distinct_n(["a"], 2) == 0.0 and distinct_n([], 1) == 0.0


def test_repetition_rate_averages_over_outputs_long_enough_to_have_n_grams():
    # "a b c a b c", n=2: ab bc ca ab bc, 3 distinct of 5 -> 0.4; "x y": one bigram, none repeated -> 0
    assert repetition_rate(["a b c a b c", "x y"], n=2) == pytest.approx(0.2)
    assert repetition_rate(["a", "a b c a b c"], n=2) == pytest.approx(0.4)  # "a" has no bigram: not averaged
    assert repetition_rate(["a b c d a b c d"]) == pytest.approx(1 - 4 / 5)  # n = 4 by default
    assert repetition_rate(["a b"]) == 0.0 and repetition_rate([]) == 0.0


# -- classifiers and taggers -------------------------------------------------------------------------


def test_precision_recall_and_f1_are_zero_where_undefined():
    assert H.prf(3, 4, 6) == H.PRF(0.75, 0.5, 0.6, 6)  # 2 * 0.75 * 0.5 / 1.25
    assert H.prf(0, 0, 5) == H.PRF(0.0, 0.0, 0.0, 5)
    assert H.prf(0, 3, 0) == H.PRF(0.0, 0.0, 0.0, 0)
    assert H.prf(0, 2, 2) == H.PRF(0.0, 0.0, 0.0, 2)


def test_confusion_matrix_and_per_label_scores_equal_scikit_learns():
    metrics = pytest.importorskip("sklearn.metrics")
    true, predicted = [0, 0, 1, 2, 2, 2, 1, 0], [0, 1, 1, 2, 0, 2, 2, 0]
    matrix = H.confusion_matrix(true, predicted, 4)
    assert matrix.tolist() == metrics.confusion_matrix(true, predicted, labels=range(4)).tolist()
    assert matrix.dtype == np.int64
    scores = H.per_label(matrix)
    p, r, f, s = metrics.precision_recall_fscore_support(true, predicted, labels=range(4), zero_division=0)
    assert [x.precision for x in scores] == pytest.approx(list(p)) and [x.recall for x in scores] == pytest.approx(
        list(r)
    )
    assert [x.f1 for x in scores] == pytest.approx(list(f)) and [x.support for x in scores] == list(s)
    assert H.macro_f1(true, predicted, 4) == pytest.approx(
        metrics.f1_score(true, predicted, average="macro", labels=range(4), zero_division=0)
    )


def test_entity_scores_equal_seqeval():
    seqeval = pytest.importorskip("seqeval.metrics")
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-PER", "O"], ["O", "B-LOC", "I-LOC", "O"]]
    guess = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O", "B-PER", "I-PER"], ["O", "B-LOC", "I-LOC", "B-MISC"]]
    ours = H.entity_scores(gold, guess)
    theirs = seqeval.classification_report(gold, guess, output_dict=True, zero_division=0)
    assert set(ours) == {"PER", "LOC", "ORG", "MISC", "micro avg"}
    for kind, score in ours.items():
        want = theirs[kind]
        assert (score.precision, score.recall, score.f1) == pytest.approx(
            (want["precision"], want["recall"], want["f1-score"])
        ), kind
        assert score.support == want["support"], kind
    assert H.entity_counts(gold, guess)["PER"] == (1, 2, 2)  # the second PER's end differs: not correct


# -- perplexity -------------------------------------------------------------------------------------


def test_nll_sums_the_scored_tokens_and_skips_ignored_ones():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]], dtype=torch.bfloat16)
    targets = torch.tensor([[0, IGNORE, 1]])
    nll = Nll()
    nll.add(logits, targets)
    nll.add(logits[:, :1], torch.tensor([[2]]))
    log_p = torch.log_softmax(logits.float(), -1)[0]
    expected = -(log_p[0, 0] + log_p[2, 1] + log_p[0, 2]).item()
    assert nll.tokens == 3 and nll.total == pytest.approx(expected, rel=1e-6)
    assert nll.mean == pytest.approx(expected / 3) and nll.perplexity == pytest.approx(math.exp(expected / 3))


@pytest.fixture(scope="module")
def char_model():
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    return tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=16), tokenizer


def test_perplexity_and_log_likelihood_are_the_nll_seen_two_ways(char_model):
    model, tokenizer = char_model
    text = SAMPLE_TEXT[:50]
    nll = text_nll(model, tokenizer, text)
    assert nll.tokens == len(tokenizer.encode(text)) - 1  # every token but the first, once
    assert text_perplexity(model, tokenizer, text) == (pytest.approx(math.exp(nll.total / nll.tokens)), nll.tokens)
    assert text_loglikelihood(model, tokenizer, text) == pytest.approx(-nll.total)
    assert text_loglikelihood(model, tokenizer, "a") == 0.0  # one token: nothing to predict
    assert text_loglikelihood(model, tokenizer, "ab") < 0.0  # two: the second is predicted
    assert text_nll(model, tokenizer, text, stride=0).total == pytest.approx(nll.total)  # 0: half the window
    assert text_nll(model, tokenizer, text, stride=16).tokens == nll.tokens


def test_bad_perplexity_requests_are_refused_with_what_to_do(char_model):
    model, tokenizer = char_model

    def message(call) -> str:
        with pytest.raises(LlmlabError) as caught:
            call()
        return str(caught.value)

    assert message(lambda: text_nll(model, tokenizer, "abcdef", stride=17)) == (
        "--stride must be in 1..16, got 17 — use e.g. half the context"
    )
    assert message(lambda: text_nll(model, tokenizer, "abcdef", stride=-1)) == (
        "--stride must be in 1..16, got -1 — use e.g. half the context"
    )
    assert message(lambda: text_nll(model, tokenizer, "a")) == "the text has fewer than two tokens — pass more text"
    encoder = tiny_model("bert", vocab_size=tokenizer.vocab_size)
    assert message(lambda: text_nll(encoder, tokenizer, "abcdef")) == (
        "perplexity is defined here for decoder-only models — evaluate a decoder checkpoint"
    )
