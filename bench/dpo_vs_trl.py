"""DPO step time, llmlab against TRL's `DPOTrainer`, on the same model, pairs, batch and settings.

The model is a GPT-2-shaped decoder built by llmlab and exported to a Hugging Face folder (the same
weights for both); the pairs are rt-polarity sentences (a prompt of the first four words, the rest of a
positive sentence as chosen and of a negative one as rejected). Both train every weight in fp32 with
the sigmoid (DPO) loss, beta 0.1, the reference log-probabilities computed once before training, and
the same learning rate and schedule. llmlab runs twice more with `--packing` (each pair's prompt read once,
pairs laid end to end without padding), before and after the others. Reported: the median time of a
training step after warm-up, and the loss of the first step (equal models and pairs give equal first losses).

    .venv/bin/python bench/dpo_vs_trl.py      # ~5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.align.config import AlignConfig  # noqa: E402
from llmlab.align.recipe import align  # noqa: E402
from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.config import ModelConfig  # noqa: E402
from llmlab.evaluation.tasks import data_dir  # noqa: E402
from llmlab.hf.exporter import export_hf  # noqa: E402
from llmlab.load import load_checkpoint  # noqa: E402
from llmlab.model import build_model  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402

BATCH, STEPS, WARMUP_STEPS, BETA, LR, MAX_LEN = 8, 40, 5, 0.1, 1e-5, 96


def pairs(n: int) -> list[dict]:
    folder = data_dir() / "rt-polarity"
    pos = [line.split() for line in (folder / "pos.txt").read_text(encoding="latin-1").splitlines() if line.strip()]
    neg = [line.split() for line in (folder / "neg.txt").read_text(encoding="latin-1").splitlines() if line.strip()]
    rng = random.Random(0)
    out = []
    for _ in range(n):
        good, bad = rng.choice(pos), rng.choice(neg)
        out.append(
            {"prompt": " ".join(good[:4]), "chosen": " " + " ".join(good[4:16]), "rejected": " " + " ".join(bad[4:16])}
        )
    return out


def build(out: Path, records: list[dict]) -> None:
    texts = [r["prompt"] + r["chosen"] + r["rejected"] for r in records]
    tok = train_tokenizer(texts, kind="bpe", vocab_size=4096, family="decoder")
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_preset("gpt2-mini", vocab_size=tok.vocab_size, block_size=MAX_LEN))
    save_checkpoint(out / "llmlab", model, tok)
    export_hf(load_checkpoint(out / "llmlab"), out / "hf")
    (out / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def run_llmlab(out: Path, packing: bool) -> tuple[float, float]:
    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(step: int, loss: float) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    cfg = AlignConfig(base=str(out / "llmlab"), data=[str(out / "pairs.jsonl")], val_fraction=0.02,
                      out=str(out / "run"),
                      method="dpo", tune="full", beta=BETA, lr=LR, warmup_steps=0, min_lr=LR, batch_size=BATCH,
                      max_steps=STEPS, eval_interval=10**6, eval_iters=1, log_interval=10, device="cpu", dtype="fp32",
                      overwrite=True, packing=packing)  # fmt: skip
    result = align(cfg, on_step=on_step, log=lambda line: print(line, file=sys.stderr))
    return statistics.median(times[WARMUP_STEPS:]), result.train_losses[1]


def run_trl(out: Path) -> tuple[float, float]:
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = transformers.AutoModelForCausalLM.from_pretrained(out / "hf")
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "hf")
    records = [json.loads(line) for line in (out / "pairs.jsonl").open()]
    times: list[float] = []
    losses: list[float] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.t0)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs and not losses:
                losses.append(logs["loss"])

    args = DPOConfig(output_dir=str(out / "trl"), per_device_train_batch_size=BATCH, max_steps=STEPS, learning_rate=LR,
                     lr_scheduler_type="constant", beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True,
                     max_length=MAX_LEN, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
                     seed=0, dataloader_num_workers=0)  # fmt: skip
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records), processing_class=tokenizer,
                         callbacks=[Timer()])  # fmt: skip
    trainer.train()
    return statistics.median(times[WARMUP_STEPS:]), losses[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out/dpo", help="folder of the runs")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(describe())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    build(out, pairs(BATCH * STEPS))
    # packed first and last, around the other two: the machine is shared, and its load drifts over minutes
    packed, packed_loss = run_llmlab(out, packing=True)
    ours, our_loss = run_llmlab(out, packing=False)
    theirs, their_loss = run_trl(out)
    packed_again, _ = run_llmlab(out, packing=True)
    print(f"\nDPO, gpt2-mini shape, batch {BATCH} pairs, <= {MAX_LEN} tokens, fp32, full fine-tuning, 2 CPU threads; "
          f"median of steps {WARMUP_STEPS + 1}-{STEPS}\n")  # fmt: skip
    print("| trainer | step time (s) | first-step loss |")
    print("| --- | --- | --- |")
    print(f"| llmlab align | {ours:.3f} | {our_loss:.4f} |")
    print(f"| llmlab align --packing (first, last run) | {packed:.3f}, {packed_again:.3f} | {packed_loss:.4f} |")
    print(f"| TRL DPOTrainer | {theirs:.3f} | {their_loss:.4f} |")
    slower = max(packed, packed_again)
    print(
        f"\nllmlab / TRL step time: {theirs / ours:.2f}x faster; with --packing {theirs / slower:.2f}x (its slower run)"
    )


if __name__ == "__main__":
    main()
