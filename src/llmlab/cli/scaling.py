"""`llmlab scaling`: an IsoFLOP grid of pre-training runs, the law L(N, D) fitted to their losses with
bootstrap intervals, and the compute-optimal tokens per parameter next to Chinchilla's."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmlab.cli.common import print_table
from llmlab.errors import LlmlabError


def _numbers(text: str, cast, flag: str) -> list:
    try:
        values = [cast(float(v)) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LlmlabError(f"{flag} {text!r} is not a list of numbers", f"write it like {flag} 1e12,3e12,1e13") from None
    if not values or min(values) <= 0:
        raise LlmlabError(f"{flag} needs positive numbers, got {text!r}", f"write it like {flag} 1e12,3e12,1e13")
    return values


def cmd_scaling(args: argparse.Namespace) -> None:
    from llmlab.data.tokens import prepare_data
    from llmlab.pretrain.config import PretrainConfig
    from llmlab.pretrain.recipe import train
    from llmlab.scaling.grid import fit_grid, plan_grid, run_grid
    from llmlab.scaling.plot import plot_scaling

    budgets, widths = _numbers(args.budgets, float, "--budgets"), _numbers(args.widths, int, "--widths")
    if args.bootstrap < 20:  # checked before any run: the intervals come after every run has trained
        raise LlmlabError(f"--bootstrap {args.bootstrap} is too few resamples for 95% intervals", "use 200")
    base = PretrainConfig(data=args.data, preset=args.preset, n_layer=args.n_layer, block_size=args.block_size,
                          batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                          tokenizer=args.tokenizer, vocab_size=args.vocab_size, device=args.device, dtype=args.dtype,
                          eval_iters=args.eval_iters, seed=args.seed, out=args.out)  # fmt: skip
    base.validate()
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    data = prepare_data(args.data, tokenizer_kind=args.tokenizer, vocab_size=args.vocab_size, log=say)
    vocab = data.tokenizer.vocab_size
    out = Path(args.out)
    points = plan_grid(base, budgets, widths, vocab, out)
    if len(points) < 5:
        raise LlmlabError(f"{len(points)} runs cannot fit a law of 5 numbers", "give at least 5 budgets x widths")
    losses = run_grid(base, points, train, say)
    result = fit_grid(points, losses, args.bootstrap, args.seed)
    (out / "scaling.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_scaling(result, out / "scaling.png")
    _print(result, out)


def _print(result: dict, out: Path) -> None:
    f, ci = result["fit"], result["intervals"]
    print_table([[f"{r['flops']:.2g}", r["width"], f"{r['params']:,}", f"{r['tokens']:,}", f"{r['val_loss']:.4f}"]
                 for r in result["runs"]], ["FLOPs", "width", "parameters", "tokens", "validation loss"])  # fmt: skip
    print(f"L(N, D) = {f['E']:.3f} + {f['A']:.4g} / N^{f['alpha']:.3f} + {f['B']:.4g} / D^{f['beta']:.3f}")
    print(
        f"alpha {f['alpha']:.3f} [{ci['alpha'][0]:.3f}, {ci['alpha'][1]:.3f}], "
        f"beta {f['beta']:.3f} [{ci['beta'][0]:.3f}, {ci['beta'][1]:.3f}] "
        f"(95% bootstrap, {ci['resamples']} resamples)"
    )
    published = ", ".join(f"{k} {v:.1f}" for k, v in result["published_tokens_per_parameter"].items())
    print(f"compute-optimal at {result['budget']:.2g} FLOPs: {result['tokens_per_parameter']:.1f} tokens per parameter "
          f"[{ci['tokens_per_parameter'][0]:.1f}, {ci['tokens_per_parameter'][1]:.1f}]; Chinchilla's rule ~20, "
          f"published fits: {published}")  # fmt: skip
    print(f"results: {out / 'scaling.json'}, plot: {out / 'scaling.png'}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("scaling", help="fit L(N, D) to an IsoFLOP grid of your own pre-training runs")
    p.add_argument("--data", help="text to pre-train on (default: the Python standard library's source)")
    p.add_argument("--budgets", required=True, help="compute budgets in FLOPs, e.g. 1e12,3e12,1e13")
    p.add_argument("--widths", required=True, help="model widths (n_embd) to train at each budget, e.g. 32,64,96")
    p.add_argument("--out", required=True, help="folder for the runs, scaling.json and scaling.png")
    p.add_argument("--preset", default="llama-nano", help="the architecture whose width varies (default llama-nano)")
    p.add_argument("--n-layer", type=int, help="blocks (default: the preset's)")
    p.add_argument("--block-size", type=int, default=128, help="context length of every run")
    p.add_argument("--batch-size", type=int, default=16, help="sequences per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate of every run")
    p.add_argument("--warmup-steps", type=int, default=10, help="warmup steps of every run")
    p.add_argument("--tokenizer", default="bpe", help="bpe or char")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary of a bpe tokenizer")
    p.add_argument("--eval-iters", type=int, default=20, help="validation batches for each run's final loss")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the intervals")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16")
    p.add_argument("--seed", type=int, default=0, help="seed of every run and of the bootstrap")
    p.set_defaults(func=cmd_scaling)
