"""The built-in lifecycle recipes end to end, timed against their budgets (`default` is `make run`: <= 10
minutes; `quick` is `make quick`: < 3 minutes on 2 cores), with what each stage bought: sentiment accuracy at
every evaluate stage, the alignment's held-out reward from the reference (step 0) to its end and the KL it
spent, int8's size, the served answers against `generate --greedy`. Then why the recipes fine-tune every
weight: from the `quick` run's pre-trained base, 45 s of LoRA on the blocks and of LoRA with the output head
too, their best validation losses beside full fine-tuning's.

    .venv/bin/python bench/lifecycle_recipes.py                 # both recipes and the LoRA comparison, ~12 min
    .venv/bin/python bench/lifecycle_recipes.py quick           # one recipe
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
os.environ["LLMLAB_DATA"] = str(DATA.resolve())

from machine import describe  # noqa: E402

from llmlab.cli import main as llmlab  # noqa: E402

BUDGET_MINUTES = {"default": 10, "quick": 3}


def accuracy(stage: Path) -> str:
    rows = json.loads((stage / "results.json").read_text())["results"]
    return " / ".join(f"{r['metrics']['accuracy (rank)']:.3f} ({r['shots']} shots)" for r in rows)


def held_out_reward(stage: Path) -> str:
    rows = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_score" in r]
    return (f"held-out reward {val[0]['val_score']:.3f} (step 0) -> {val[-1]['val_score']:.3f} (step "
            f"{val[-1]['step']}), KL {val[-1]['val_kl']:.3f} nats")  # fmt: skip


def selected(stage: Path) -> str:
    result = json.loads((stage / "select.json").read_text())
    rows = ", ".join(f"{r['preset']} {r['tokens_per_s']:,} tok/s, predicted loss {r['predicted_loss']:.2f}"
                     for r in result["candidates"])  # fmt: skip
    return f"{result['chosen']} ({rows})"


def pretrained(stage: Path) -> str:
    return f"best validation loss {best_val(stage):.2f}"


def best_val(run: Path) -> float:
    return json.loads((run / "trainer_state.json").read_text())["best_val_loss"]


def folder_of(out: Path, state: dict, kind: str) -> Path:
    return out / next(name for name, record in state.items() if record["kind"] == kind)


def run_recipe(name: str, root: Path) -> tuple[Path, dict]:
    out = root / name
    started = time.perf_counter()
    assert llmlab(["lifecycle", name, "--out", str(out)]) == 0
    total = time.perf_counter() - started
    state = json.loads((out / "lifecycle.json").read_text())["stages"]
    print(f"\nlifecycle {name}: {total / 60:.1f} min in all (budget {BUDGET_MINUTES[name]} min)")
    print("| stage | seconds | what it bought |\n| --- | --- | --- |")
    for stage, record in state.items():
        what = {"evaluate": accuracy, "align": held_out_reward, "select": selected, "pretrain": pretrained}
        shown = what.get(record["kind"], lambda _: "")(out / stage)
        print(f"| {stage} | {record['seconds']:.0f} | {shown} |")
    served = json.loads((folder_of(out, state, "serve") / "serve.json").read_text())
    print(f"served answers {served['answers']}, equal to generate --greedy: {served['same_as_generate']}")
    return out, state


def lora_against_full(out: Path, state: dict, root: Path) -> None:
    base = folder_of(out, state, "pretrain")
    losses = {"full (the recipe's, 30 s)": best_val(folder_of(out, state, "finetune"))}
    for name, targets in (("lora on the blocks", ["all-linear"]), ("lora + lm_head", ["all-linear", "lm_head"])):
        run = root / name.replace(" ", "-")
        flags = [f for t in targets for f in ("--lora-targets", t)]
        args = ["finetune", str(base), "--data", "task:sentiment", "--method", "lora", *flags, "--lr", "0.002",
                "--max-time", "45", "--batch-size", "8", "--eval-interval", "100", "--out", str(run)]  # fmt: skip
        assert llmlab(args) == 0
        losses[f"{name} (45 s)"] = best_val(run)
    print("\n| fine-tuning from the same base | best validation loss |\n| --- | --- |")
    for name, loss in losses.items():
        print(f"| {name} | {loss:.3f} |")


def main() -> None:
    if not (DATA / "rt-polarity" / "pos.txt").is_file():
        raise SystemExit(f"rt-polarity is not at {DATA / 'rt-polarity'}: set LLMLAB_DATA to the shared data")
    names = sys.argv[1:] or ["default", "quick"]
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            out, state = run_recipe(name, Path(tmp))
            if name == "quick":
                lora_against_full(out, state, Path(tmp))


if __name__ == "__main__":
    main()
