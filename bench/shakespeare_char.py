"""Quality per minute: best validation loss on tiny Shakespeare (characters) within 180 s of training.

llmlab's recipe (Llama style, 4 layers, 256 dims, context 64, batch 64, Muon for the blocks' matrices
and AdamW for the rest, lr 2e-3, bf16 where native) against
the well-known nanoGPT CPU recipe (GPT-2 style, 4 layers, 4 heads, 128 dims, context 64, batch 12,
2,000 iterations, fp32) run through the same trainer in the same script. The last 10% of the text
is the validation split; the clock counts training and evaluation, not the one-off tokenisation.

    .venv/bin/python bench/shakespeare_char.py [--data ../shared/data/tinyshakespeare.txt]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.pretrain.config import TrainConfig  # noqa: E402
from llmlab.pretrain.recipe import train  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

LLMLAB_RECIPE = dict(
    preset="llama-nano",
    n_layer=4,
    n_embd=256,
    n_head=4,
    n_kv_head=4,
    block_size=64,
    batch_size=64,
    optimizer="muon",
    lr=2e-3,
    min_lr=1e-4,
    warmup_steps=50,
    max_time=180,
    eval_interval=200,
    eval_iters=10,
)
NANOGPT_RECIPE = dict(
    preset="gpt2-nano",
    n_layer=4,
    n_head=4,
    n_embd=128,
    block_size=64,
    batch_size=12,
    lr=1e-3,
    min_lr=1e-4,
    warmup_steps=100,
    beta2=0.99,
    max_steps=2000,
    eval_interval=250,
    eval_iters=20,
    dtype="fp32",
)


def run(name: str, recipe: dict, data: Path, tmp: str) -> tuple[float, int, float]:
    start = time.perf_counter()
    config = TrainConfig(out=f"{tmp}/{name}", data=str(data), tokenizer="char", log_interval=50, **recipe)
    result = train(config, log=lambda s: None)
    return result.best_val_loss, result.step, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA / "tinyshakespeare.txt")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"error: {args.data} not found — pass --data or set LLMLAB_DATA")
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        train(TrainConfig(out=f"{tmp}/warm", data=str(args.data), tokenizer="char", max_steps=1), log=lambda s: None)
        ours = run("llmlab", LLMLAB_RECIPE, args.data, tmp)
        base = run("nanogpt", NANOGPT_RECIPE, args.data, tmp)
    print("\n| recipe | best validation loss | steps | wall-clock s |")
    print("| --- | --- | --- | --- |")
    print(f"| llmlab, 180 s budget | {ours[0]:.4f} | {ours[1]} | {ours[2]:.0f} |")
    print(f"| nanoGPT CPU recipe, 2,000 iterations | {base[0]:.4f} | {base[1]} | {base[2]:.0f} |")
    print(
        f"\nloss ratio llmlab / nanoGPT recipe: {ours[0] / base[0]:.3f}; goal <= 1.55: "
        f"{'met' if ours[0] <= 1.55 else 'not met'}"
    )


if __name__ == "__main__":
    main()
