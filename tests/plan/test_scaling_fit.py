"""The scaling-law fit (Chinchilla's approach 3) recovers a known law from noisy runs, its bootstrap
intervals cover the truth, and too few or broken runs are refused in one line."""

import math
import random

import pytest

from llmlab.errors import LlmlabError
from llmlab.plan.compute import ChinchillaFit
from llmlab.plan.scaling_fit import STARTS, bootstrap, fit_scaling_law

TRUTH = ChinchillaFit(E=1.82, A=482.0, B=2085.4, alpha=0.348, beta=0.366)  # Besiroglu et al.'s replication


def isoflop_runs(law: ChinchillaFit, noise: float, seed: int = 0):
    rng = random.Random(seed)
    params, tokens, losses = [], [], []
    for flops in (1e15, 3e15, 1e16, 3e16, 1e17):
        for n in (1e5, 3e5, 1e6, 3e6, 1e7):
            d = flops / (6 * n)
            params.append(n), tokens.append(d), losses.append(law.loss(n, d) * math.exp(rng.gauss(0, noise)))
    return params, tokens, losses


def test_the_fit_recovers_a_known_law_and_its_optimum():
    params, tokens, losses = isoflop_runs(TRUTH, noise=0.003)
    law = fit_scaling_law(params, tokens, losses)  # the whole grid of starting points, as the command fits
    assert law.fit.alpha == pytest.approx(TRUTH.alpha, abs=0.01) and law.fit.beta == pytest.approx(TRUTH.beta, abs=0.01)
    assert law.fit.E == pytest.approx(TRUTH.E, rel=0.02)
    truth_ratio = TRUTH.optimal(1e17)[1] / TRUTH.optimal(1e17)[0]
    assert law.tokens_per_parameter(1e17) == pytest.approx(truth_ratio, rel=0.15)
    exact = fit_scaling_law(*isoflop_runs(TRUTH, noise=0.0), starts=STARTS[::8])
    assert exact.objective < 1e-10 and exact.fit.alpha == pytest.approx(TRUTH.alpha, abs=1e-3)


def test_bootstrap_intervals_cover_the_truth():
    params, tokens, losses = isoflop_runs(TRUTH, noise=0.01, seed=3)
    law = fit_scaling_law(params, tokens, losses, starts=STARTS[::8])
    intervals = bootstrap(params, tokens, losses, law, 1e17, resamples=40, seed=1)
    assert intervals.alpha[0] <= TRUTH.alpha <= intervals.alpha[1]
    assert intervals.beta[0] <= TRUTH.beta <= intervals.beta[1]
    assert intervals.alpha[0] < law.fit.alpha < intervals.alpha[1] and intervals.resamples >= 30


def test_too_few_or_broken_runs_are_refused():
    with pytest.raises(LlmlabError, match="5 parameters: 4 runs cannot fit it"):
        fit_scaling_law([1e5] * 4, [1e6] * 4, [3.0] * 4)
    with pytest.raises(LlmlabError, match="positive finite"):
        fit_scaling_law([1e5] * 5, [1e6] * 5, [3.0, 3.0, float("nan"), 3.0, 3.0])
