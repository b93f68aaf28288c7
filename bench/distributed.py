"""Data parallelism on 2 processes: what sharding buys in memory and costs in throughput.

The same model (llama-mini, ~16M parameters at this vocabulary), the same global batch (2 ranks x 8
rows x 256 tokens of tiny Shakespeare, characters) and the same steps, trained by `llmlab pretrain`
under torchrun (gloo, 1 thread per rank) with DDP, FSDP ZeRO-2 and FSDP ZeRO-3, next to one process
with the whole batch. Figures come from the runs' own metrics.jsonl: tokens/s (summed over ranks, the
median of the logged steps after the first few) and each rank's real bytes of weights, gradients and
optimizer states at the first step (the trainer measures them and writes them next to `plan memory`'s),
and each rank's peak resident memory (the process's `ru_maxrss`: model states, activations, buffers and
the interpreter itself).

    .venv/bin/python bench/distributed.py [--steps 30] [--preset llama-mini]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {
    "one process": [],
    "DDP": ["--strategy", "ddp"],
    "FSDP ZeRO-2": ["--strategy", "fsdp", "--zero", "2"],
    "FSDP ZeRO-3": ["--strategy", "fsdp", "--zero", "3"],
}


def corpus() -> Path:
    data = Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data")) / "tinyshakespeare.txt"
    if not data.is_file():
        sys.exit(f"error: {data} is absent — set LLMLAB_DATA to the shared data folder")
    return data


def run(name: str, extra: list[str], args: argparse.Namespace, tmp: Path) -> dict:
    """One `llmlab pretrain` run; returns its metrics records."""
    out = tmp / name.replace(" ", "-")
    ranks = 1 if not extra else 2
    rows = args.rows * (2 if not extra else 1)  # the same global batch either way
    options = [
        "pretrain", "--data", str(corpus()), "--tokenizer", "char", "--preset", args.preset,
        "--block-size", str(args.block), "--batch-size", str(rows), "--max-steps", str(args.steps),
        "--log-interval", "1", "--eval-interval", str(args.steps), "--eval-iters", "1", "--dtype", args.dtype,
        "--device", "cpu", "--out", str(out), "--overwrite", *extra,
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": str(2 // ranks)}
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command = [sys.executable, *(launcher if extra else []), __file__, "--worker", *options]
    print(f"{name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        sys.exit(f"error: {name} failed:\n{done.stderr[-3000:]}")
    rss = [json.loads(line)["max_rss"] for line in done.stdout.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records + [{"max_rss": max(rss)}]


def worker(options: list[str]) -> None:
    """One rank (or the one process): `llmlab ...`, then this process's peak resident memory as JSON."""
    import resource

    from llmlab.cli import main as llmlab

    code = llmlab(options)
    print(
        json.dumps(
            {
                "rank": int(os.environ.get("RANK", 0)),
                "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            }
        )
    )
    sys.exit(code)


def summarise(records: list[dict], skip: int) -> tuple[float, dict[str, int] | None, float, int]:
    """(median tokens/s after `skip` steps, rank 0's model-state bytes or None, final training loss,
    the largest peak resident memory of a rank)."""
    steps = [r for r in records if "tokens_per_s" in r]
    tps = statistics.median(r["tokens_per_s"] for r in steps[skip:])
    memory = next((r["memory"][0] for r in records if "memory" in r), None)
    return tps, memory, steps[-1]["train_loss"], next(r["max_rss"] for r in records if "max_rss" in r)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="llama-mini")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rows", type=int, default=8, help="rows per rank (one process takes twice)")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--dtype", default="fp32", help="fp32 (FSDP's gloo reductions) or bf16 autocast")
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2:])
    args = parser.parse_args()
    print(describe())
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in STRATEGIES.items():
            results[name] = summarise(run(name, extra, args, Path(tmp)), skip=min(5, args.steps // 3))
    ddp_tps, ddp_memory, _, ddp_rss = results["DDP"]
    ddp_states = sum(ddp_memory.values())
    print(f"\n{args.preset}, global batch 16 x {args.block} tokens, {args.steps} steps, {args.dtype}, CPU (gloo)\n")
    print("| strategy | tokens/s | vs DDP | weights MB/rank | gradients MB/rank | optimizer MB/rank | "
          "model states vs DDP | peak RSS MB/rank | vs DDP | final loss |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, (tps, memory, loss, rss) in results.items():
        cells = ["-", "-", "-", "-"]
        if memory is not None:
            cells = [f"{memory[k] / 1e6:.1f}" for k in ("weights", "gradients", "optimizer states")]
            cells.append(f"{sum(memory.values()) / ddp_states:.2f}x")
        cells += [f"{rss / 1e6:,.0f}", f"{rss / ddp_rss:.2f}x"]
        print(f"| {name} | {tps:,.0f} | {tps / ddp_tps:.2f}x | {' | '.join(cells)} | {loss:.4f} |")


if __name__ == "__main__":
    main()
