"""`llmlab lifecycle RECIPE --out DIR`: the recipe's stages in order, each the existing command run in this
process with its options, into DIR/NN-stage/. What flows between them: the current model (pre-training's
checkpoint, then the fine-tuned, aligned, quantized one) and the curated data.

DIR/lifecycle.json records each stage's key (a hash of its options, the previous stage's key and the
files it reads): a rerun skips a finished stage whose key is unchanged, resumes a training stage that was
interrupted (Ctrl-C or kill -9) with --resume, and runs again a stage whose inputs changed, and every stage
after it. The run ends with `llmlab report` over DIR."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.lifecycle.recipe import COMMANDS, MAKES_MODEL, Recipe, Stage, flags
from llmlab.progress import format_duration

STATE = "lifecycle.json"
RESUMABLE = ("pretrain", "finetune", "align", "distill")


@dataclass
class Flow:
    """What the stages hand on: the model to work on next and the curated data, if any."""

    scope: dict[str, Any]
    model: str | None = None
    data: str | None = None
    preset: str | None = None  # the select stage's choice, for the next pretrain stage
    pretrain: dict[str, Any] = field(default_factory=dict)  # the pretrain stage's options, which select plans for


def run_lifecycle(recipe: Recipe, out: str | Path, main: Callable[[list[str]], int],
                  log: Callable[[str], None] = print) -> Path:  # fmt: skip
    """Run (or resume) the recipe into `out`, each stage through `main` (the `llmlab` command's entry point,
    passed in: commands sit above this layer); returns the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = _read_state(out)
    if state.get("recipe") not in (None, recipe.name):
        raise LlmlabError(f"{out} holds the lifecycle of recipe {state['recipe']!r}, not {recipe.name!r}",
                          "choose another --out for this recipe")  # fmt: skip
    state["recipe"], flow, previous = recipe.name, Flow(scope=recipe.scope, model=recipe.scope.get("base")), ""
    _drop_stages_not_in(recipe, out, state, log)
    for stage in recipe.stages:
        if stage.kind == "select":  # it plans for the pretrain stage after it
            flow.pretrain = next(dict(s.options) for s in recipe.stages[stage.index + 1 :] if s.kind == "pretrain")
        previous = _run_stage(stage, out, flow, state, previous, len(recipe.stages), main, log)
    for line in scope_summary(recipe, out, state):
        log(line)
    if main(["report", str(out)]) != 0:
        raise LlmlabError(f"the report of {out} failed (its error is above)", "run llmlab report on it again")
    return out / "report.html"


def _drop_stages_not_in(recipe: Recipe, out: Path, state: dict, log) -> None:
    """Folders of stages the recipe no longer has (it was edited, or renumbered) go, so the report shows only
    this recipe's stages."""
    names = {s.name for s in recipe.stages}
    for name in [n for n in state["stages"] if n not in names]:
        shutil.rmtree(out / name, ignore_errors=True)
        del state["stages"][name]
        log(f"removed {out / name}: the recipe has no stage {name} now")


def _run_stage(stage: Stage, out: Path, flow: Flow, state: dict, previous: str, total: int, main, log) -> str:
    folder = out / stage.name
    key = stage_key(stage, previous, flow)
    record = state["stages"].get(stage.name, {})
    where = f"[{stage.index + 1}/{total}] {stage.kind}"
    if record.get("key") == key and record.get("status") == "done" and folder.exists():
        log(f"{where}: unchanged since it finished, skipped ({folder})")
        _advance(stage, folder, flow)
        return key
    resume = record.get("key") == key and stage.kind in RESUMABLE and (folder / "trainer_state.json").is_file()
    if not resume and folder.exists():
        shutil.rmtree(folder)  # its inputs changed, or it never got far enough to resume: start it again
    log(f"{where}: {'resuming' if resume else 'running'} into {folder}")
    state["stages"][stage.name] = {"kind": stage.kind, "key": key, "status": "started", "model": flow.model}
    _write_state(out, state)
    started = time.monotonic()
    status = run_command(stage, folder, out, flow, main, resume)
    if status == 130:
        raise KeyboardInterrupt
    if status != 0:
        raise LlmlabError(f"stage {stage.name} ({stage.kind}) failed with exit status {status} (its error is above)",
                          "fix its options and run the lifecycle again: finished stages are kept")  # fmt: skip
    seconds = time.monotonic() - started
    state["stages"][stage.name] |= {"status": "done", "seconds": round(seconds, 1)}
    _write_state(out, state)
    _advance(stage, folder, flow)
    log(f"{where}: done in {format_duration(seconds)}")
    return key


