"""`llmlab lifecycle RECIPE --out DIR`: the stages a recipe names, each the existing command, resumable and
skipped when unchanged, ending with `llmlab report`; `--list` shows the built-in recipes."""

from __future__ import annotations

import argparse
import sys

from llmlab.errors import LlmlabError


def cmd_lifecycle(args: argparse.Namespace) -> None:
    from llmlab.lifecycle.recipe import builtin_recipes, load_recipe
    from llmlab.lifecycle.run import run_lifecycle

    parser, main = args.parser, args.entry  # set by llmlab.cli.build_parser
    if args.list:
        for name, path in builtin_recipes().items():
            recipe = load_recipe(str(path), parser)
            print(f"{name}: {recipe.description} ({' -> '.join(s.kind for s in recipe.stages)})")
        return
    if not args.recipe or not args.out:
        raise LlmlabError("lifecycle needs a RECIPE and --out", "e.g. llmlab lifecycle quick --out runs/lifecycle")
    recipe = load_recipe(args.recipe, parser)
    report = run_lifecycle(recipe, args.out, main, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(f"lifecycle {recipe.name}: every stage done; report: {report}")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("lifecycle", help="run a recipe's stages end to end (resumable), then the report")
    p.add_argument("recipe", nargs="?", help="a recipe YAML file or a built-in recipe's name (--list)")
    p.add_argument("--out", help="the folder every stage writes into (a rerun skips or resumes stages)")
    p.add_argument("--list", action="store_true", help="print the built-in recipes and exit")
    p.set_defaults(func=cmd_lifecycle)
