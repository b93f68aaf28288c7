"""`llmlab data clean`: curate pre-training text (dedup, quality, language, PII, toxicity, decontamination)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from llmlab.cli.common import print_table


def cmd_clean(args: argparse.Namespace) -> None:
    from llmlab.curate.config import load_config
    from llmlab.curate.pipeline import CurateJob, curate
    from llmlab.errors import LlmlabError
    from llmlab.progress import ProgressLine

    if args.print_config:
        print(config_yaml(load_config(args.config)), end="")
        return
    if args.input is None or args.out is None:
        raise LlmlabError("data clean needs INPUT and --out", "e.g. llmlab data clean corpus/ --out curated")
    if args.workers < 1 or args.shard_docs < 1:
        raise LlmlabError("--workers and --shard-docs must be >= 1", "pass e.g. --workers 2 --shard-docs 1000")
    data = None if args.input == "python-stdlib" else args.input
    job = CurateJob(data, Path(args.out), load_config(args.config), args.glob, args.text_field, args.shard_docs,
                    args.workers, args.overwrite, args.tokenizer)  # fmt: skip
    line = ProgressLine()
    report = curate(job, line.update)
    line.message("")
    if args.json:
        print(json.dumps(report))
        return
    _print_summary(report, args.out)


def _print_summary(report: dict, out: str) -> None:
    stages = report["stages"]
    rows = [[name, f"{c['docs_in']:,}", f"{c['docs_out']:,}", f"{c['docs_in'] - c['docs_out']:,}", f"{c['chars_in']:,}",
             f"{c['chars_out']:,}"] for name, c in stages.items()]  # fmt: skip
    print_table(rows, ["stage", "docs in", "docs out", "removed", "chars in", "chars out"])
    for name, c in stages.items():
        changes = {**c["removed"], **{f"edited: {k}": v for k, v in c["edits"].items()}}
        if changes:
            print(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(changes.items(), key=lambda kv: -kv[1])))
    for name, found in report.get("contamination", {}).items():
        print(f"contamination: {found['documents']:,} documents share {found['ngrams']:,} n-grams with {name}")
    for name, why in report.get("decontamination", {}).get("unavailable", {}).items():
        print(f"decontamination: {name} not checked ({why})")
    if "tokens" in report:
        tokens = report["tokens"]
        print(f"tokens ({tokens['tokenizer']}): {tokens['in']:,} in, {tokens['out']:,} out")
    print(f"curated data in {os.path.join(out, 'data')}; report {os.path.join(out, 'report.md')}")


def config_yaml(cfg) -> str:
    """The config as YAML, each key with its help as a comment: the pipeline documenting itself."""
    lines: list[str] = []
    _yaml_lines(cfg, 0, lines)
    return "\n".join(lines) + "\n"


def _yaml_lines(obj, depth: int, lines: list[str]) -> None:
    from llmlab.options import help_of

    pad = "  " * depth
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:  # {help_of(f)}")
            _yaml_lines(value, depth + 1, lines)
        else:
            lines.append(f"{pad}{f.name}: {json.dumps(value)}  # {help_of(f)}")


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="curate pre-training text before it is tokenized")
    commands = data.add_subparsers(dest="data_command", required=True)
    clean = commands.add_parser("clean", help="dedup, quality and language filters, PII, toxicity, decontamination")
    clean.add_argument("input", nargs="?", help="a text file, folder, JSONL/Parquet file, hf:ORG/NAME, or "
                       "python-stdlib (the default corpus)")  # fmt: skip
    clean.add_argument("--out", help="the curated folder: data/part-*.jsonl, curation.json, report.md, clusters")
    clean.add_argument("--config", help="a YAML file overriding any stage's settings (see --print-config)")
    clean.add_argument("--print-config", action="store_true", help="print the settings with their reasons, exit")
    clean.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes judging text")
    clean.add_argument("--shard-docs", type=int, default=1000, help="documents per shard (the unit of resuming)")
    clean.add_argument("--glob", default="**/*", help="files to read under a folder")
    clean.add_argument("--text-field", default="text", help="the text field of JSONL/Parquet records")
    clean.add_argument("--tokenizer", help="count tokens in and out with this checkpoint's tokenizer (for plan "
                       "compute --tokens-from)")  # fmt: skip
    clean.add_argument("--overwrite", action="store_true", help="start again when --out holds another run")
    clean.add_argument("--json", action="store_true", help="print the report as JSON")
    clean.set_defaults(func=cmd_clean)
