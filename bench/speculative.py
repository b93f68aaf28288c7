"""Speculative decoding at batch 1: tokens/s against plain decoding, with identical greedy text.

A target (`llama-small`, 79M, byte-level BPE of 4,096 tokens) and a draft (`llama-nano`, 1.3M, the
target's own tokenizer) are pre-trained on tiny Shakespeare with `llmlab pretrain` for a few minutes each
(reused from $LLMLAB_CACHE/bench-speculative when present; `--retrain` forces it); BPE training is
deterministic, so both get the same tokenizer, which the draft's check confirms. Then, alternating
rounds: plain greedy decoding, speculative decoding with the draft model, with the draft distilled from
the target (trained further on the target's own greedy text), and with prompt lookup (no model): 128 new
tokens from each of four prompts, K proposed tokens per target pass. The tokens must be identical to
plain greedy (asserted). Sampling (temperature 0.8) reports its acceptance rate too.

    .venv/bin/python bench/speculative.py [--k 4] [--target-minutes 6] [--draft-minutes 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.generation.speculative import LookupDrafter, model_drafter, speculative_generate  # noqa: E402
from llmlab.load import load_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("LLMLAB_DATA", ROOT.parent / "shared" / "data")) / "tinyshakespeare.txt"
CACHE = Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" / "llmlab")) / "bench-speculative"
PROMPTS = ["ROMEO:\nI", "First Citizen:\nWe are", "KING HENRY:\nWhat", "JULIET:\nO Romeo, Romeo,"]


def pretrain(out: Path, preset: str, minutes: float, extra: list[str]) -> None:
    """`llmlab pretrain` on tiny Shakespeare (its progress shows), unless the run is already there."""
    if (out / "model.safetensors").exists():
        print(f"reusing {out}")
        return
    command = [str(ROOT / ".venv/bin/llmlab"), "pretrain", "--data", str(DATA), "--preset", preset, "--out", str(out),
               "--max-time", str(int(minutes * 60)), "--block-size", "256", "--batch-size", "16", "--lr", "1e-3",
               "--warmup-steps", "20", "--eval-interval", "100", "--overwrite", *extra]  # fmt: skip
    subprocess.run(command, check=True)


def distill(generator: Generator, cache: Path, minutes: float) -> None:
    """Sequence-level distillation (Kim and Rush, 2016): the draft goes on training on text the target
    wrote (greedy continuations of 512 line openings from the corpus), so it learns the target's habits."""
    out, text_file = cache / "distilled", cache / "distill.txt"
    if (out / "model.safetensors").exists():
        print(f"reusing {out}")
        return
    lines = [line for line in DATA.read_text().splitlines() if len(line) > 20][::20][:512]
    config = GenerationConfig(max_new_tokens=96, greedy=True)
    texts = []
    for start in range(0, len(lines), 64):
        prompts = [line[:12] for line in lines[start : start + 64]]
        texts += [p + c[0].text for p, c in zip(prompts, generator.generate(prompts, config))]
        print(f"distillation data: {len(texts)} of {len(lines)} continuations written by the target", flush=True)
    text_file.write_text("\n\n".join(texts))
    command = [str(ROOT / ".venv/bin/llmlab"), "pretrain", "--init", str(cache / "draft"), "--data", str(text_file),
               "--out", str(out), "--max-time", str(int(minutes * 60)), "--block-size", "256", "--batch-size", "16",
               "--lr", "5e-4", "--warmup-steps", "10", "--eval-interval", "100", "--overwrite"]  # fmt: skip
    subprocess.run(command, check=True)


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def measure(generator: Generator, drafters: dict, config: GenerationConfig, k: int, rounds: int) -> dict:
    """Seconds per run (min over alternating rounds), tokens per run, and each drafter's statistics."""
    times: dict[str, list[float]] = {name: [] for name in ["plain", *drafters]}
    plain_tokens, stats = None, {}
    for _ in range(rounds):
        seconds, results = timed(lambda: [generator.generate([p], config)[0] for p in PROMPTS])  # batch 1, as below
        times["plain"].append(seconds)
        plain_tokens = [r[0].token_ids for r in results]
        for name, drafter in drafters.items():
            seconds, (results, stats[name]) = timed(
                lambda d=drafter: speculative_generate(generator, PROMPTS, config, d, k)
            )
            times[name].append(seconds)
            assert [r[0].token_ids for r in results] == plain_tokens, f"{name}: not the plain greedy tokens"
    tokens = sum(len(t) for t in plain_tokens)
    return {"times": {n: min(t) for n, t in times.items()}, "tokens": tokens, "stats": stats}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--target-minutes", type=float, default=6)
    p.add_argument("--draft-minutes", type=float, default=2)
    p.add_argument("--distill-minutes", type=float, default=1.5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--retrain", action="store_true")
    args = p.parse_args()
    print(describe())
    if not DATA.exists():
        sys.exit(f"error: {DATA} is absent — set LLMLAB_DATA to the shared data folder")
    if args.retrain:
        for run in ("target", "draft", "distilled", "distill.txt"):
            subprocess.run(["rm", "-rf", str(CACHE / run)], check=True)
    pretrain(CACHE / "target", "llama-small", args.target_minutes, ["--vocab-size", "4096"])
    pretrain(
        CACHE / "draft", "llama-nano", args.draft_minutes, ["--vocab-size", "4096"]
    )  # the same data and settings give the same BPE, which model_drafter checks
    torch.manual_seed(0)
    target = load_checkpoint(str(CACHE / "target"), dtype=torch.float32)
    generator = Generator(target.model, target.tokenizer, compile="off")
    distill(generator, CACHE, args.distill_minutes)
    drafts = {name: load_checkpoint(str(CACHE / name), dtype=torch.float32) for name in ("draft", "distilled")}
    for name, ckpt in (("target", target), *drafts.items()):
        params = sum(p.numel() for p in ckpt.model.parameters()) / 1e6
        print(f"{name}: {params:.1f}M parameters, final validation loss {final_loss(CACHE / name)}")
    drafters = {"draft model": model_drafter(generator, drafts["draft"].model, drafts["draft"].tokenizer),
                "distilled draft": model_drafter(generator, drafts["distilled"].model, drafts["distilled"].tokenizer),
                "prompt lookup": LookupDrafter(target.model.config.vocab_size)}  # fmt: skip
    greedy = GenerationConfig(max_new_tokens=128, min_new_tokens=128, greedy=True)
    result = measure(generator, drafters, greedy, args.k, args.rounds)
    base = result["tokens"] / result["times"]["plain"]
    print(f"\ngreedy, batch 1, {len(PROMPTS)} prompts x 128 tokens, k={args.k}, fp32, min of {args.rounds} rounds")
    print(f"{'decoding':<16} {'tok/s':>8} {'vs plain':>9} {'accepted':>9} {'tok/pass':>9}")
    print(f"{'plain':<16} {base:>8.1f} {'1.00x':>9}")
    for name in drafters:
        speed, stats = result["tokens"] / result["times"][name], result["stats"][name]
        print(f"{name:<16} {speed:>8.1f} {speed / base:>8.2f}x {100 * stats.acceptance_rate:>8.0f}% "
              f"{stats.tokens_per_pass:>9.2f}")  # fmt: skip
    print("greedy tokens identical to plain decoding: yes (asserted)")
    sampled = GenerationConfig(max_new_tokens=128, temperature=0.8, seed=0)
    for name, drafter in drafters.items():
        _, stats = speculative_generate(generator, PROMPTS, sampled, drafter, args.k)
        print(f"sampling at temperature 0.8, {name}: {100 * stats.acceptance_rate:.0f}% accepted, "
              f"{stats.tokens_per_pass:.2f} tokens per target pass")  # fmt: skip


def final_loss(run: Path) -> str:
    import json

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "val_loss" in line]
    return f"{rows[-1]['val_loss']:.3f}" if rows else "n/a"


if __name__ == "__main__":
    main()
