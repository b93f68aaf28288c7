"""`llmlab reward` (a Bradley-Terry reward model) and `llmlab align` (preference optimisation: DPO, IPO,
SimPO, ORPO), their options generated from RewardConfig and AlignConfig."""

from __future__ import annotations

import argparse

from llmlab.cli.common import CHECKPOINT_HELP, add_dataclass_options


def cmd_align(args: argparse.Namespace) -> None:
    """Align with the options given; with --resume, the options not given again are the original run's."""
    from llmlab.align.config import AlignConfig
    from llmlab.align.recipe import align
    from llmlab.training.checkpointing import with_saved_options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    align(with_saved_options(AlignConfig, given))


def cmd_reward(args: argparse.Namespace) -> None:
    from llmlab.align.reward import RewardConfig, train_reward
    from llmlab.training.checkpointing import with_saved_options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    train_reward(with_saved_options(RewardConfig, given))


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmlab.align.config import AlignConfig
    from llmlab.align.reward import RewardConfig

    r = subparsers.add_parser("reward", help="train a reward model on preference pairs (Bradley-Terry)")
    r.add_argument("base", nargs="?", default=None, help=CHECKPOINT_HELP + " (not needed with --resume)")
    add_dataclass_options(r, RewardConfig, skip=("base",))
    r.set_defaults(func=cmd_reward)

    a = subparsers.add_parser("align", help="align a decoder with preference pairs: DPO, IPO, SimPO or ORPO")
    a.add_argument("base", nargs="?", default=None, help=CHECKPOINT_HELP + " (not needed with --resume)")
    add_dataclass_options(a, AlignConfig, skip=("base",))
    a.set_defaults(func=cmd_align)
