"""`llmlab finetune` (options generated from FinetuneConfig) and `llmlab merge` (an adapter added into
its base, written as a plain checkpoint)."""

from __future__ import annotations

import argparse

from llmlab.cli.common import CHECKPOINT_HELP, add_dataclass_options, exit_status


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune with the options given; with --resume, the options not given again are the original run's."""
    from llmlab.finetune.config import FinetuneConfig
    from llmlab.finetune.recipe import finetune
    from llmlab.training.checkpointing import with_saved_options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    return exit_status(finetune(with_saved_options(FinetuneConfig, given)))


def cmd_merge(args: argparse.Namespace) -> None:
    from llmlab.checkpoint.card import record_derived
    from llmlab.checkpoint.folder import require_new_folder, save_checkpoint
    from llmlab.load import merged_with_adapter

    out = require_new_folder(args.out)
    merged = merged_with_adapter(args.adapter, args.base)
    save_checkpoint(out, merged.model, merged.tokenizer, merged.generation)
    record_derived(out, args.adapter, "merge", "the adapter added into its base's weights")
    print(f"{out}: the base with the adapter {args.adapter} merged in (a plain checkpoint every command takes)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmlab.finetune.config import FinetuneConfig

    help_text = "instruction-tune a decoder or encoder-decoder model: full, LoRA or QLoRA"
    f = subparsers.add_parser("finetune", help=help_text)
    f.add_argument("base", nargs="?", default=None, help=CHECKPOINT_HELP + " (not needed with --resume)")
    add_dataclass_options(f, FinetuneConfig, skip=("base",))
    f.set_defaults(func=cmd_finetune)

    m = subparsers.add_parser("merge", help="add an adapter into its base's weights and save a plain checkpoint")
    m.add_argument("adapter", help="an adapter folder from llmlab finetune --method lora or qlora")
    m.add_argument("out", help="the checkpoint folder to write")
    m.add_argument("--base", help="the base, if it has moved since training (its weights must be the same)")
    m.set_defaults(func=cmd_merge)
