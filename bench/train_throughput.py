"""Training throughput: llmlab's model and training step against transformers' GPT2LMHeadModel.

Same architecture (preset gpt2-mini: 6 layers, 384 dims, vocabulary 8,192, ~14M parameters), same
batches (16 x 256 tokens of the default corpus), same AdamW step with gradient clipping. llmlab runs
with the settings a user gets by default (bf16 autocast where the CPU has native bf16); transformers
runs as its users get it by default (fp32), and also with bf16 autocast for a like-for-like figure.
The three are timed in interleaved rounds, since this VM's speed drifts by ~20% over minutes; the
real `llmlab pretrain` loop's own tokens/s is printed after, as a check that the trainer adds nothing.

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
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.config import ModelConfig  # noqa: E402
from llmlab.data.tokens import get_batch, prepare_data  # noqa: E402
from llmlab.device import resolve_dtype  # noqa: E402
from llmlab.hf.exporter import to_transformers  # noqa: E402
from llmlab.model import DecoderLM  # noqa: E402
from llmlab.pretrain.config import TrainConfig  # noqa: E402
from llmlab.pretrain.recipe import train  # noqa: E402

BATCH, BLOCK = 16, 256


def make_trainee(kind: str, vocab: int):
    """(model, loss function) for one contestant; both start from the same initial weights."""
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.from_preset("gpt2-mini", vocab_size=vocab, block_size=BLOCK))
    if kind == "llmlab":
        return model.train(), lambda x, y: F.cross_entropy(model(x).float().flatten(0, 1), y.flatten())
    hf = to_transformers(model).train()
    return hf, lambda x, y: hf(input_ids=x, labels=x).loss


class Contestant:
    """One model, optimizer and precision; `step()` times one AdamW step as the llmlab trainer takes it."""

    def __init__(self, kind: str, vocab: int, bf16: bool) -> None:
        self.model, self.loss_fn = make_trainee(kind, vocab)
        self.bf16 = bf16
        params = list(self.model.parameters())
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.95))
        self.times: list[float] = []
        self.step_index = 0

    def step(self, ids, record: bool) -> None:
        x, y = get_batch(ids, BATCH, BLOCK, seed=0, step=self.step_index)
        self.step_index += 1
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if record:
            self.times.append(time.perf_counter() - start)

    @property
    def tokens_per_s(self) -> float:
        return BATCH * BLOCK / statistics.median(self.times)


def trainer_tokens_per_s(steps: int) -> float:
    """What the real `llmlab pretrain` loop reports with default settings (its own progress figures)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(
            out=f"{tmp}/run",
            preset="gpt2-mini",
            batch_size=BATCH,
            block_size=BLOCK,
            max_steps=steps + 2,
            log_interval=1,
            eval_interval=10**9,
            eval_iters=1,
        )
        train(config, log=lambda s: None)
        records = [json.loads(line) for line in Path(f"{tmp}/run/metrics.jsonl").read_text().splitlines()]
    return statistics.median([r["tokens_per_s"] for r in records if "tokens_per_s" in r][2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds (the VM's speed drifts)")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per contestant per round")
    args = parser.parse_args()
    print(describe())
    data = prepare_data(None, log=lambda s: None)
    vocab = data.tokenizer.vocab_size
    dtype = str(resolve_dtype("auto", torch.device("cpu"))).replace("torch.", "")
    contestants = {
        f"llmlab, defaults ({dtype} autocast)": Contestant("llmlab", vocab, bf16=dtype == "bfloat16"),
        "transformers GPT2LMHeadModel, fp32 (its default)": Contestant("hf", vocab, bf16=False),
        "transformers GPT2LMHeadModel, bf16 autocast": Contestant("hf", vocab, bf16=True),
    }
    for c in contestants.values():  # warm-up
        c.step(data.train, record=False)
    for _ in range(args.rounds):
        for c in contestants.values():
            for _ in range(args.steps):
                c.step(data.train, record=True)
    ours = next(iter(contestants.values())).tokens_per_s
    print(
        f"gpt2-mini, batch {BATCH} x {BLOCK}, AdamW + clipping; median step of {args.rounds} interleaved "
        f"rounds x {args.steps} steps\n"
    )
    print("| run | tokens/s | llmlab / this |")
    print("| --- | --- | --- |")
    for name, c in contestants.items():
        print(f"| {name} | {c.tokens_per_s:,.0f} | {ours / c.tokens_per_s:.2f}x |")
    print(
        f"\nthe llmlab trainer itself (`llmlab pretrain --preset gpt2-mini`, its progress figures): "
        f"{trainer_tokens_per_s(args.steps * 2):,.0f} tokens/s"
    )


if __name__ == "__main__":
    main()
