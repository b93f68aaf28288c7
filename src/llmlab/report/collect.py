"""What `llmlab report DIR` shows, gathered from the run folders under DIR as the commands left them:
metrics.jsonl (loss curves; an alignment run's reward and KL), model cards (lineage and evaluations),
`llmlab evaluate`'s results.json and plots, `quantize --report`'s report.json, fine-tuning's forgetting
numbers. Nothing is recomputed: the report shows what the runs measured."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.checkpoint.card import is_card_folder, read_folder
from llmlab.checkpoint.card_text import Folder
from llmlab.errors import LlmlabError

SKIPPED = {"tensorboard", "mlruns", "wandb", "__pycache__"}  # trackers' folders hold no run of their own
MAX_DEPTH = 4


@dataclass
class EvalTable:
    """One evaluation's results: rows of (shots or label, metric, value, interval) and its plot, if any."""

    title: str
    rows: list[dict[str, Any]]
    plot: Path | None = None


@dataclass
class RunReport:
    path: Path
    card: Folder | None = None
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[EvalTable] = field(default_factory=list)
    quantization: list[dict[str, Any]] = field(default_factory=list)
    quantization_plot: Path | None = None
    forgetting: dict[str, tuple[float, float]] = field(default_factory=dict)  # measure -> (before, after)
    serve: dict[str, Any] | None = None  # a lifecycle's serving smoke test (serve.json)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def depth(self) -> int:
        return len(self.card.stages) if self.card else 0


def collect(root: str | Path) -> list[RunReport]:
    """Every run folder under `root` (the root itself included), in the order of the lifecycle."""
    root = Path(root)
    if not root.is_dir():
        raise LlmlabError(f"{root} is not a folder", "pass a run folder or a folder of runs (a lifecycle's --out)")
    runs = [_readable_run(folder) for folder in _run_folders(root)]
    if not runs:
        raise LlmlabError(f"{root} holds no run folder (metrics.jsonl or a model card)",
                          "pass the --out of pretrain, finetune, align ... or of a lifecycle")  # fmt: skip
    return sorted(runs, key=_order)


def _order(run: RunReport) -> tuple:
    """A lifecycle's stage folders (01-pretrain, 02-evaluate, ...) in their order, a folder inside one
    (03-finetune/merged) right after it; other folders by how many stages made their checkpoint, then by age."""
    stage = next((m for part in run.path.parts[::-1] if (m := re.match(r"(\d+)-", part))), None)
    if stage:
        return (0, int(stage.group(1)), len(run.path.parts), 0.0)
    return (1, run.depth, len(run.path.parts), run.path.stat().st_mtime)


def _run_folders(root: Path) -> list[Path]:
    found, frontier = [], [root]
    for _ in range(MAX_DEPTH + 1):
        below = []
        for folder in frontier:
            if (
                (folder / "metrics.jsonl").is_file()
                or is_card_folder(folder)
                or _has_results(folder)
                or any((folder / name).is_file() for name in ("results.json", "serve.json"))
            ):
                found.append(folder)
            below += [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
                      and p.name not in SKIPPED and not _is_result_folder(p)]  # fmt: skip
        frontier = below
    return found


def _is_result_folder(path: Path) -> bool:
    """eval-*/ and quantization/ belong to the run above them."""
    return path.name.startswith(("eval-", "quantization"))


def _has_results(folder: Path) -> bool:
    return any(_is_result_folder(p) for p in folder.iterdir() if p.is_dir())


def _readable_run(folder: Path) -> RunReport:
    """A run folder's files, or one line naming the folder whose file could not be read (a metrics.jsonl cut
    by kill -9, a results.json of another version)."""
    try:
        return _run(folder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LlmlabError(f"cannot read the run in {folder}: {type(exc).__name__}: {exc}",
                          "fix or move that folder, or pass a folder of runs without it") from None  # fmt: skip


def _run(folder: Path) -> RunReport:
    run = RunReport(path=folder, card=read_folder(folder) if is_card_folder(folder) else None)
    if (folder / "metrics.jsonl").is_file():
        lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
        run.metrics = [json.loads(line) for line in lines if line.strip()]
        run.forgetting = _forgetting(run.metrics)
    for results in [folder / "results.json", *sorted(folder.glob("eval-*/results.json"))]:
        if not results.is_file():
            continue
        run.evaluations.append(_evaluation(results))
    if (folder / "serve.json").is_file():
        run.serve = json.loads((folder / "serve.json").read_text(encoding="utf-8"))
    report = folder / "quantization" / "report.json"
    if report.is_file():
        run.quantization = json.loads(report.read_text(encoding="utf-8"))
        plot = report.with_name("report.png")
        run.quantization_plot = plot if plot.is_file() else None
    return run


def _forgetting(metrics: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """fine-tuning's forgetting_before_X / forgetting_after_X, paired by X."""
    last = {k: v for record in metrics for k, v in record.items() if k.startswith("forgetting_")}
    names = [k.removeprefix("forgetting_before_") for k in last if k.startswith("forgetting_before_")]
    return {n: (last[f"forgetting_before_{n}"], last[f"forgetting_after_{n}"]) for n in names
            if f"forgetting_after_{n}" in last}  # fmt: skip


def _evaluation(results: Path) -> EvalTable:
    """A results.json of `llmlab evaluate`: shot results (task metrics by shots) or a task head's report."""
    data = json.loads(results.read_text(encoding="utf-8"))
    title = data.get("task") or results.parent.name.removeprefix("eval-")
    plot = next((p for p in (results.with_name("shots.png"), results.with_name("confusion.png")) if p.is_file()), None)
    if "results" in data:  # by shots
        rows = [{"shots": r["shots"], "metric": name, "value": value, "interval": r["intervals"].get(name),
                 "examples": r["examples"]}
                for r in data["results"] for name, value in r["metrics"].items()]  # fmt: skip
    else:
        rows = [{"shots": None, "metric": name, "value": value, "interval": data.get("intervals", {}).get(name),
                 "examples": data.get("examples")} for name, value in data.get("metrics", {}).items()]  # fmt: skip
    return EvalTable(title=title, rows=rows, plot=plot)
