"""Fitting a scaling law to your own runs: L(N, D) = E + A / N^alpha + B / D^beta, by the Chinchilla paper's
approach 3 as its 2024 replication did it (Besiroglu et al.): minimise the Huber loss (delta 1e-3) between
log L and log(e^e + e^(a - alpha log N) + e^(b - beta log D)) with L-BFGS from a grid of starting points,
keep the best; bootstrap the runs for intervals. Written here (not taken from a library) because the fit
is the subject being taught, and it is a few lines of torch.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from llmlab.errors import LlmlabError
from llmlab.plan.compute import ChinchillaFit

HUBER_DELTA = 1e-3
# starting points: a thinned version of the paper's grid (alpha, beta 0..2; a, b 0..25; e -1..1.5): 72 fits
STARTS = list(itertools.product([0.25, 0.75], [0.25, 0.75], [2.0, 8.0, 16.0], [2.0, 8.0, 16.0],
                                [-1.0, 1.0]))  # fmt: skip


@dataclass
class FittedLaw:
    fit: ChinchillaFit
    objective: float  # the Huber loss at the optimum, summed over runs
    runs: int

    def tokens_per_parameter(self, flops: float) -> float:
        params, tokens = self.fit.optimal(flops)
        return tokens / params


def fit_scaling_law(params: list[float], tokens: list[float], losses: list[float],
                    starts: list[tuple[float, ...]] | None = None) -> FittedLaw:  # fmt: skip
    """The law that best explains the runs (N parameters, D tokens, final loss L each)."""
    if not len(params) == len(tokens) == len(losses) or len(losses) < 5:
        raise LlmlabError(f"a scaling law has 5 parameters: {len(losses)} runs cannot fit it",
                          "train at least 5 runs (sizes x budgets), better 9 or more")  # fmt: skip
    if min(losses) <= 0 or not all(math.isfinite(v) for v in losses):
        raise LlmlabError("every run's loss must be a positive finite number", "rerun the failed runs")
    log_n = torch.tensor(params, dtype=torch.float64).log()
    log_d = torch.tensor(tokens, dtype=torch.float64).log()
    log_l = torch.tensor(losses, dtype=torch.float64).log()
    best = min((_minimise(start, log_n, log_d, log_l) for start in (starts or STARTS)), key=lambda r: r[1])
    if not math.isfinite(best[1]):
        raise LlmlabError("no law of the form E + A/N^alpha + B/D^beta fits these runs (every fit ran off)",
                          "widen the grid: budgets and widths 3x apart, runs long enough to beat noise")  # fmt: skip
    alpha, beta, a, b, e = best[0].tolist()
    fit = ChinchillaFit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)
    return FittedLaw(fit=fit, objective=best[1], runs=len(losses))


def _objective(theta: torch.Tensor, log_n, log_d, log_l) -> torch.Tensor:
    alpha, beta, a, b, e = theta
    terms = torch.stack([a - alpha * log_n, b - beta * log_d, e.expand_as(log_n)])
    predicted = torch.logsumexp(terms, dim=0)
    return torch.nn.functional.huber_loss(predicted, log_l, delta=HUBER_DELTA, reduction="sum")


def _minimise(start, log_n, log_d, log_l) -> tuple[torch.Tensor, float]:
    theta = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([theta], lr=1.0, max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimiser.zero_grad()
        value = _objective(theta, log_n, log_d, log_l)
        value.backward()
        return value

    optimiser.step(closure)
    with torch.no_grad():
        value = float(_objective(theta, log_n, log_d, log_l))
    alpha, beta, a, b, e = theta.detach().tolist()
    # a fit that ran off (a or b past e^50, negative or huge exponents) explains nothing: never the best
    sane = 0 < alpha < 5 and 0 < beta < 5 and max(abs(a), abs(b), abs(e)) < 50
    return theta.detach(), value if math.isfinite(value) and sane else math.inf


@dataclass
class Bootstrap:
    """Percentile intervals (2.5%, 97.5%) of the exponents and of the compute-optimal tokens per parameter."""

    alpha: tuple[float, float]
    beta: tuple[float, float]
    tokens_per_parameter: tuple[float, float]
    resamples: int


def bootstrap(params: list[float], tokens: list[float], losses: list[float], law: FittedLaw, flops: float,
              resamples: int = 200, seed: int = 0) -> Bootstrap:  # fmt: skip
    """Refit on runs drawn with replacement (each refit starts at the full fit, then at the grid's best few)."""
    generator = torch.Generator().manual_seed(seed)
    f = law.fit
    start = (f.alpha, f.beta, math.log(f.A), math.log(f.B), math.log(f.E))
    alphas, betas, ratios = [], [], []
    n = len(losses)
    for _ in range(resamples):
        pick = torch.randint(n, (n,), generator=generator).tolist()
        if len(set(pick)) < 5:  # too few distinct runs to fit five numbers
            continue
        try:
            refit = fit_scaling_law([params[i] for i in pick], [tokens[i] for i in pick], [losses[i] for i in pick],
                                    starts=[start])  # fmt: skip
        except LlmlabError:  # a resample no law fits: it counts as not drawn
            continue
        alphas.append(refit.fit.alpha)
        betas.append(refit.fit.beta)
        ratios.append(refit.tokens_per_parameter(flops))
    if len(alphas) < 10:
        raise LlmlabError("too few bootstrap resamples could be fitted", "train more runs")
    return Bootstrap(_interval(alphas), _interval(betas), _interval(ratios), len(alphas))


def _interval(values: list[float]) -> tuple[float, float]:
    ordered = torch.tensor(values, dtype=torch.float64)
    return float(ordered.quantile(0.025)), float(ordered.quantile(0.975))
