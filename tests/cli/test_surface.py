"""The command-line surface is a contract: every (sub)command's flags, positionals, nargs, choices,
defaults, required-ness and action kinds are compared with the committed snapshot `surface.json`, so
a refactoring cannot drop or change an option by accident. Help texts are not part of it.

A deliberate change: rewrite the snapshot and commit it with the change,

    LLMLAB_UPDATE_SURFACE=1 .venv/bin/python -m pytest tests/cli/test_surface.py
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
from pathlib import Path
from typing import Any

from llmlab.cli import build_parser

SNAPSHOT = Path(__file__).with_name("surface.json")
UPDATE = "LLMLAB_UPDATE_SURFACE"
ACTION_KINDS = {
    argparse._StoreAction: "store",
    argparse._StoreTrueAction: "store_true",
    argparse._StoreFalseAction: "store_false",
    argparse._StoreConstAction: "store_const",
    argparse._AppendAction: "append",
    argparse._CountAction: "count",
    argparse._SubParsersAction: "subcommands",
}


def _plain(value: Any) -> Any:
    """A JSON-able form of a default, const or choice (SUPPRESS stays its own marker string)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return repr(value)


def _describe(action: argparse.Action) -> dict[str, Any]:
    kind = ACTION_KINDS.get(type(action), type(action).__name__)
    entry: dict[str, Any] = {"flags": list(action.option_strings)} if action.option_strings else {"name": action.dest}
    entry["action"] = kind
    if kind == "subcommands":
        entry.update(required=action.required, choices=sorted(action.choices))
        return entry
    entry.update(
        nargs=action.nargs,
        choices=_plain(list(action.choices)) if action.choices is not None else None,
        default=_plain(action.default),
        required=action.required,
        type=getattr(action.type, "__name__", None),
    )
    if action.const is not None:
        entry["const"] = _plain(action.const)
    if action.metavar is not None:
        entry["metavar"] = _plain(action.metavar)
    return entry


def surface(parser: argparse.ArgumentParser, name: str = "llmlab") -> dict[str, list[dict[str, Any]]]:
    """{"llmlab plan memory": [positionals in their order, then options by flag], ...}. The order options
    and subcommands are declared in only orders `--help` (as help texts, it is presentation, not surface)."""
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]
    positionals = [a for a in actions if not a.option_strings]
    options = sorted((a for a in actions if a.option_strings), key=lambda a: a.option_strings)
    tree = {name: [_describe(a) for a in positionals + options]}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                tree.update(surface(sub, f"{name} {sub_name}"))
    return tree


def _lines(tree: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per option, prefixed by its command, so a diff names exactly what changed."""
    return [f"{command}: {json.dumps(entry, sort_keys=True)}" for command in sorted(tree) for entry in tree[command]]


def _dump(tree: dict[str, list[dict[str, Any]]]) -> str:
    """JSON with one option per line: readable, and a review diff shows whole options."""
    blocks = []
    for command in sorted(tree):
        entries = ",\n".join(f"    {json.dumps(entry, sort_keys=True)}" for entry in tree[command])
        blocks.append(f"  {json.dumps(command)}: [\n{entries}\n  ]")
    return "{\n" + ",\n".join(blocks) + "\n}\n"


def test_command_line_surface_matches_the_snapshot():
    current = surface(build_parser())
    if os.environ.get(UPDATE) == "1":
        SNAPSHOT.write_text(_dump(current))
        return
    committed = json.loads(SNAPSHOT.read_text())
    if current != committed:
        diff = "\n".join(
            difflib.unified_diff(_lines(committed), _lines(current), "surface.json", "build_parser()", lineterm="", n=0)
        )
        raise AssertionError(
            f"the llmlab command-line surface changed:\n{diff}\n\nIf this is deliberate, rewrite the snapshot with "
            f"`{UPDATE}=1 .venv/bin/python -m pytest tests/cli/test_surface.py` and commit tests/cli/surface.json."
        )


def test_snapshot_file_is_in_its_canonical_form():
    """The file is exactly what the update writes, so a hand edit cannot hide a difference in formatting."""
    assert SNAPSHOT.read_text() == _dump(json.loads(SNAPSHOT.read_text()))


def test_main_gives_the_callers_warning_display_back_when_it_returns(capsys):
    import warnings

    from llmlab.cli import main

    before = warnings.showwarning
    assert main(["plan", "memory", "--params", "1e6"]) == 0
    assert warnings.showwarning is before
