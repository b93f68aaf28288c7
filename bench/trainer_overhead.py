"""The training loop's speed around its step: `llmlab.train` seconds per step, by default and with the
CPU plan check (`check_memory_plan`: the profiler over step 3), optionally against another checkout of
llmlab (e.g. the trainer before the training core: `git worktree add /tmp/old f48afcf`).

Each run is a fresh process (gpt2-mini, 16 x 256 characters of tiny Shakespeare, bf16 autocast where the
CPU has it, 12 steps, median seconds per step of steps 5-12); the variants alternate, round after round,
because this VM's speed drifts by ~20% over minutes.

    .venv/bin/python bench/trainer_overhead.py [--rounds 3] [--baseline-src /tmp/old/src]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN = r"""
import json, statistics, sys, tempfile, time
import llmlab
data, check = sys.argv[1], sys.argv[2] == "1"
fields = dict(data=data, tokenizer="char", preset="gpt2-mini", batch_size=16, block_size=256, max_steps=12,
              log_interval=1, eval_interval=1000, eval_iters=1, device="cpu")
if check:
    fields["check_memory_plan"] = True
times = []
with tempfile.TemporaryDirectory() as tmp:
    llmlab.train(llmlab.TrainConfig(out=f"{tmp}/run", **fields), on_step=lambda s, l: times.append(time.perf_counter()),
                 log=lambda line: None)
print(json.dumps(statistics.median(b - a for a, b in zip(times[3:], times[4:]))))
"""


def seconds_per_step(src: Path, data: Path, check: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    done = subprocess.run([sys.executable, "-c", RUN, str(data), "1" if check else "0"], capture_output=True,
                          text=True, env=env, timeout=900)  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"error: a run from {src} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", help="the src/ folder of another llmlab checkout, run as it is")
    args = parser.parse_args()
    data = Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data")) / "tinyshakespeare.txt"
    if not data.is_file():
        sys.exit(f"error: {data} is absent — set LLMLAB_DATA to the shared data folder")
    variants = {"this checkout, default": (ROOT / "src", False),
                "this checkout, check_memory_plan (profiler over step 3)": (ROOT / "src", True)}  # fmt: skip
    if args.baseline_src:
        variants[f"baseline {args.baseline_src}, default"] = (Path(args.baseline_src), False)
    print(describe())
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(args.rounds):
        for name, (src, check) in variants.items():
            times[name].append(seconds_per_step(src, data, check))
            print(f"round {round_ + 1}: {name}: {times[name][-1]:.3f} s/step", file=sys.stderr, flush=True)
    base = statistics.median(times["this checkout, default"])
    print(f"\ngpt2-mini, 16 x 256 characters, median s/step of steps 5-12, {args.rounds} alternating rounds\n")
    print("| trainer | s/step per round | median | vs default |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {', '.join(f'{v:.3f}' for v in values)} | {median:.3f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
