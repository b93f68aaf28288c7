"""`llmlab distill`: its options are DistillConfig's fields (pre-training's and the teacher's)."""

from __future__ import annotations

import argparse

from llmlab.cli.common import add_dataclass_options, exit_status


def cmd_distill(args: argparse.Namespace) -> int:
    """Distil with the options given; with --resume, the options not given again are the original run's."""
    from llmlab.distill.config import DistillConfig
    from llmlab.distill.recipe import distill
    from llmlab.training.checkpointing import with_saved_options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    return exit_status(distill(with_saved_options(DistillConfig, given)))


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmlab.distill.config import DistillConfig

    p = subparsers.add_parser("distill", help="train a small student on a teacher's soft targets (any family)")
    add_dataclass_options(p, DistillConfig)
    p.set_defaults(func=cmd_distill)
