"""`llmlab card CKPT`: print a checkpoint's model card, refreshed from what its folder records, and set what
only a person can say about it (license, language, intended use)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llmlab.errors import LlmlabError


def cmd_card(args: argparse.Namespace) -> None:
    from llmlab.checkpoint.card import is_card_folder, write_card
    from llmlab.checkpoint.card_text import META
    from llmlab.checkpoint.lineage import write_text_atomic

    folder = Path(args.checkpoint)
    if not is_card_folder(folder):
        raise LlmlabError(f"{folder} is not a checkpoint or adapter folder written by llmlab",
                          "pass one; convert a Hugging Face model with llmlab import first")  # fmt: skip
    given = {"license": args.license, "language": args.language, "intended_use": args.intended_use}
    given = {k: v for k, v in given.items() if v is not None}
    if given:
        meta = _read_meta(folder / META)
        write_text_atomic(folder / META, json.dumps({**meta, **given}, indent=2) + "\n")
    card = write_card(folder)
    print(card.read_text(encoding="utf-8"), end="")


def _read_meta(file: Path) -> dict:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError:
        raise LlmlabError(
            f"{file} is not valid JSON", "fix it by hand or remove it (it holds only card settings)"
        ) from None
    return data if isinstance(data, dict) else {}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("card", help="print a checkpoint's model card (README.md), refreshed; set its license")
    p.add_argument("checkpoint", help="a checkpoint or adapter folder written by llmlab")
    p.add_argument("--license", help="a Hugging Face license id for the front matter, e.g. apache-2.0 or mit")
    p.add_argument(
        "--language", action="append", help="a language of the model's text (ISO 639-1, or code); repeatable"
    )
    p.add_argument("--intended-use", help="a paragraph that replaces the card's default intended-use text")
    p.set_defaults(func=cmd_card)
