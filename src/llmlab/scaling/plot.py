"""The scaling figure: iso-loss contours of the fitted L(N, D), its compute-optimal frontier beside the
published fits' frontiers, and the runs themselves coloured by their loss."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmlab.plan.compute import CHINCHILLA_FITS, ChinchillaFit
from llmlab.plot import pyplot, save_figure


def plot_scaling(result: dict, out: Path) -> Path:
    plt = pyplot()
    fit = ChinchillaFit(**result["fit"])
    runs = result["runs"]
    n = np.logspace(np.log10(min(r["params"] for r in runs)) - 0.5, np.log10(max(r["params"] for r in runs)) + 0.5, 200)
    d = np.logspace(np.log10(min(r["tokens"] for r in runs)) - 0.5, np.log10(max(r["tokens"] for r in runs)) + 0.5, 200)
    grid_n, grid_d = np.meshgrid(n, d)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    contours = ax.contour(grid_n, grid_d, fit.E + fit.A / grid_n**fit.alpha + fit.B / grid_d**fit.beta, levels=12,
                          cmap="viridis", linewidths=0.8)  # fmt: skip
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    budgets = np.logspace(np.log10(min(r["flops"] for r in runs)) - 1, np.log10(max(r["flops"] for r in runs)) + 1, 40)
    for name, law, style in [("your runs' fit", fit, "-"), *[(k, v, "--") for k, v in CHINCHILLA_FITS.items()]]:
        frontier = np.array([law.optimal(c) for c in budgets])
        ax.plot(frontier[:, 0], frontier[:, 1], style, label=f"compute-optimal: {name}")
    dots = ax.scatter([r["params"] for r in runs], [r["tokens"] for r in runs], c=[r["val_loss"] for r in runs],
                      cmap="magma", edgecolors="black", zorder=3)  # fmt: skip
    fig.colorbar(dots, ax=ax, label="validation loss")
    ax.set(xscale="log", yscale="log", xlim=(n[0], n[-1]), ylim=(d[0], d[-1]), xlabel="parameters N",
           ylabel="training tokens D", title="IsoFLOP runs and the fitted L(N, D)")  # fmt: skip
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, out)
