"""MinHash against the exact Jaccard similarity it estimates, and LSH against its S-curve."""

from __future__ import annotations

import random

import numpy as np
import pytest

from llmlab.curate.minhash import LshIndex, Permutations, candidate_probability, signature
from llmlab.curate.shingles import ngram_hashes, word_hashes, words

VOCAB = [f"w{i}" for i in range(5000)]


def _pair(rng: random.Random, size: int, shared: int) -> tuple[str, str]:
    """Two texts of `size` distinct words each, `shared` of them in common (1-grams: exact Jaccard known)."""
    pool = rng.sample(VOCAB, 2 * size - shared)
    return " ".join(pool[:size]), " ".join(pool[:shared] + pool[size:])


def _jaccard(a: str, b: str, n: int) -> float:
    sa, sb = set(ngram_hashes(word_hashes(a), n).tolist()), set(ngram_hashes(word_hashes(b), n).tolist())
    return len(sa & sb) / len(sa | sb)


def test_permutations_are_bijections_that_rank_shingles_differently():
    perms = Permutations.make(64, seed=3)
    x = np.arange(10_000, dtype=np.uint64)
    values = perms.apply(x)
    assert all(len(np.unique(values[:, j])) == len(x) for j in range(64))  # no two shingles collide
    # each function puts a different shingle first: the minima are not all the smallest input (the bug a
    # small linear multiplier has)
    assert len(set(values.argmin(axis=0).tolist())) > 50


def test_estimate_is_unbiased_against_exact_jaccard():
    rng, perms = random.Random(0), Permutations.make(256, seed=1)
    errors = []
    for shared in range(0, 201, 10):
        a, b = _pair(rng, 200, shared)
        exact = _jaccard(a, b, 1)
        estimate = float(np.mean(signature(word_hashes(a), 1, perms) == signature(word_hashes(b), 1, perms)))
        errors.append(estimate - exact)
        assert abs(estimate - exact) < 4 * max(np.sqrt(exact * (1 - exact) / 256), 0.01)
    assert abs(np.mean(errors)) < 0.02  # no bias: errors average out


def test_identical_and_disjoint_texts():
    perms = Permutations.make(112, seed=1)
    a = word_hashes("the quick brown fox jumps over the lazy dog again and again")
    assert (signature(a, 5, perms) == signature(a.copy(), 5, perms)).all()
    b = word_hashes("completely different words appear in this other sentence right here now")
    assert np.mean(signature(a, 5, perms) == signature(b, 5, perms)) < 0.05


def test_words_ignore_case_and_punctuation():
    assert words("Hello, WORLD! it's") == ["hello", "world", "it", "s"]
    assert (word_hashes("Hello, world") == word_hashes("hello world")).all()


def test_ngrams_depend_on_order_and_short_texts_get_one():
    h = word_hashes("a b c d")
    assert len(ngram_hashes(h, 2)) == 3
    assert ngram_hashes(h, 2)[0] != ngram_hashes(word_hashes("b a c d"), 2)[0]
    assert len(ngram_hashes(h, 9)) == 1 and len(ngram_hashes(h, 9, short=False)) == 0


@pytest.mark.parametrize("similarity", [0.3, 0.6, 0.8])
def test_lsh_candidates_follow_the_s_curve(similarity):
    """The share of pairs that collide in a band matches 1 - (1 - s^r)^b within sampling error."""
    rng, bands, rows, trials = random.Random(1), 10, 4, 300
    perms, hits = Permutations.make(bands * rows, seed=2), 0
    shared = round(2 * 100 * similarity / (1 + similarity))  # |A & B| for Jaccard s with |A| = |B| = 100
    for _ in range(trials):
        a, b = _pair(rng, 100, shared)
        index = LshIndex(bands, rows, threshold=0.0)
        index.add(0, signature(word_hashes(a), 1, perms))
        hits += index.query(signature(word_hashes(b), 1, perms)) is not None
    expected = candidate_probability(_jaccard(*_pair(random.Random(9), 100, shared), 1), bands, rows)
    assert abs(hits / trials - expected) < 4 * np.sqrt(expected * (1 - expected) / trials) + 0.02


def test_lsh_verifies_and_returns_the_earliest_match():
    perms = Permutations.make(112, seed=1)
    text = " ".join(VOCAB[:300])
    index = LshIndex(14, 8, threshold=0.7)
    index.add(5, signature(word_hashes(text), 5, perms))
    index.add(9, signature(word_hashes(text), 5, perms))
    near = " ".join(VOCAB[:290] + VOCAB[1000:1010])  # ~ 0.9 of 5-grams shared
    found = index.query(signature(word_hashes(near), 5, perms))
    assert found is not None and found[0] == 5 and 0.75 < found[1] <= 1.0
    strict = LshIndex(14, 8, threshold=0.99)
    strict.add(1, signature(word_hashes(text), 5, perms))
    assert strict.query(signature(word_hashes(near), 5, perms)) is None  # a band matches, the estimate does not