def scope_summary(recipe: Recipe, out: Path, state: dict) -> list[str]:
    """What each stage bought: the scope's metric at every evaluate stage (on the model it evaluated), an
    online alignment's held-out reward from the reference (step 0) to the end with the KL it spent, and
    quantization's size."""
    metric, lines = recipe.scope.get("metric"), []
    for stage in recipe.stages:
        folder, model = out / stage.name, Path(str(state["stages"].get(stage.name, {}).get("model", "?")))
        if stage.kind == "evaluate" and (folder / "results.json").is_file():
            for row in json.loads((folder / "results.json").read_text(encoding="utf-8")).get("results", []):
                shown = {k: v for k, v in row["metrics"].items() if metric in (None, k)}
                values = ", ".join(f"{k} {v:.4f}" for k, v in shown.items())
                lines.append(f"{stage.name} on {model.parent.name}/{model.name}, {row['shots']} shots: {values}")
        elif stage.kind == "select" and (folder / "select.json").is_file():
            chosen = json.loads((folder / "select.json").read_text(encoding="utf-8"))
            row = next(r for r in chosen["candidates"] if r["preset"] == chosen["chosen"])
            lines.append(f"{stage.name}: {row['preset']}, predicted loss {row['predicted_loss']:.3f} after "
                         f"{row['tokens']:,} tokens in {chosen['seconds']:g} s")  # fmt: skip
        elif stage.kind == "align" and (line := _reward_line(folder)):
            lines.append(f"{stage.name}: {line}")
        elif stage.kind == "quantize" and (folder / "model.safetensors").is_file() and model.is_dir():
            before, after = (sum(f.stat().st_size for f in m.glob("model*.safetensors")) for m in (model, folder))
            lines.append(f"{stage.name}: weights {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB")
    return lines


def _reward_line(folder: Path) -> str | None:
    """An online run's held-out reward at its first and last evaluation, and its KL to the reference then."""
    try:
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError):
        return None
    held_out = [r for r in rows if "val_score" in r and "val_kl" in r]
    if len(held_out) < 2:
        return None
    first, last = held_out[0], held_out[-1]
    return (f"held-out reward {first['val_score']:.4f} at step {first['step']} -> {last['val_score']:.4f} at step "
            f"{last['step']}, KL to the reference {last['val_kl']:.4f} nats")  # fmt: skip


def run_command(stage: Stage, folder: Path, out: Path, flow: Flow, main, resume: bool) -> int:
    """The stage as its command; the serve stage is a smoke test the lifecycle drives itself."""
    if stage.kind == "serve":
        from llmlab.lifecycle.serve_check import serve_check

        serve_check(_require_model(stage, flow), folder, dict(stage.options))
        return 0
    if stage.kind == "select":
        from llmlab.lifecycle.select import select_preset

        select_preset(stage.options, flow.pretrain, folder)
        return 0
    args = command_args(stage, folder, out, flow) + (["--resume"] if resume else [])
    try:
        return main(args)
    except SystemExit as exc:  # argparse refusing a value the recipe check could not foresee
        return int(exc.code or 2)


