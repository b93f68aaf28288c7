"""Quantization at >= 100M parameters: size, perplexity and decode speed per format, measured.

Trains a ~100M-parameter Llama-style model (preset llama-small, BPE vocabulary 32,000) on the default
corpus for a short time (a random model's perplexity says nothing), then runs `llmlab quantize
--report` on it: fp32, bf16, fp16, int8 (per channel) and int4 (groups of 128 and 32).

    .venv/bin/python bench/quantization.py [--train-seconds 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.pretrain.config import TrainConfig  # noqa: E402
from llmlab.pretrain.recipe import train  # noqa: E402
from llmlab.report.quantization import quantize_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-seconds", type=float, default=120)
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            out=f"{tmp}/run",
            preset="llama-small",
            vocab_size=32000,
            block_size=256,
            batch_size=8,
            lr=1e-3,
            warmup_steps=10,
            max_time=args.train_seconds,
            eval_interval=10**9,
            eval_iters=2,
        )
        result = train(config, log=lambda s: None)
        from llmlab.load import load_checkpoint

        n = load_checkpoint(result.out).model.num_parameters()
        print(f"model: llama-small, {n:,} parameters, trained {result.step} steps ({args.train_seconds:.0f} s)\n")
        rows = quantize_report(result.out, batches=4, batch_size=4, new_tokens=32, log=lambda s: None)
    fp32 = rows[0]
    print(
        "| format | disk MB | smaller than fp32 | perplexity | change | tok/s batch 1 | vs fp32 | tok/s batch 8 | "
        "max layer error |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r.variant} | {r.disk_mb:,.1f} | {fp32.disk_mb / r.disk_mb:.2f}x | {r.perplexity:,.2f} | "
            f"{100 * r.perplexity_change:+.2f}% | {r.tokens_per_s_batch1:,.1f} | "
            f"{r.tokens_per_s_batch1 / fp32.tokens_per_s_batch1:.2f}x | {r.tokens_per_s_batch8:,.1f} | "
            f"{r.max_layer_error:.2e} |"
        )


if __name__ == "__main__":
    main()
