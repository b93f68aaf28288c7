"""`llmlab pretrain`: its options are PretrainConfig's fields, generated with their help."""

from __future__ import annotations

import argparse

from llmlab.cli.common import add_dataclass_options, exit_status


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Train with the options given; with --resume, the options not given again are the original run's."""
    from llmlab.pretrain.config import PretrainConfig
    from llmlab.pretrain.recipe import train
    from llmlab.training.checkpointing import with_saved_options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    return exit_status(train(with_saved_options(PretrainConfig, given)))


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmlab.pretrain.config import PretrainConfig

    p = subparsers.add_parser("pretrain", help="pre-train a model of any family on your text (clm, mlm, span, seq2seq)")
    add_dataclass_options(p, PretrainConfig)
    p.set_defaults(func=cmd_pretrain)
