"""`llmlab quantize`: a checkpoint's weights to fp16, bf16, int8, int4 or nf4, or a report that measures
size, perplexity and speed for every format."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from llmlab.cli.common import print_table
from llmlab.errors import LlmlabError


def _report(args: argparse.Namespace, out: Path | None = None) -> None:
    """Every format measured on the checkpoint: report.json, report.png and a table (into `out`, else --out,
    else the checkpoint's quantization/)."""
    from llmlab.report.quantization import plot_report, quantize_report, report_json

    rows = quantize_report(args.checkpoint, args.data, log=lambda s: print(s, file=sys.stderr))
    out = Path(out or args.out or Path(args.checkpoint) / "quantization")
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report_json(rows))
    plot_report(rows, out / "report.png")
    header = ["format", "disk MB", "weights MB", "perplexity", "change", "tok/s b1", "tok/s b8", "max layer error"]
    table = [
        [
            r.variant,
            f"{r.disk_mb:.1f}",
            f"{r.weight_memory_mb:.1f}",
            f"{r.perplexity:.3f}",
            f"{100 * r.perplexity_change:+.2f}%",
            f"{r.tokens_per_s_batch1:,.0f}",
            f"{r.tokens_per_s_batch8:,.0f}",
            f"{r.max_layer_error:.2e}",
        ]
        for r in rows
    ]
    print_table(table, header)
    print(f"report: {out / 'report.json'}, chart: {out / 'report.png'}")


def cmd_quantize(args: argparse.Namespace) -> None:
    from llmlab.checkpoint.adapter import is_adapter
    from llmlab.checkpoint.card import record_derived, write_card
    from llmlab.checkpoint.folder import read_quantization, save_checkpoint
    from llmlab.load import load_checkpoint, merged_with_adapter
    from llmlab.model.quantize import QuantizationSpec, quantize_model

    if args.report and args.to is None:
        _report(args)
        return
    if args.out is None or args.to is None:
        raise LlmlabError("quantize needs OUT and --to", "e.g. llmlab quantize runs/main runs/main-int8 --to int8")
    spec = QuantizationSpec(
        format=args.to, scheme=args.scheme, group_size=args.group_size, skip=args.skip or [], embeddings=args.embeddings
    )
    spec.validate()
    if args.adapter or is_adapter(args.checkpoint):  # a model with an adapter: its merged weights
        ckpt = merged_with_adapter(args.adapter or args.checkpoint, args.checkpoint if args.adapter else None)
    else:
        ckpt = load_checkpoint(args.checkpoint)
    if args.report:  # refused before the quantized checkpoint is written, not after
        from llmlab.report.quantization import require_decoder

        require_decoder(ckpt.model.config)
    if read_quantization(ckpt.path):
        raise LlmlabError(f"{args.checkpoint} is already quantized", "quantize the original full-precision checkpoint")
    model = quantize_model(ckpt.model, spec)
    out = save_checkpoint(args.out, model, ckpt.tokenizer, ckpt.generation, quantization=spec.to_dict())
    group = f", groups of {spec.group_size}" if spec.format in ("int4", "nf4") else ""
    method = f"{spec.format} ({spec.scheme}{group}{', embeddings too' if spec.embeddings else ''})"
    record_derived(out, args.adapter or args.checkpoint, "quantization", method, kept_in_16_bit=", ".join(spec.skip))
    before = (ckpt.path / "model.safetensors").stat().st_size
    after = (out / "model.safetensors").stat().st_size
    print(
        f"{out}: {spec.format}{' ' + spec.scheme if spec.format == 'int8' else ''}"
        f"{f', groups of {spec.group_size}' if spec.format == 'int4' else ''}"
        f"{f', blocks of {spec.group_size}' if spec.format == 'nf4' else ''}"
        f"{f' ({len(spec.group_sizes)} layers with smaller groups)' if spec.group_sizes else ''}; "
        f"weights {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB ({before / after:.2f}x smaller)"
    )
    if args.report:  # with --to: the quantized checkpoint, and every format measured beside it (its card shows it)
        _report(args, out / "quantization")
        write_card(out)


def register(subparsers: argparse._SubParsersAction) -> None:
    q = subparsers.add_parser("quantize", help="quantize a checkpoint's weights to fp16, bf16, int8, int4 or nf4")
    q.add_argument("checkpoint")
    q.add_argument("--adapter", help="a LoRA/QLoRA adapter folder: merged into the checkpoint, then quantized")
    q.add_argument("out", nargs="?", help="output folder (with --report alone: where report.json/png go)")
    q.add_argument("--to", choices=["fp16", "bf16", "int8", "int4", "nf4"])
    q.add_argument("--embeddings", action="store_true", help="quantize the token embedding and output head too")
    q.add_argument("--report", action="store_true",
                   help="measure size, perplexity and speed for every format (with --to: into OUT/quantization/, "
                   "beside the quantized checkpoint)")  # fmt: skip
    q.add_argument("--data", help="text for --report's perplexity (default: the checkpoint's training data)")
    q.add_argument("--scheme", default="absmax", choices=["absmax", "zeropoint"], help="int8 scales (int4: zero-point)")
    q.add_argument(
        "--group-size", type=int, help="int4: columns per scale and zero point (default 128); nf4: per absmax (64)"
    )
    q.add_argument(
        "--skip", action="append", help="keep layers matching this pattern (e.g. 'decoder.blocks.0.*') in 16-bit"
    )
    q.set_defaults(func=cmd_quantize)
