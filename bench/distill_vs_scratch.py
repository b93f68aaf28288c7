"""Distillation against training from scratch, at the same number of optimizer steps (issue 19).

Decoder: a teacher (`llama-mini`, 16M) pre-trained on tiny Shakespeare; a `llama-nano` student (1.8M)
trained (a) from scratch (`llmlab pretrain`) and (b) distilled from the teacher (`llmlab distill`, forward
KL at temperature 1, alpha 0.5), with the same steps, data, seed, batch and block size, so both see the same
batches; their held-out cross-entropy (the scratch run's validation loss, the distill run's `val_ce`) on the
same validation windows, and their wall time. (c) The same distillation with `--teacher-cache`: a first run
writes the teacher's top-32 logits of every batch, a second (alpha 0.8) reads them and never runs the teacher
on a training batch: training steps/s of each, and the cache's size on disk. (d) The scratch student again
with 3x the steps: what the distilled student's loss costs without a teacher.

Encoder: a `bert-mini` teacher (14M) MLM-pretrained on rt-polarity's training sentences (the 80% split
`llmlab evaluate --task sentiment` uses; never the test sentences) and fine-tuned as a sentiment classifier
(`llmlab finetune --task classify --method full`); a `bert-nano` student (1.9M) (a) MLM-pretrained from
scratch, (b) distilled (MLM on the teacher's soft targets, same steps), (c) not pre-trained at all, each
fine-tuned with the same steps and batch (a learning rate per model size, chosen on the validation split).
Test accuracy on the fixed 20% split with 95% bootstrap intervals, and the student/teacher accuracy ratio
(95% paired bootstrap interval): the issue's goal is >= 95% at under half the parameters.

Step budgets throughout (the results do not depend on the machine's load; the times do). Runs and the
teacher cache live under --work (a temporary folder by default; teachers are reused from there when present,
--retrain forces them).

    .venv/bin/python bench/distill_vs_scratch.py [--work DIR] [--part decoder|encoder|both] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data"))
SHAKESPEARE = DATA / "tinyshakespeare.txt"


@dataclass
class Sizes:
    teacher_steps: int  # decoder teacher
    student_steps: int  # decoder students, each
    enc_teacher_steps: int  # encoder teacher's MLM pre-training
    enc_student_steps: int  # encoder students' MLM pre-training (scratch and distilled), each
    finetune_steps: int  # classifier fine-tuning, every encoder
    eval_interval: int
    eval_iters: int
    test_limit: int | None = None  # test sentences used (None: all 2,132)


FULL = Sizes(teacher_steps=400, student_steps=300, enc_teacher_steps=300, enc_student_steps=300,
             finetune_steps=300, eval_interval=50, eval_iters=10)  # fmt: skip
QUICK = Sizes(teacher_steps=20, student_steps=10, enc_teacher_steps=12, enc_student_steps=10, finetune_steps=10,
              eval_interval=5, eval_iters=2, test_limit=200)  # fmt: skip

# decoder: every run reads the same batches (seed, batch, block); the tokenizer is the teacher's (a BPE of
# 8,192 tokens trained on the corpus, cached by llmlab, so the scratch run gets the very same one)
DEC = dict(block_size=128, batch_size=16, seed=0, vocab_size=8192, warmup_steps=40)
DEC_TEACHER_LR, DEC_STUDENT_LR = 1e-3, 2e-3
TEMPERATURE, ALPHA, CACHE_ALPHA, TOP_K, SCRATCH_MULTIPLE = 1.0, 0.5, 0.8, 32, 3
# encoder: MLM on the training sentences, 64-token windows; then classifier fine-tuning, the same steps and batch
# for every model, at a learning rate per size chosen on the fine-tuning's validation split (5% of the training
# sentences, never the test split) in a development run: bert-mini 2e-4 of {1e-4, 2e-4, 5e-4} (5e-4 diverged),
# bert-nano 1e-3 of {2e-4, 5e-4, 1e-3, 2e-3} (best for all three students; 2e-4 left them at chance)
ENC = dict(block_size=64, batch_size=32, seed=0, vocab_size=8192, warmup_steps=40)
ENC_TEACHER_LR, ENC_STUDENT_LR, FT_BATCH = 5e-4, 1e-3, 32
FT_LRS = {"teacher": 2e-4, "student": 1e-3}


def log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def common(out: Path, steps: int, sizes: Sizes) -> dict:
    return dict(out=str(out), max_steps=steps, eval_interval=sizes.eval_interval, eval_iters=sizes.eval_iters,
                log_interval=10 if steps >= 50 else 1, checkpoint_interval=10**9, device="cpu", dtype="fp32",
                overwrite=True)  # fmt: skip


def pretrain(out: Path, preset: str, data: Path, steps: int, lr: float, shape: dict, sizes: Sizes) -> dict:
    from llmlab.pretrain.config import PretrainConfig
    from llmlab.pretrain.recipe import train

    cfg = PretrainConfig(data=str(data), preset=preset, lr=lr, **shape, **common(out, steps, sizes))
    start = time.perf_counter()
    train(cfg, log=log)
    return summary(out, time.perf_counter() - start)


def distill(out: Path, teacher: Path, preset: str, data: Path, steps: int, lr: float, shape: dict, sizes: Sizes,
            alpha: float = ALPHA, cache: Path | None = None) -> dict:  # fmt: skip
    from llmlab.distill.config import DistillConfig
    from llmlab.distill.recipe import distill as run_distill

    cfg = DistillConfig(teacher=str(teacher), preset=preset, data=str(data), lr=lr, temperature=TEMPERATURE,
                        alpha=alpha, teacher_cache=str(cache) if cache else None, teacher_top_k=TOP_K, **shape,
                        **common(out, steps, sizes))  # fmt: skip
    start = time.perf_counter()
    run_distill(cfg, log=log)
    return summary(out, time.perf_counter() - start)


def summary(out: Path, wall: float) -> dict:
    """From metrics.jsonl: the final held-out cross-entropy (a distillation's `val_ce`, else `val_loss`), the
    validation curve, and training steps/s over the logging windows with no validation inside them."""
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["elapsed"], r.get("val_ce", r["val_loss"])) for r in records if "val_loss" in r]
    steps = seconds = 0.0
    previous = None
    for r in records:
        if "val_loss" in r:
            previous = None  # the next window holds this validation's time
        elif "train_loss" in r:
            if previous is not None:
                steps += r["step"] - previous["step"]
                seconds += r["elapsed"] - previous["elapsed"]
            previous = r
    return dict(val_ce=curve[-1][2], curve=curve, steps=records[-1]["step"], wall=wall,
                steps_per_s=steps / seconds if seconds else float("nan"), params=params(out))  # fmt: skip


def params(out: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        return sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())


def reuse(out: Path, retrain: bool) -> bool:
    if (out / "model.safetensors").exists() and not retrain:
        log(f"reusing {out}")
        return True
    return False


def trained_seconds(out: Path) -> float:
    """A reused run's training time (validation included), as its metrics recorded it."""
    return max(json.loads(line).get("elapsed", 0.0) for line in (out / "metrics.jsonl").read_text().splitlines())


def tokenizers_agree(*runs: Path) -> None:
    from llmlab.checkpoint.folder import load_tokenizer
    from llmlab.tokenizer import tokenizer_fingerprint

    prints = {tokenizer_fingerprint(load_tokenizer(run)) for run in runs}
    assert len(prints) == 1, f"the runs read text with different tokenizers: {runs}"


def folder_bytes(folder: Path) -> tuple[int, int]:
    files = [f for f in folder.rglob("*.safetensors")]
    return len(files), sum(f.stat().st_size for f in files)


def teacher_run(teacher: Path, retrain: bool, *pretrain_args) -> dict:
    """The teacher's summary: the one trained by an earlier run when it can be reused, else trained now."""
    if reuse(teacher, retrain):
        return summary(teacher, trained_seconds(teacher))
    return pretrain(teacher, *pretrain_args)


# --- decoder ---------------------------------------------------------------------------------------------------


def decoder(work: Path, sizes: Sizes, retrain: bool) -> dict:
    teacher = work / "dec-teacher"
    runs = {"teacher": teacher_run(teacher, retrain, "llama-mini", SHAKESPEARE, sizes.teacher_steps, DEC_TEACHER_LR,
                                   DEC, sizes)}  # fmt: skip
    n = sizes.student_steps
    runs["scratch"] = pretrain(work / "dec-scratch", "llama-nano", SHAKESPEARE, n, DEC_STUDENT_LR, DEC, sizes)
    runs["distill"] = distill(work / "dec-distill", teacher, "llama-nano", SHAKESPEARE, n, DEC_STUDENT_LR, DEC, sizes)
    cache = work / "teacher-cache"
    shutil.rmtree(cache, ignore_errors=True)
    runs["cache-write"] = distill(work / "dec-cache-write", teacher, "llama-nano", SHAKESPEARE, n, DEC_STUDENT_LR,
                                  DEC, sizes, cache=cache)  # fmt: skip
    written = folder_bytes(cache)
    stamps = {f: f.stat().st_mtime_ns for f in cache.rglob("*.safetensors")}
    runs["cache-read"] = distill(work / "dec-cache-read", teacher, "llama-nano", SHAKESPEARE, n, DEC_STUDENT_LR,
                                 DEC, sizes, alpha=CACHE_ALPHA, cache=cache)  # fmt: skip
    assert {f: f.stat().st_mtime_ns for f in cache.rglob("*.safetensors")} == stamps, "the reading run wrote"
    assert written[0] == n, f"{written[0]} cache files for {n} steps"
    long = f"scratch-x{SCRATCH_MULTIPLE}"
    runs[long] = pretrain(work / f"dec-{long}", "llama-nano", SHAKESPEARE, SCRATCH_MULTIPLE * n, DEC_STUDENT_LR, DEC,
                          sizes)  # fmt: skip
    tokenizers_agree(teacher, work / "dec-scratch", work / "dec-distill")
    plot_curves(runs, work / "decoder_curves.png")
    return {"runs": runs, "cache_files": written[0], "cache_bytes": written[1]}


def plot_curves(runs: dict[str, dict], out: Path) -> None:
    from llmlab.plot import pyplot, save_figure

    plt = pyplot()
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), dpi=110)
    for name, run in runs.items():
        if name == "teacher":
            continue
        steps, seconds, ce = zip(*run["curve"])
        by_step.plot(steps, ce, marker="o", markersize=2, label=name)
        by_time.plot(seconds, ce, marker="o", markersize=2, label=name)
    for ax, label in ((by_step, "optimizer step"), (by_time, "training seconds (validation included)")):
        ax.axhline(runs["teacher"]["val_ce"], color="grey", linestyle="--", linewidth=1, label="teacher (final)")
        ax.set_xlabel(label)
        ax.set_ylabel("held-out cross-entropy (nats/token)")
        ax.legend()
    fig.suptitle("llama-nano on tiny Shakespeare: from scratch vs distilled from llama-mini")
    save_figure(fig, out)


