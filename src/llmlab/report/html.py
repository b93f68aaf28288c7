"""`llmlab report DIR`: one self-contained HTML page (every figure embedded as a PNG data URI, no script, no
network) of the runs under DIR: each stage's card summary, loss curves, evaluation tables with intervals
and plots, the alignment reward-vs-KL path, the quantization table, forgetting, then the final model card."""

from __future__ import annotations

import base64
import datetime
import io
import os
from pathlib import Path
from typing import Any

import jinja2
import markdown
import markdown.treeprocessors

from llmlab.checkpoint.card import CARD
from llmlab.plot import pyplot
from llmlab.report.collect import RunReport, collect

TEMPLATE = Path(__file__).with_name("report.html.j2")


def write_report(root: str | Path, out: str | Path | None = None) -> Path:
    """Render the report of the runs under `root` into `out` (default root/report.html), atomically."""
    runs = collect(root)
    out = Path(out) if out else Path(root) / "report.html"
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=True,
                             undefined=jinja2.StrictUndefined)  # fmt: skip
    env.filters["num"] = _num
    page = env.get_template(TEMPLATE.name).render(
        title=f"llmlab report: {Path(root).resolve().name}",
        generated=datetime.datetime.now().isoformat(timespec="seconds"),
        runs=[_view(run) for run in runs],
        card=_final_card(runs),
    )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out


def _view(run: RunReport) -> dict[str, Any]:
    """What the template shows of one run, figures already encoded."""
    card = run.card
    return {
        "name": run.name, "path": str(run.path), "card": card,
        "summary": _summary(run), "loss_plot": _loss_plot(run), "alignment_plot": _alignment_plot(run),
        "evaluations": [{"title": e.title, "rows": e.rows, "plot": _png_file(e.plot)} for e in run.evaluations],
        "card_evaluations": card.evaluations if card else [],
        "quantization": run.quantization, "quantization_plot": _png_file(run.quantization_plot),
        "forgetting": run.forgetting, "serve": run.serve,
    }  # fmt: skip


def _summary(run: RunReport) -> str:
    if run.card is None:
        if run.serve:
            return "a serving smoke test"
        return f"evaluation: {', '.join(e.title for e in run.evaluations)}" if run.evaluations else "a run folder"
    kinds = " → ".join(s.kind for s in run.card.stages) or "no recorded stages"
    return f"{run.card.parameters:,} parameters, {run.card.config.family}: {kinds}"


def _final_card(runs: list[RunReport]) -> dict[str, str] | None:
    """The card of the checkpoint the most stages made (the lifecycle's result), as HTML."""
    carded = [r for r in runs if r.card is not None and (r.path / CARD).is_file()]
    if not carded:
        return None
    final = max(reversed(carded), key=lambda r: r.depth)  # the most stages; of equals, the last in order
    text = (final.path / CARD).read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2) if text.startswith("---\n") else ("", "", text)
    return {"name": final.name, "front_matter": front, "html": markdown_without_html(body)}


def markdown_without_html(text: str) -> str:
    """Markdown to HTML with raw HTML escaped, not passed through: a card quotes file names and methods the
    user chose, and a page must not run what they contain (Python-Markdown's documented way, its safe mode
    being gone)."""
    md = markdown.Markdown(extensions=["tables", "fenced_code"])
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    md.treeprocessors.register(_SafeLinks(md), "safe_links", 0)
    return md.convert(text)


class _SafeLinks(markdown.treeprocessors.Treeprocessor):
    """Links keep only addresses that cannot run anything (http(s), mailto, in-page anchors), images only
    embedded PNGs: a `javascript:` link in a card would run when clicked, a remote image would be fetched."""

    SAFE = {"href": ("http://", "https://", "mailto:", "#"), "src": ("data:image/png;base64,",)}  # nothing fetched

    def run(self, root):
        for element in root.iter():
            for attribute, safe in self.SAFE.items():
                value = element.get(attribute)
                if value is not None and not value.strip().lower().startswith(safe):
                    del element.attrib[attribute]
        return None


def _loss_plot(run: RunReport) -> str | None:
    train = [(r["step"], r["train_loss"]) for r in run.metrics if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in run.metrics if "val_loss" in r]
    if not train and not val:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", linewidth=1)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o", markersize=3)
    ax.set(xlabel="step", ylabel="loss (nats/token)", title=f"{run.name}: loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png_figure(fig)


def _alignment_plot(run: RunReport) -> str | None:
    """Reward against KL to the reference, step by step (the DPO paper's frontier axes), for online runs: each
    rollout's, and the held-out prompts' at every evaluation (step 0: the reference itself)."""
    points = [
        (r["train_kl"], r["train_score"], r["step"]) for r in run.metrics if "train_kl" in r and "train_score" in r
    ]
    held_out = [(r["val_kl"], r["val_score"]) for r in run.metrics if "val_kl" in r and "val_score" in r]
    if not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=100)
    kl, score, steps = zip(*points)
    ax.plot(kl, score, color="0.7", linewidth=1)
    dots = ax.scatter(kl, score, c=steps, cmap="viridis", s=18, label="rollouts")
    fig.colorbar(dots, ax=ax, label="step")
    if held_out:
        ax.plot(*zip(*held_out), color="crimson", marker="s", markersize=4, linewidth=1.2, label="held-out prompts")
        ax.legend(loc="best", fontsize=8)
    ax.set(xlabel="KL(policy || reference), nats", ylabel="reward", title=f"{run.name}: reward vs KL")
    ax.grid(alpha=0.3)
    return _png_figure(fig)


def _png_figure(fig) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    pyplot().close(fig)
    return _data_uri(buffer.getvalue())


def _png_file(path: Path | None) -> str | None:
    return _data_uri(path.read_bytes()) if path is not None else None


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)
