"""`--report-to tensorboard|mlflow|wandb`: each tracker holds exactly what metrics.jsonl holds, through
checkpoint saves (which swap the run folder under writers that keep files open) and a --resume, which
continues the same tracked run."""

import glob
import json
import struct

import pytest

from llmlab.cli import main
from tests.helpers import assert_one_line_error, run_cli

TINY = ["--preset", "llama-nano", "--n-layer", "1", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-iters", "1", "--tokenizer", "char", "--dtype", "fp32", "--device", "cpu", "--log-interval", "2",
        "--checkpoint-interval", "2", "--eval-interval", "3"]  # fmt: skip
TRACKERS = ["--report-to", "tensorboard", "--report-to", "mlflow", "--report-to", "wandb"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    root = tmp_path_factory.mktemp("trackers")
    corpus = root / "corpus.txt"
    corpus.write_text("hello world, hello llmlab.\n" * 300)
    args = ["pretrain", "--data", str(corpus), "--out", str(root / "run"), *TINY, *TRACKERS]
    assert main([*args, "--max-steps", "4"]) == 0
    assert main([*args, "--max-steps", "6", "--resume"]) == 0
    return root / "run"


def _jsonl(run, name):
    return [
        (r["step"], r[name]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if name in r
    ]


def test_tensorboard_holds_every_record(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked / "tensorboard"))
    events.Reload()
    for name in ("train_loss", "val_loss", "lr"):
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars(name)] == _jsonl(tracked, name)
    assert [step for step, _ in _jsonl(tracked, "train_loss")] == [2, 4, 6]


def test_mlflow_continues_one_run_across_the_resume(tracked, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient(tracking_uri=(tracked / "mlruns").resolve().as_uri())
    run_id = json.loads((tracked / "trackers.json").read_text())["mlflow"]
    (experiment,) = [e for e in client.search_experiments() if e.name == "llmlab"]
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    for name in ("train_loss", "val_loss"):
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, name))
        assert history == [(s, pytest.approx(v)) for s, v in _jsonl(tracked, name)]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["max_steps"] == "4"  # the options of its start


def test_wandb_logs_offline_into_the_run_folder(tracked):
    run_id = json.loads((tracked / "trackers.json").read_text())["wandb"]
    files = sorted(glob.glob(str(tracked / "wandb" / f"offline-run-*-{run_id}" / f"run-{run_id}.wandb")))
    assert len(files) == 2  # the first part and the resumed one, under one run id
    history = [h for f in files for h in _wandb_history(f)]
    for name in ("train_loss", "val_loss"):
        assert [(h["_step"], pytest.approx(h[name])) for h in history if name in h] == _jsonl(tracked, name)


def _wandb_history(path: str) -> list[dict]:
    """The history rows of a wandb transaction log (LevelDB's log format: 32 KiB blocks of crc, length,
    type and a chunk; types 1 whole, 2-4 first/middle/last), after its 7-byte header."""
    from wandb.proto import wandb_internal_pb2

    data, pos, records, part = open(path, "rb").read(), 7, [], b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if left < 7 or kind == 0:
            pos += left
            continue
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        part = chunk if kind in (1, 2) else part + chunk
        if kind in (1, 4):
            records.append(part)
    rows = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
    return rows


def test_an_unknown_or_missing_tracker_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "pretrain", "--out", out, "--report-to", "neptune")
    assert_one_line_error(code, err, "--report-to neptune is not a tracker", "tensorboard, mlflow, wandb")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    code, _, err = run_cli(capsys, "pretrain", "--out", out, "--report-to", "wandb")
    assert_one_line_error(code, err, "needs the wandb package", "pip install wandb")
    assert not out.exists()
