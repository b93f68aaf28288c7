"""What several command groups share, written once: options generated from a config dataclass (its
fields carry their help, see `llmlab.options`), the inspection commands' common arguments, tables,
escaped text, reading a user's file with a one-line error, loading a checkpoint for inspection.

Nothing here imports torch at module level: `llmlab --help` builds every parser."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.options import help_of

CHECKPOINT_HELP = "run folder from pretrain or finetune (an adapter folder too), or a Hugging Face folder or hub id"
DEVICE_HELP = "auto, cpu, cuda, cuda:N or mps"
ADAPTER_HELP = "an adapter folder from llmlab finetune (LoRA/QLoRA) to put on the checkpoint"


def _base_type(annotation: Any) -> type:
    """`int | None` -> int, `list[str]` -> list."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, skip: Collection[str] = ()) -> None:
    """One --option per field, its help from the field's declaration (`llmlab.options.option`), so the
    CLI and the Python API cannot drift apart. Defaults are suppressed so a command can tell what the
    user actually gave (a resumed run keeps the options it is not given again)."""
    hints = typing.get_type_hints(cls)  # annotations are postponed (PEP 563)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = help_of(f) + (f" (default {default})" if default not in (None, False, []) else "")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif kind is list:
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


def add_inspection_parser(
    subparsers: argparse._SubParsersAction, name: str, help_text: str, optional_checkpoint: bool = False
) -> argparse.ArgumentParser:
    """A command that reads one checkpoint on --device (default cpu) and can answer in JSON."""
    parser = subparsers.add_parser(name, help=help_text)
    parser.add_argument("checkpoint", nargs="?" if optional_checkpoint else None, help=CHECKPOINT_HELP)
    parser.add_argument("--adapter", help=ADAPTER_HELP)
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def unescape(text: str) -> str:
    """Let one line of shell or file text hold newlines and tabs, written as \\n and \\t."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def escape(text: str) -> str:
    """One table cell per line: newlines and tabs shown as \\n and \\t (the inverse of `unescape`)."""
    return text.replace("\n", "\\n").replace("\t", "\\t")


def read_text(path: str, option: str = "", fix: str = "pass a UTF-8 text file") -> str:
    """A user's UTF-8 file, or one line saying which option named it and why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        named = f"{option} {path}" if option else str(path)
        raise LlmlabError(f"cannot read {named}: {exc}", fix) from None


def read_lines(path: str, option: str = "", fix: str = "pass a UTF-8 text file") -> list[str]:
    """The non-blank lines of a user's UTF-8 file (one prompt or text a line)."""
    return [line for line in read_text(path, option, fix).splitlines() if line.strip()]


def print_table(rows: list[list[Any]], header: list[str] | None = None, right: bool = True) -> None:
    """A rich table; the first column left-aligned, the rest right-aligned (numbers) unless right=False."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=header is not None, box=None if header is None else box.SIMPLE_HEAD)
    for i, name in enumerate(header or [""] * len(rows[0])):
        table.add_column(name, justify="right" if i and right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)


def load_for_inspection(checkpoint: str, device: str, adapter: str | None = None):
    """A checkpoint (with its adapter, if given) in fp32 (exact probabilities and weights) on `device`."""
    import torch

    from llmlab.device import resolve_device
    from llmlab.load import load_checkpoint

    return load_checkpoint(checkpoint, device=resolve_device(device), dtype=torch.float32, adapter=adapter)


INTERRUPTED = 130  # the shell's status for a process stopped by Ctrl-C (128 + SIGINT)


def exit_status(result) -> int:
    """A training command's status: 130 when Ctrl-C stopped it (its checkpoint saved, resumable), so a
    script or a lifecycle does not go on as if it had finished; 0 otherwise."""
    return INTERRUPTED if getattr(result, "interrupted", False) else 0
