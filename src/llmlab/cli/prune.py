"""`llmlab prune`: zero the least important weights inside the blocks (magnitude or Wanda, unstructured or
2:4), or with --report, perplexity at every sparsity for both methods."""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from llmlab.cli.common import CHECKPOINT_HELP, print_table, read_text
from llmlab.errors import LlmlabError

REPORT_SPARSITIES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _calibration(ckpt, path: str | None, tokens: int):
    """Calibration batches (rows of the context length) from a text file, for wanda's input norms."""
    import torch

    if path is None:
        return None
    ids = ckpt.tokenizer.encode(read_text(path, "--calibration"))[:tokens]
    block = ckpt.model.config.block_size
    if len(ids) < block:
        raise LlmlabError(f"--calibration {path} has {len(ids)} tokens, fewer than one {block}-token row",
                          "give more text")  # fmt: skip
    rows = torch.tensor(ids[: len(ids) // block * block], device=ckpt.model.device).view(-1, block)
    return [rows[i : i + 8] for i in range(0, len(rows), 8)]


def _pruned(ckpt, sparsity: float, method: str, structure: str, calibration):
    from llmlab.prune.prune import input_norms, prune_model

    model = copy.deepcopy(ckpt.model)
    norms = input_norms(model, calibration) if method == "wanda" and calibration else None
    return model, prune_model(model, sparsity, method, structure, norms)


def cmd_prune(args: argparse.Namespace) -> None:
    from llmlab.checkpoint.card import record_derived
    from llmlab.checkpoint.folder import read_quantization, save_checkpoint
    from llmlab.family import family_spec
    from llmlab.load import load_checkpoint
    from llmlab.prune.prune import check_settings

    check_settings(args.sparsity, args.method, args.structure)
    if (args.method == "wanda" or args.report) and not args.calibration:
        raise LlmlabError("wanda (and --report, which measures it) needs calibration text", "pass --calibration FILE")
    ckpt = load_checkpoint(args.checkpoint)
    if read_quantization(ckpt.path):
        raise LlmlabError(f"{args.checkpoint} is quantized", "prune the full-precision checkpoint, then quantize")
    if args.calibration and family_spec(ckpt.model.config).seq2seq:
        raise LlmlabError("wanda's calibration runs decoder and encoder models, not encoder-decoders yet",
                          "use --method magnitude for this model")  # fmt: skip
    calibration = _calibration(ckpt, args.calibration, args.calibration_tokens)
    if args.report:
        return _report(args, ckpt, calibration)
    if args.out is None:
        raise LlmlabError("prune needs OUT", "e.g. llmlab prune runs/main runs/main-50 --sparsity 0.5")
    model, report = _pruned(ckpt, args.sparsity, args.method, args.structure, calibration)
    out = save_checkpoint(args.out, model, ckpt.tokenizer, ckpt.generation)
    record_derived(out, args.checkpoint, "pruning", f"{args.method} {args.structure}, sparsity {args.sparsity:g}",
                   calibration=args.calibration)  # fmt: skip
    if args.structure in ("channels", "heads"):
        shape = (f"feed-forward width {model.config.intermediate_size}" if args.structure == "channels" else
                 f"{model.config.n_head} attention heads ({model.config.n_kv_head} key/value)")  # fmt: skip
        print(f"{out}: {args.method} {args.structure}, {shape}; "
              f"{report.pruned:,} of {report.total:,} parameters removed ({100 * report.sparsity:.1f}%)")  # fmt: skip
        return
    print(f"{out}: {args.method} {args.structure}, {report.pruned:,} of {report.total:,} weights in {report.layers} "
          f"layers zeroed ({100 * report.sparsity:.1f}%)")  # fmt: skip


def _report(args: argparse.Namespace, ckpt, calibration) -> None:
    """Perplexity on --data for each method at each sparsity (table, and report.json under OUT if given)."""
    from llmlab.evaluation.perplexity import text_perplexity

    if args.data is None:
        raise LlmlabError("--report needs --data TEXT to measure perplexity on", "pass a held-out text file")
    text = read_text(args.data, "--data")
    rows, records = [], []
    shrinks = args.structure in ("channels", "heads")
    sparsities = {"unstructured": REPORT_SPARSITIES, "2:4": (0.0, 0.5), "channels": (0.0, 0.25, 0.5, 0.75),
                  "heads": (0.0, 0.25, 0.5, 0.75)}  # fmt: skip
    for sparsity in sparsities[args.structure]:
        row = [f"{sparsity:.0%}"]
        for method in ("magnitude", "wanda"):
            model, _ = _pruned(ckpt, sparsity, method, args.structure, calibration)
            record = {"method": method, "structure": args.structure, "sparsity": sparsity,
                      "perplexity": text_perplexity(model, ckpt.tokenizer, text)[0],
                      "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip
            if shrinks:
                record["decode_tokens_per_s"] = _decode_speed(model, ckpt.tokenizer, text)
            records.append(record)
            row.append(f"{record['perplexity']:.2f}")
            print(f"{method} at {sparsity:.0%}: {record}", file=sys.stderr, flush=True)
        rows.append(row + ([f"{records[-1]['parameters']:,}", f"{records[-1]['decode_tokens_per_s']:.1f}"]
                           if shrinks else []))  # fmt: skip
    extra = ["parameters", "decode tok/s (wanda)"] if shrinks else []
    print_table(rows, ["sparsity", "magnitude", "wanda", *extra])
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "report.json").write_text(json.dumps(records, indent=2))


def _decode_speed(model, tokenizer, text: str) -> float:
    """Greedy tokens/s at batch 1 (64 new tokens, the best of 3), the pruned model as `generate` runs it."""
    import time

    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator

    generator, config = (
        Generator(model, tokenizer, compile="off"),
        GenerationConfig(max_new_tokens=64, min_new_tokens=64, greedy=True),
    )
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        generator.generate([text[:200]], config)
        best = min(best, time.perf_counter() - start)
    return 64 / best


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prune", help="zero the least important weights (magnitude or Wanda; 2:4 too)")
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("out", nargs="?", help="the pruned checkpoint folder (with --report: where report.json goes)")
    p.add_argument("--sparsity", type=float, default=0.5, help="fraction of the blocks' linear weights to zero")
    p.add_argument("--method", default="magnitude", help="magnitude (|W|) or wanda (|W| x input norm, per row)")
    p.add_argument("--structure", default="unstructured",
                   help="unstructured, 2:4 (2 of every 4 inputs), channels (whole FFN channels) or heads "
                   "(whole attention heads; key/value groups under GQA)")  # fmt: skip
    p.add_argument("--calibration", help="text whose activations weigh wanda's scores (required for wanda)")
    p.add_argument("--calibration-tokens", type=int, default=16384, help="tokens of --calibration to read")
    p.add_argument(
        "--report", action="store_true", help="perplexity on --data at 0-70%% (2:4: 0 and 50%%), both methods"
    )
    p.add_argument("--data", help="--report: held-out text for perplexity")
    p.set_defaults(func=cmd_prune)