def decoder_report(result: dict, sizes: Sizes) -> None:
    runs, n = result["runs"], sizes.student_steps
    t = runs["teacher"]
    print(f"\n### decoder: llama-mini teacher ({t['params'] / 1e6:.1f}M, {t['steps']} steps in {t['wall']:.0f} s, "
          f"held-out CE {t['val_ce']:.3f}) -> llama-nano students ({runs['scratch']['params'] / 1e6:.2f}M); "
          f"tiny Shakespeare, BPE 8,192, block {DEC['block_size']}, batch {DEC['batch_size']}, lr {DEC_STUDENT_LR}, "
          f"{n} steps each, forward KL T={TEMPERATURE}\n")  # fmt: skip
    print("| student run | steps | held-out CE | vs scratch | train steps/s | run wall time (s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    base = runs["scratch"]["val_ce"]
    names = {"scratch": "(a) from scratch", "distill": f"(b) distilled, alpha {ALPHA}, teacher on the fly",
             "cache-write": f"(c1) distilled, alpha {ALPHA}, top-{TOP_K} cache written",
             "cache-read": f"(c2) distilled, alpha {CACHE_ALPHA}, top-{TOP_K} cache read",
             f"scratch-x{SCRATCH_MULTIPLE}": f"(d) from scratch, {SCRATCH_MULTIPLE}x the steps"}  # fmt: skip
    for key, label in names.items():
        r = runs[key]
        print(f"| {label} | {r['steps']} | {r['val_ce']:.3f} | {r['val_ce'] - base:+.3f} | {r['steps_per_s']:.2f} "
              f"| {r['wall']:.0f} |")  # fmt: skip
    mb = result["cache_bytes"] / 2**20
    print(f"\nteacher cache: {result['cache_files']} files, {mb:.1f} MiB ({mb / max(result['cache_files'], 1):.2f} "
          f"MiB per batch of {DEC['batch_size']}x{DEC['block_size']} positions)")  # fmt: skip
    long = runs[f"scratch-x{SCRATCH_MULTIPLE}"]["curve"]
    target = runs["distill"]["val_ce"]
    reached = next(((s, e) for s, e, ce in long if ce <= target), None)
    where = f"step {reached[0]} ({reached[1]:.0f} s)" if reached else "never"
    print(f"(d) first validation at or below the distilled student's {target:.3f}: {where}")


# --- encoder ---------------------------------------------------------------------------------------------------


def rt_split(work: Path) -> tuple[Path, list[dict]]:
    """The training sentences as JSONL (for MLM; one document each) and the test records."""
    from llmlab.evaluation.tasks import sentiment_task

    task = sentiment_task()
    train = work / "rt-train.jsonl"
    train.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in task.demonstrations))
    return train, list(task.examples)


