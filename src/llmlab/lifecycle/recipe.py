"""A lifecycle recipe: YAML naming the stages to run, in order, each as an existing llmlab command with
its own options (their names are the command's flags, with `_` or `-`). Checked whole before anything
runs: an unknown key, stage or option is one line that points at it (`stages[2].finetune.lora_rank`)
and lists what is allowed.

    name: sentiment
    scope: {task: sentiment, metric: "accuracy (rank)", budget_minutes: 10}
    stages:
      - pretrain: {preset: llama-micro, max_time: 240}
      - evaluate: {shots: "0,3"}
      - finetune: {data: "task:sentiment", method: lora, max_time: 90}
      - evaluate: {shots: "0"}
      - quantize: {to: int8}
      - serve: {prompts: ["A gripping, funny film."]}
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llmlab.errors import LlmlabError
from llmlab.lifecycle.select import SELECT_OPTIONS, check_select_options

BUILTIN = Path(__file__).with_name("recipes")
TOP_KEYS = ("name", "description", "scope", "stages")
SCOPE_KEYS = ("task", "metric", "budget_minutes", "data", "base")  # base: a checkpoint to start from
# stage kind -> the llmlab command it runs (`data clean` for curate); select and serve are run by the lifecycle
COMMANDS = {"select": (), "curate": ("data", "clean"), "pretrain": ("pretrain",), "evaluate": ("evaluate",),
            "finetune": ("finetune",), "align": ("align",), "distill": ("distill",), "quantize": ("quantize",),
            "prune": ("prune",), "serve": ("serve",)}  # fmt: skip
MAKES_MODEL = ("pretrain", "finetune", "align", "distill", "quantize", "prune")  # the next stages work on its output
SERVE_OPTIONS = ("prompts", "max_tokens")  # the smoke test's own; the rest are `llmlab serve`'s
CURATE_OPTIONS = ("data",)  # the text to curate (default: the scope's data, else the default corpus)
FIXED = {"out", "resume", "overwrite", "checkpoint", "input", "dir", "port", "host", "help"}  # set by the lifecycle


@dataclass
class Stage:
    kind: str
    options: dict[str, Any]
    index: int

    @property
    def name(self) -> str:
        return f"{self.index + 1:02d}-{self.kind}"


@dataclass
class Recipe:
    name: str
    stages: list[Stage]
    scope: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def builtin_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUILTIN.glob("*.yaml"))}


def load_recipe(source: str, parser: argparse.ArgumentParser) -> Recipe:
    """A recipe file, or a built-in recipe's name (`llmlab lifecycle --list`), checked against `parser`
    (the `llmlab` command's: a stage's options are its command's flags)."""
    path = builtin_recipes().get(source) or Path(source)
    if not path.is_file():
        raise LlmlabError(f"no recipe {source}", f"pass a YAML file or one of: {', '.join(builtin_recipes())}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise LlmlabError(f"{path} is not valid YAML ({' '.join(str(exc).split())})", "fix the file") from None
    return parse_recipe(data, str(path), parser)


def parse_recipe(data: Any, where: str, parser: argparse.ArgumentParser) -> Recipe:
    if not isinstance(data, dict):
        raise LlmlabError(f"{where}: a recipe is a mapping with {', '.join(TOP_KEYS)}", "see llmlab lifecycle --list")
    _known(data, TOP_KEYS, where, "")
    scope = data.get("scope") or {}
    if not isinstance(scope, dict):
        raise LlmlabError(f"{where}: scope must be a mapping", f"give {', '.join(SCOPE_KEYS)}")
    _known(scope, SCOPE_KEYS, where, "scope.")
    stages = data.get("stages")
    if not isinstance(stages, list) or not stages:
        raise LlmlabError(f"{where}: stages must be a non-empty list", "e.g. stages: [{pretrain: {max_time: 60}}]")
    parsed = [_stage(item, i, where, parser) for i, item in enumerate(stages)]
    _check_flow(parsed, scope, where)
    _check_paths(parsed, scope, where)
    return Recipe(str(data.get("name") or Path(where).stem), parsed, scope, str(data.get("description") or ""))


def _stage(item: Any, index: int, where: str, parser: argparse.ArgumentParser) -> Stage:
    at = f"stages[{index}]"
    if not isinstance(item, dict) or len(item) != 1:
        raise LlmlabError(f"{where}: {at} must be one mapping {{stage: {{options}}}}", f"stages: {', '.join(COMMANDS)}")
    ((kind, options),) = item.items()
    if kind not in COMMANDS:
        raise LlmlabError(f"{where}: {at}: unknown stage {kind!r}", f"use one of {', '.join(COMMANDS)}")
    options = options or {}
    if not isinstance(options, dict):
        raise LlmlabError(f"{where}: {at}.{kind} must be a mapping of options", "e.g. {max_time: 60}")
    options = {str(k).replace("-", "_"): v for k, v in options.items()}
    if kind == "select":  # the lifecycle's own stage (select.py), not a command
        _known(options, SELECT_OPTIONS, where, f"{at}.{kind}.")
        check_select_options(options, f"{where}: {at}.{kind}")
        return Stage(kind, options, index)
    allowed = command_options(kind, parser)
    _known(options, allowed, where, f"{at}.{kind}.")
    _check_values(kind, options, parser, f"{where}: {at}.{kind}")
    return Stage(kind, options, index)


# where the lifecycle puts the model and the output folder on each command's line, for the dry parse
PLACEHOLDERS = {"curate": ["INPUT", "--out", "OUT"], "pretrain": ["--out", "OUT"],
                "evaluate": ["MODEL", "--out", "OUT"], "finetune": ["MODEL", "--out", "OUT"],
                "align": ["MODEL", "--out", "OUT"],
                "distill": ["--teacher", "MODEL", "--out", "OUT"], "quantize": ["MODEL", "OUT"],
                "prune": ["MODEL", "OUT"], "serve": ["MODEL"]}  # fmt: skip


def _check_values(kind: str, options: dict[str, Any], parser: argparse.ArgumentParser, at: str) -> None:
    """Parse the stage's command line now, as its command will, so a bad value (max_time: soon) is refused
    before any stage runs, not hours later."""
    import contextlib
    import io

    own = set(SERVE_OPTIONS if kind == "serve" else CURATE_OPTIONS if kind == "curate" else ())
    argv = [*COMMANDS[kind], *PLACEHOLDERS[kind], *flags({k: v for k, v in options.items() if k not in own})]
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            parser.parse_args(argv)
    except SystemExit:
        reason = said.getvalue().strip().splitlines()[-1].split("error: ", 1)[-1] if said.getvalue() else "invalid"
        raise LlmlabError(f"{at}: {reason}", "fix the value in the recipe") from None


def _check_select(stage: Stage, stages: list[Stage], where: str) -> None:
    """A select stage chooses the preset of the pretrain stage after it: one must follow, train a decoder
    from scratch, leave the preset to it, and give it a time to plan for."""
    at = f"{where}: stages[{stage.index}].select"
    pretrain = next((s for s in stages[stage.index + 1 :] if s.kind == "pretrain"), None)
    if pretrain is None:
        raise LlmlabError(f"{at} chooses what a pretrain stage trains, and none follows it",
                          "put a pretrain stage after it, or remove it")  # fmt: skip
    chosen = [k for k in ("preset", "init") if pretrain.options.get(k)]
    if chosen or pretrain.options.get("family", "decoder") != "decoder":
        what = f"sets {chosen[0]}" if chosen else "trains another family"
        raise LlmlabError(f"{at}: the pretrain stage after it (stages[{pretrain.index}]) {what}, so nothing is "
                          "left to select", "remove the select stage or that option")  # fmt: skip
    if not stage.options.get("seconds") and not pretrain.options.get("max_time"):
        raise LlmlabError(f"{at} has no time to plan for", "give the pretrain stage a max_time, or select seconds")


def _check_flow(stages: list[Stage], scope: dict, where: str) -> None:
    """Every stage that works on a model has one: from an earlier stage, or the scope's base checkpoint; a
    select stage has a pretrain stage after it to choose for."""
    has_model = bool(scope.get("base"))
    for stage in stages:
        if stage.kind == "select":
            _check_select(stage, stages, where)
        if stage.kind not in ("select", "curate", "pretrain") and not has_model:
            raise LlmlabError(f"{where}: stages[{stage.index}].{stage.kind} has no model to work on",
                              "put a pretrain stage first, or start from one: scope: {base: CKPT}")  # fmt: skip
        has_model = has_model or stage.kind in MAKES_MODEL


PATH_KEYS = ("base", "data", "val_data", "prompts", "val_prompts", "task", "demonstrations", "perplexity", "init",
             "teacher", "student", "calibration")  # fmt: skip
FILE_ENDINGS = (".txt", ".jsonl", ".json", ".csv", ".parquet", ".yaml", ".yml", ".md", ".safetensors")


def _check_paths(stages: list[Stage], scope: dict, where: str) -> None:
    """A file or folder the recipe names that is not there is refused now, not when its stage comes. Only
    values that are plainly local paths are checked (`./x`, `/x`, `~/x`, or a name with a file ending):
    `task:sentiment`, `hf:org/name`, `python-stdlib` and hub ids are the commands' to resolve."""
    named = [("scope", k, v) for k, v in scope.items()]
    named += [(f"stages[{s.index}].{s.kind}", k, v) for s in stages for k, v in s.options.items()
              if not (s.kind == "serve" and k == "prompts")]  # the smoke test's prompts are text  # fmt: skip
    for at, key, value in named:
        for item in value if isinstance(value, list) else [value]:
            path = _local_path(item) if key in PATH_KEYS else None
            if path is not None and not path.exists():
                raise LlmlabError(f"{where}: {at}.{key}: {item} does not exist", "fix the path in the recipe")


def _local_path(value: Any) -> Path | None:
    if not isinstance(value, str) or value.startswith(("task:", "hf:")):
        return None
    path = Path(value.rsplit(":", 1)[0] if re.fullmatch(r".+:\d+(\.\d+)?", value) else value)
    if not (value.startswith(("/", "./", "../", "~")) or path.suffix in FILE_ENDINGS):
        return None
    try:
        return path.expanduser()
    except RuntimeError:  # ~user of no such user
        return path


def command_options(kind: str, parser: argparse.ArgumentParser) -> tuple[str, ...]:
    """The options a stage may set: its command's flags (as `snake_case`), without those the lifecycle sets."""
    for word in COMMANDS[kind]:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[word]
    names = {a.dest for a in parser._actions} - FIXED
    if kind == "serve":
        names |= set(SERVE_OPTIONS)
    if kind == "curate":
        names |= set(CURATE_OPTIONS)
    return tuple(sorted(names))


def _known(mapping: dict, allowed: tuple[str, ...], where: str, at: str) -> None:
    for key in mapping:
        if key not in allowed:
            raise LlmlabError(f"{where}: {at}{key}: unknown key", f"allowed: {', '.join(allowed)}")


def flags(options: dict[str, Any]) -> list[str]:
    """Options as command-line flags: True a bare flag, False nothing, a list one flag per item."""
    args: list[str] = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, list):
            for item in value:
                args += [flag, str(item)]
        else:
            args += [flag, str(value)]
    return args
