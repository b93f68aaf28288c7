"""Experiment trackers beside metrics.jsonl (`--report-to tensorboard|mlflow|wandb`): every record the
trainer writes there also goes to the libraries users already watch their runs in. Off by default; each
keeps its files in the run folder unless the user's own settings say otherwise (MLFLOW_TRACKING_URI,
WANDB_MODE), and wandb runs offline unless told to sync. A resumed run continues the same tracked run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

from llmlab.errors import LlmlabError

TRACKERS = ("tensorboard", "mlflow", "wandb")
IDS = "trackers.json"  # the tracked runs' ids, so --resume continues them
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny", "wandb": "wandb"}


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self, status: str) -> None: ...  # FINISHED, KILLED (Ctrl-C, resumable) or FAILED


def check_trackers(names: list[str]) -> None:
    """Unknown names and missing libraries are refused before any work (one line each)."""
    import importlib.util

    for name in names:
        if name not in TRACKERS:
            raise LlmlabError(f"--report-to {name} is not a tracker llmlab knows", f"use one of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise LlmlabError(f"--report-to {name} needs the {name} package", f"pip install {PACKAGES[name]}")


def open_trackers(names: list[str], out: Path, options: dict[str, Any], resume_step: int | None) -> list[Tracker]:
    """The trackers asked for; resuming (from `resume_step`), the tracked runs of the start continue."""
    ids = _read_ids(out) if resume_step is not None else {}
    opened = {"tensorboard": _TensorBoard, "mlflow": _Mlflow, "wandb": _Wandb}
    trackers = [opened[name](out, options, ids.get(name), resume_step) for name in names]
    _write_ids(out, {name: t.run_id for name, t in zip(names, trackers) if getattr(t, "run_id", None)})
    return trackers


def close_trackers(trackers: list[Tracker], status: str) -> None:
    """Each tracker's run ended with the run's status; one that fails to close is a warning, not an error."""
    import warnings

    for tracker in trackers:
        try:
            tracker.close(status)
        except Exception as exc:  # noqa: BLE001 - a tracker's own failure (a server gone) must not hide the run's
            warnings.warn(f"{type(tracker).__name__.strip('_').lower()} did not close: {exc}", stacklevel=2)


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl record's numbers, without the step and the wall clock."""
    return {k: float(v) for k, v in record.items()
            if k not in ("step", "time") and isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip


class _TensorBoard:
    """Event files in OUT/tensorboard (`tensorboard --logdir OUT/tensorboard`)."""

    def __init__(self, out: Path, options: dict[str, Any], run_id: str | None, resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # resuming: events past the checkpoint (written before a crash) are dropped, as metrics.jsonl drops them
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=purge)
        self.writer.add_text("options", "\n".join(f"    {k}: {v}" for k, v in options.items()), 0)

    def log(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.writer.add_scalar(name, value, record["step"])

    def close(self, status: str) -> None:
        self.writer.close()


class _Mlflow:
    """A run in $MLFLOW_TRACKING_URI, or in OUT/mlruns (`mlflow ui --backend-store-uri OUT/mlruns`)."""

    def __init__(self, out: Path, options: dict[str, Any], run_id: str | None, resume_step: int | None) -> None:
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:  # a folder in the run: no server, and mlflow-skinny has no database driver
            uri = (out / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 asks for this opt-in to use one
        self.client = MlflowClient(tracking_uri=uri)
        if run_id is None:
            experiment = self.client.get_experiment_by_name("llmlab")
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment("llmlab")
            run_id = self.client.create_run(experiment_id, run_name=out.name).info.run_id
            for name, value in options.items():
                self.client.log_param(run_id, name, str(value)[:500])
        self.run_id = run_id

    def log(self, record: dict[str, Any]) -> None:
        for name, value in scalars(record).items():
            self.client.log_metric(self.run_id, name, value, step=record["step"])

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status=status)


class _Wandb:
    """A wandb run, offline in OUT/wandb unless $WANDB_MODE says otherwise (`wandb sync` uploads it)."""

    def __init__(self, out: Path, options: dict[str, Any], run_id: str | None, resume_step: int | None) -> None:
        import wandb

        mode = os.environ.get("WANDB_MODE", "offline")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "llmlab"), name=out.name, dir=str(out),
                              config=options, mode=mode, id=run_id, resume="allow" if run_id else None,
                              settings=wandb.Settings(silent=True, console="off"))  # fmt: skip
        self.run_id = self.run.id

    def log(self, record: dict[str, Any]) -> None:
        self.run.log(scalars(record), step=record["step"])

    def close(self, status: str) -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)


def _read_ids(out: Path) -> dict[str, str]:
    try:
        return json.loads((out / IDS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_ids(out: Path, ids: dict[str, str]) -> None:
    if ids:
        (out / IDS).write_text(json.dumps(ids), encoding="utf-8")