def finetune(base: Path, out: Path, lr: float, sizes: Sizes) -> dict:
    from llmlab.finetune.config import FinetuneConfig
    from llmlab.finetune.recipe import finetune as run_finetune

    cfg = FinetuneConfig(base=str(base), data=["task:sentiment"], task="classify", method="full", lr=lr,
                         min_lr=0.0, warmup_steps=30, batch_size=FT_BATCH, block_size=ENC["block_size"],
                         **{**common(out, sizes.finetune_steps, sizes), "eval_interval": 10**9})  # fmt: skip
    start = time.perf_counter()
    run_finetune(cfg, log=log)
    return {"wall": time.perf_counter() - start}


def test_hits(run: Path, test: list[dict]) -> list[float]:
    from llmlab.load import load_checkpoint
    from llmlab.tasks.predict import classify_texts

    ckpt = load_checkpoint(str(run))
    predicted = classify_texts(ckpt.model, ckpt.tokenizer, [r["text"] for r in test])
    return [float(p.labels[0] == r["label"]) for p, r in zip(predicted, test)]


def ratio_interval(student: list[float], teacher: list[float], seed: int = 0, resamples: int = 1000) -> tuple:
    """95% percentile interval of accuracy(student) / accuracy(teacher), the same test sentences resampled for
    both (paired)."""
    s, t = np.asarray(student), np.asarray(teacher)
    rows = np.random.default_rng(seed).integers(0, len(s), size=(resamples, len(s)))
    ratios = s[rows].mean(axis=1) / t[rows].mean(axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def encoder(work: Path, sizes: Sizes, retrain: bool) -> dict:
    train, test = rt_split(work)
    test = test[: sizes.test_limit]
    teacher = work / "enc-teacher-mlm"
    runs = {"teacher": teacher_run(teacher, retrain, "bert-mini", train, sizes.enc_teacher_steps, ENC_TEACHER_LR,
                                   ENC, sizes)}  # fmt: skip
    n = sizes.enc_student_steps
    runs["scratch"] = pretrain(work / "enc-scratch-mlm", "bert-nano", train, n, ENC_STUDENT_LR, ENC, sizes)
    runs["distill"] = distill(work / "enc-distill-mlm", teacher, "bert-nano", train, n, ENC_STUDENT_LR, ENC, sizes)
    # the control: no pre-training at all (one step, so there is a checkpoint with the same tokenizer)
    runs["none"] = pretrain(work / "enc-none-mlm", "bert-nano", train, 1, ENC_STUDENT_LR, ENC, sizes)
    tokenizers_agree(teacher, work / "enc-scratch-mlm", work / "enc-distill-mlm")
    for name, run in runs.items():
        mlm = work / ("enc-teacher-mlm" if name == "teacher" else f"enc-{name}-mlm")
        classifier = work / f"enc-{name}-classify"
        if name == "teacher" and reuse(classifier, retrain):
            run["finetune_wall"] = trained_seconds(classifier)
        else:
            lr = FT_LRS["teacher" if name == "teacher" else "student"]
            run["finetune_wall"] = finetune(mlm, classifier, lr, sizes)["wall"]
        records = [json.loads(line) for line in (classifier / "metrics.jsonl").read_text().splitlines()]
        run["val_accuracy"] = [r["val_accuracy"] for r in records if "val_accuracy" in r][-1]
        run["hits"] = test_hits(classifier, test)
    return {"runs": runs, "n_test": len(test)}


def encoder_report(result: dict, sizes: Sizes) -> None:
    from llmlab.evaluation.metrics import bootstrap_interval

    runs = result["runs"]
    t = runs["teacher"]
    print(f"\n### encoder: bert-mini teacher -> bert-nano students; MLM on rt-polarity's training sentences (block "
          f"{ENC['block_size']}, batch {ENC['batch_size']}), then `finetune --task classify --method full` "
          f"({sizes.finetune_steps} steps, batch {FT_BATCH}, lr {FT_LRS['teacher']} for the teacher, "
          f"{FT_LRS['student']} for the students); test: {result['n_test']} "
          "sentences\n")  # fmt: skip
    print("| model | parameters | MLM steps | MLM held-out CE | validation accuracy | test accuracy [95% CI] "
          "| vs teacher [95% CI] |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    labels = {"teacher": "teacher bert-mini", "scratch": "(a) bert-nano, MLM from scratch",
              "distill": f"(b) bert-nano, MLM distilled (T={TEMPERATURE}, alpha {ALPHA})",
              "none": "(c) bert-nano, no pre-training"}  # fmt: skip
    for key, label in labels.items():
        r = runs[key]
        acc = sum(r["hits"]) / len(r["hits"])
        low, high = bootstrap_interval(r["hits"])
        if key == "teacher":
            versus = "-"
        else:
            ratio = acc / (sum(t["hits"]) / len(t["hits"]))
            rl, rh = ratio_interval(r["hits"], t["hits"])
            versus = f"{100 * ratio:.1f}% [{100 * rl:.1f}, {100 * rh:.1f}]"
        steps = r["steps"] if key != "none" else 0
        ce = f"{r['val_ce']:.3f}" if key != "none" else "-"
        print(f"| {label} | {r['params'] / 1e6:.2f}M ({r['params'] / t['params']:.0%}) | {steps} | {ce} | "
              f"{r['val_accuracy']:.3f} | {acc:.4f} [{low:.4f}, {high:.4f}] | {versus} |")  # fmt: skip
    print("\nwall time (s), MLM + fine-tuning: " + ", ".join(
        f"{k} {runs[k]['wall']:.0f} + {runs[k]['finetune_wall']:.0f}" for k in labels))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "distill_vs_scratch"))
    p.add_argument("--part", choices=["decoder", "encoder", "both"], default="both")
    p.add_argument("--quick", action="store_true", help="a smoke test: a few steps each (minutes)")
    p.add_argument("--retrain", action="store_true", help="train the teachers even when --work has them")
    args = p.parse_args()
    print(describe(), flush=True)
    for path in (SHAKESPEARE, DATA / "rt-polarity" / "pos.txt"):
        if not path.exists():
            sys.exit(f"error: {path} is absent — set LLMLAB_DATA to the shared data folder")
    sizes = QUICK if args.quick else FULL
    work = Path(args.work) / ("quick" if args.quick else "full")
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    if args.part in ("decoder", "both"):
        results["decoder"] = decoder(work, sizes, args.retrain)
    if args.part in ("encoder", "both"):
        results["encoder"] = encoder(work, sizes, args.retrain)
    if "decoder" in results:
        decoder_report(results["decoder"], sizes)
    if "encoder" in results:
        encoder_report(results["encoder"], sizes)
    print(f"\ntotal {time.perf_counter() - start:.0f} s; runs under {work}"
          + (f", curves in {work / 'decoder_curves.png'}" if "decoder" in results else ""))  # fmt: skip


if __name__ == "__main__":
    main()