def command_args(stage: Stage, folder: Path, out: Path, flow: Flow) -> list[str]:
    """The command line of a stage: its command, what the flow gives it, then the recipe's options."""
    options, kind = dict(stage.options), stage.kind
    head: list[str] = list(COMMANDS[kind])
    if kind == "curate":
        head += [str(options.pop("data", None) or flow.scope.get("data") or "python-stdlib"), "--out", str(folder)]
    elif kind == "pretrain":
        if "data" not in options and (flow.data or flow.scope.get("data")):
            options["data"] = flow.data or flow.scope["data"]
        if "preset" not in options and flow.preset:
            options["preset"] = flow.preset
        head += ["--out", str(folder)]
    elif kind == "evaluate":
        if not {"task", "perplexity", "reward", "toxicity"} & set(options) and flow.scope.get("task"):
            options["task"] = flow.scope["task"]
        head += [_require_model(stage, flow), "--out", str(folder)]
    elif kind == "finetune":
        options.setdefault("merge", options.get("method", "lora") in ("lora", "qlora"))
        head += [_require_model(stage, flow), "--out", str(folder)]
    elif kind == "align":
        head += [_require_model(stage, flow), "--out", str(folder)]
    elif kind == "distill":
        head += ["--teacher", _require_model(stage, flow), "--out", str(folder)]
    elif kind in ("quantize", "prune"):
        text = flow.data or flow.scope.get("data")
        if kind == "quantize" and options.get("report") and "data" not in options and text:
            options["data"] = text  # the report's perplexity on the pre-training text
        head += [_require_model(stage, flow), str(folder)]
    return head + flags(options)


def stage_key(stage: Stage, previous: str, flow: Flow) -> str:
    """Changes when the stage's options, anything before it, or a file it names changes."""
    named = _values(stage.options) + _values(flow.scope)  # the scope's data, task file and base are read too
    files = {str(v): _fingerprint(Path(str(v))) for v in named if _is_file_value(v)}
    given = {"pretrain": flow.pretrain} if stage.kind == "select" else {}  # what select plans for, and its choice
    if stage.kind == "pretrain" and "preset" not in stage.options and flow.preset:
        given = {"preset": flow.preset}
    text = json.dumps([stage.kind, stage.options, previous, flow.scope, files, given], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _values(options: dict[str, Any]) -> list[Any]:
    return [item for value in options.values() for item in (value if isinstance(value, list) else [value])]


def _is_file_value(value: Any) -> bool:
    return isinstance(value, str) and len(value) < 4096 and os.path.exists(value.split(":")[0])


def _fingerprint(path: Path) -> str:
    """Size and modification time of a file, or of every file of a folder."""
    path = Path(str(path).split(":")[0])  # `data.jsonl:2` (a weight) names data.jsonl
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256(
        "".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files).encode()
    ).hexdigest()[:16]


def _advance(stage: Stage, folder: Path, flow: Flow) -> None:
    """What a finished stage hands on."""
    if stage.kind == "select":
        flow.preset = json.loads((folder / "select.json").read_text(encoding="utf-8"))["chosen"]
    elif stage.kind == "curate":
        flow.data = str(folder)
    elif stage.kind in MAKES_MODEL:
        if stage.kind == "pretrain":
            flow.preset = None  # select chose for this pretrain stage only
        merged = folder / "merged"
        flow.model = str(merged if stage.kind == "finetune" and merged.is_dir() else folder)


def _require_model(stage: Stage, flow: Flow) -> str:
    if flow.model is None:
        raise LlmlabError(f"stage {stage.name} ({stage.kind}) has no model to work on",
                          "put a pretrain stage first, or start from a checkpoint: scope: {base: CKPT}")  # fmt: skip
    return flow.model


def _read_state(out: Path) -> dict:
    try:
        state = json.loads((out / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {"stages": {}}
    except ValueError:
        raise LlmlabError(f"{out / STATE} is not valid JSON", "remove it to run every stage again") from None
    state.setdefault("stages", {})
    return state


def _write_state(out: Path, state: dict) -> None:
    tmp = out / f".{STATE}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / STATE)
