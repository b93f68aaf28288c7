"""Charts as PNG files a person can open: loss curves, Chinchilla contours, quantization reports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path) -> Path:
    """Write under a temporary name and rename, so a crash never leaves half a PNG."""
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp)
    pyplot().close(fig)
    os.replace(tmp, out)
    return out


def plot_loss(records: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    plt = pyplot()
    train = [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or val:  # a run stopped before its first logged step has nothing to label
        ax.legend()
    fig.tight_layout()
    return save_figure(fig, out)


def plot_chinchilla(fit, flops: float, out: Path, point: tuple[float, float] | None = None, title: str = "") -> Path:
    """Iso-loss contours of L(N, D), the compute-optimal frontier, and the budget's iso-FLOP line."""
    import numpy as np

    plt = pyplot()

    n_opt, d_opt = fit.optimal(flops)
    n = np.logspace(np.log10(n_opt) - 2.5, np.log10(n_opt) + 2.5, 300)
    d = np.logspace(np.log10(d_opt) - 2.5, np.log10(d_opt) + 2.5, 300)
    grid_n, grid_d = np.meshgrid(n, d)
    loss = fit.E + fit.A / grid_n**fit.alpha + fit.B / grid_d**fit.beta
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    contours = ax.contour(grid_n, grid_d, loss, levels=14, cmap="viridis", linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    budgets = np.logspace(np.log10(flops) - 5, np.log10(flops) + 5, 50)
    frontier = np.array([fit.optimal(c) for c in budgets])
    ax.plot(frontier[:, 0], frontier[:, 1], color="crimson", label="compute-optimal frontier")
    ax.plot(n, flops / (6 * n), color="black", linestyle="--", linewidth=1, label=f"C = {flops:.2e} FLOPs")
    ax.scatter([n_opt], [d_opt], color="crimson", zorder=3, label=f"optimum: {n_opt:.3g} params, {d_opt:.3g} tokens")
    if point is not None:
        ax.scatter([point[0]], [point[1]], color="black", marker="x", zorder=3, label="given model and data")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(n[0], n[-1])
    ax.set_ylim(d[0], d[-1])
    ax.set_xlabel("parameters N")
    ax.set_ylabel("training tokens D")
    ax.set_title(title or "Chinchilla: iso-loss contours of L(N, D)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return save_figure(fig, out)
