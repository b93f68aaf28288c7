"""The `llmlab` command (`llmlab = "llmlab.cli:main"`, and `python -m llmlab`).

One module per command group, each with `register(subparsers) -> None` that adds its subcommands and
binds each to a `cmd_*(args)` function: the function parses its arguments, calls the library (where
validation and results live, so Python users get the same checks), and prints. Options that mirror a
config dataclass are generated from its fields and their help (`common.add_dataclass_options`).

A new stage (finetune, align, serve, rag) adds one file and one entry:
  1. `src/llmlab/cli/finetune.py` with `register(subparsers)` and its `cmd_finetune(args)`; heavy
     imports (torch, transformers) inside the command function, so `llmlab --help` stays fast;
  2. `finetune` in `COMMAND_GROUPS` below;
then rewrite the surface snapshot on purpose:
`LLMLAB_UPDATE_SURFACE=1 .venv/bin/python -m pytest tests/cli/test_surface.py`.

Errors: an `LlmlabError` prints `error: what — fix` on one line and exits 2 (under torchrun the line
names the rank); Ctrl-C exits 130; a closed output pipe (`| head`) exits 0; warnings print as one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from llmlab.cli import (
    align,
    card,
    chat,
    data,
    distill,
    evaluate,
    finetune,
    generate,
    hf,
    index,
    inspect,
    lifecycle,
    plan,
    pretrain,
    prune,
    quantize,
    rag,
    report,
    scaling,
    serve,
    tasks,
)
from llmlab.errors import LlmlabError

# In the order `llmlab --help` lists them: the lifecycle, then interchange and planning.
COMMAND_GROUPS = (lifecycle, data, pretrain, finetune, align, distill, generate, chat, serve, inspect, tasks, index,
                  rag, evaluate, quantize, prune, hf, card, report, scaling, plan)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree: each command group registers its own subcommands."""
    parser = argparse.ArgumentParser(prog="llmlab", description="Train, sample and study language models.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(subparsers)
    # the lifecycle runs the other commands: it is handed this entry point rather than importing it back
    subparsers.choices["lifecycle"].set_defaults(entry=main, parser=parser)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning is one line for a user, not a source location."""
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; the exit status: 0, 2 for a user error, 130 when interrupted."""
    import warnings

    args = build_parser().parse_args(argv)
    shown_before, warnings.showwarning = warnings.showwarning, _show_warning
    try:
        status = args.func(args)  # None, or a command's own status (a training run stopped by Ctrl-C: 130)
    except LlmlabError as exc:
        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""  # under torchrun
        print(f"error: {rank}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    finally:  # called in-process (tests, notebooks), the caller's warnings show as before
        warnings.showwarning = shown_before
    return status or 0


__all__ = ["COMMAND_GROUPS", "build_parser", "main"]
