"""Training throughput: `llmlab pretrain` with default settings against transformers' GPT2LMHeadModel.

Same architecture (preset gpt2-mini: 6 layers, 384 dims, vocabulary 8,192, ~14M parameters), same
batch (16 x 256 tokens of the default corpus), AdamW, gradient clipping. llmlab runs its real trainer
with the settings a user gets by default (bf16 autocast where the CPU has native bf16); transformers
runs as its users get it by default (fp32), and also with bf16 autocast for a like-for-like figure.

    .venv/bin/python bench/train_throughput.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.config import ModelConfig  # noqa: E402
from llmlab.data.tokens import get_batch, prepare_data  # noqa: E402
from llmlab.hf import to_gpt2  # noqa: E402
from llmlab.model import DecoderLM  # noqa: E402
from llmlab.train import TrainConfig, train  # noqa: E402

BATCH, BLOCK = 16, 256


def hf_tokens_per_s(ids, vocab: int, steps: int, warmup: int, bf16: bool) -> float:
    torch.manual_seed(0)
    hf = to_gpt2(DecoderLM(ModelConfig.from_preset("gpt2-mini", vocab_size=vocab, block_size=BLOCK))).train()
    decay = [p for p in hf.parameters() if p.dim() >= 2]
    rest = [p for p in hf.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95)
    )
    times = []
    for step in range(warmup + steps):
        x, _ = get_batch(ids, BATCH, BLOCK, seed=0, step=step)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = hf(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(hf.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return BATCH * BLOCK / statistics.median(times)


def llmlab_tokens_per_s(steps: int, warmup: int) -> tuple[float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            out=f"{tmp}/run",
            preset="gpt2-mini",
            batch_size=BATCH,
            block_size=BLOCK,
            max_steps=warmup + steps,
            log_interval=1,
            eval_interval=10**9,
            eval_iters=1,
        )
        train(config, log=lambda s: None)
        records = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][warmup:]
    from llmlab.device import resolve_dtype

    return statistics.median(rates), str(resolve_dtype("auto", torch.device("cpu"))).replace("torch.", "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(describe())
    data = prepare_data(None, log=lambda s: None)
    ours, dtype = llmlab_tokens_per_s(args.steps, args.warmup)
    hf_fp32 = hf_tokens_per_s(data.train, data.tokenizer.vocab_size, args.steps, args.warmup, bf16=False)
    hf_bf16 = hf_tokens_per_s(data.train, data.tokenizer.vocab_size, args.steps, args.warmup, bf16=True)
    print(f"gpt2-mini, batch {BATCH} x {BLOCK}, AdamW; median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| run | tokens/s | llmlab / this |")
    print("| --- | --- | --- |")
    print(f"| llmlab pretrain, defaults ({dtype} autocast) | {ours:,.0f} | 1.00x |")
    print(f"| transformers GPT2LMHeadModel, fp32 (its default) | {hf_fp32:,.0f} | {ours / hf_fp32:.2f}x |")
    print(f"| transformers GPT2LMHeadModel, bf16 autocast | {hf_bf16:,.0f} | {ours / hf_bf16:.2f}x |")


if __name__ == "__main__":
    main()
