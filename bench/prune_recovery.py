"""Recovery training after pruning (issue 19): how much of the perplexity that pruning cost comes back with a
short training run that keeps the zeros (`--keep-sparsity`), against the same run on the dense model.

The model is `bench/speculative.py`'s draft (a llama-nano pre-trained on tiny Shakespeare; the pruning table
in bench/RESULTS.md uses it too). Held-out text: the corpus's last 60,000 characters; calibration (Wanda) its
first 100,000; recovery training reads the rest, through `llmlab pretrain --init PRUNED --keep-sparsity`.
The dense model trained for the same steps is the control: this small model is undertrained, so more steps
help it too, and only the difference is recovery. Every pruned run is checked to end with exactly its
pruned zero pattern.

    .venv/bin/python bench/prune_recovery.py          # ~4 min on 2 idle cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.cli import main as llmlab  # noqa: E402
from llmlab.evaluation.perplexity import text_perplexity  # noqa: E402
from llmlab.load import load_checkpoint  # noqa: E402
from llmlab.model.surgery import find_linears, linears_in_blocks  # noqa: E402

DRAFT = Path.home() / ".cache" / "llmlab" / "bench-speculative" / "draft"
CORPUS = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def perplexity(folder: Path, text: str) -> float:
    ckpt = load_checkpoint(str(folder), dtype=torch.float32)
    return text_perplexity(ckpt.model, ckpt.tokenizer, text)[0]


def zero_pattern(folder: Path) -> dict[str, torch.Tensor]:
    model = load_checkpoint(str(folder)).model
    return {name: linear.weight == 0 for _, _, name, linear in find_linears(model, linears_in_blocks)}


def cli(*args) -> None:
    code = llmlab([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"llmlab {' '.join(map(str, args[:2]))} failed with exit code {code}")


def train(init: Path, out: Path, data: Path, args, keep: bool) -> float:
    """`llmlab pretrain --init` for --steps steps; returns the seconds it took."""
    start = time.perf_counter()
    cli("pretrain", "--init", init, "--data", data, "--out", out, "--max-steps", args.steps, "--batch-size",
        args.batch_size, "--block-size", args.block_size, "--lr", args.lr, "--warmup-steps", 10, "--eval-interval",
        args.steps, "--eval-iters", 2, "--log-interval", max(1, args.steps // 4), "--device", "cpu", "--dtype", "fp32",
        *(["--keep-sparsity"] if keep else []))  # fmt: skip
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DRAFT, help="a trained decoder (bench/speculative.py's draft)")
    parser.add_argument("--corpus", type=Path, default=CORPUS / "tinyshakespeare.txt")
    parser.add_argument("--steps", type=int, default=150, help="recovery training steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    if not args.model.is_dir():
        raise SystemExit(f"error: {args.model} is missing — run bench/speculative.py first (it trains the draft)")
    torch.set_num_threads(2)
    print(describe())
    text = args.corpus.read_text(encoding="utf-8")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        held_out, train_text, calibration = work / "heldout.txt", work / "train.txt", work / "calib.txt"
        held_out.write_text(text[-60_000:])
        train_text.write_text(text[:-60_000])
        calibration.write_text(text[:100_000])
        dense = perplexity(args.model, text[-60_000:])
        seconds = train(args.model, work / "dense-more", train_text, args, keep=False)
        control = perplexity(work / "dense-more", text[-60_000:])
        rows.append(("dense (no pruning)", 0.0, dense, control, seconds, True))
        for label, structure, sparsity in (("Wanda 50%", "unstructured", "0.5"), ("Wanda 2:4", "2:4", "0.5"),
                                           ("Wanda 70%", "unstructured", "0.7")):  # fmt: skip
            pruned = work / f"pruned-{structure}-{sparsity}"
            cli("prune", args.model, pruned, "--sparsity", sparsity, "--method", "wanda", "--structure", structure,
                "--calibration", calibration)  # fmt: skip
            recovered = work / f"recovered-{structure}-{sparsity}"
            seconds = train(pruned, recovered, train_text, args, keep=True)
            before, after = zero_pattern(pruned), zero_pattern(recovered)
            same = all(torch.equal(before[k], after[k]) for k in before)
            zeros = sum(int(m.sum()) for m in after.values()) / sum(m.numel() for m in after.values())
            rows.append((label, zeros, perplexity(pruned, text[-60_000:]), perplexity(recovered, text[-60_000:]),
                         seconds, same))  # fmt: skip
    report(args, dense, control, rows)


def report(args, dense: float, control: float, rows: list) -> None:
    print(f"\nmodel: {args.model}; recovery: {args.steps} steps x {args.batch_size} x {args.block_size} tokens, "
          f"lr {args.lr}; held-out perplexity (last 60,000 characters)")  # fmt: skip
    print(
        "\n| model | block sparsity | before training | after training (zeros kept) | after / dense + same steps "
        "| gap to dense closed | zero pattern kept | seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, zeros, before, after, seconds, same in rows:
        closed = "" if label.startswith("dense") else f"{(before - after) / (before - control):.0%}"
        print(f"| {label} | {zeros:.1%} | {before:.2f} | {after:.2f} | {after / control:.3f} | {closed} | "
              f"{'yes' if same else 'NO'} | {seconds:.0f} |")  # fmt: skip
    print(f"\ndense before: {dense:.2f}; dense after the same training: {control:.2f} (the control)")


if __name__ == "__main__":
    main()
