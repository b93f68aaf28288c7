"""The built-in `quick` lifecycle end to end, timed, with what each stage bought (sentiment accuracy before and
after fine-tuning and after int8, the served answers against `generate --greedy`), then why the recipe
fine-tunes every weight: from the same pre-trained base, 45 s of LoRA on the blocks and of LoRA with the
output head too, their best validation losses beside full fine-tuning's.

    .venv/bin/python bench/lifecycle_quick.py            # about 4 minutes on 2 cores; needs the shared data
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


def accuracy(stage: Path) -> str:
    rows = json.loads((stage / "results.json").read_text())["results"]
    return " / ".join(f"{r['metrics']['accuracy (rank)']:.3f} ({r['shots']} shots)" for r in rows)


def best_val(run: Path) -> float:
    return json.loads((run / "trainer_state.json").read_text())["best_val_loss"]


def main() -> None:
    if not (DATA / "rt-polarity" / "pos.txt").is_file():
        raise SystemExit(f"rt-polarity is not at {DATA / 'rt-polarity'}: set LLMLAB_DATA to the shared data")
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quick"
        started = time.perf_counter()
        assert llmlab(["lifecycle", "quick", "--out", str(out)]) == 0
        total = time.perf_counter() - started
        state = json.loads((out / "lifecycle.json").read_text())["stages"]
        print(f"\nlifecycle quick: {total / 60:.1f} min in all")
        print("| stage | seconds | sentiment accuracy (rank) |\n| --- | --- | --- |")
        for name, record in state.items():
            shown = accuracy(out / name) if record["kind"] == "evaluate" else ""
            print(f"| {name} | {record['seconds']:.0f} | {shown} |")
        served = json.loads((out / "07-serve" / "serve.json").read_text())
        print(f"served answers {served['answers']}, equal to generate --greedy: {served['same_as_generate']}")
        base, losses = out / "01-pretrain", {"full (the recipe's)": best_val(out / "03-finetune")}
        for name, targets in (("lora on the blocks", ["all-linear"]), ("lora + lm_head", ["all-linear", "lm_head"])):
            run = Path(tmp) / name.replace(" ", "-")
            flags = [f for t in targets for f in ("--lora-targets", t)]
            assert (
                llmlab(
                    [
                        "finetune",
                        str(base),
                        "--data",
                        "task:sentiment",
                        "--method",
                        "lora",
                        *flags,
                        "--lr",
                        "0.002",
                        "--max-time",
                        "45",
                        "--batch-size",
                        "8",
                        "--eval-interval",
                        "100",
                        "--out",
                        str(run),
                    ]
                )
                == 0
            )
            losses[name] = best_val(run)
        print("\n| 45 s of fine-tuning from the same base | best validation loss |\n| --- | --- |")
        for name, loss in losses.items():
            print(f"| {name} | {loss:.3f} |")


if __name__ == "__main__":
    main()
