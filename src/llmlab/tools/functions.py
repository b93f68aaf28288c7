"""Tools: a name, a description and a JSON schema for the arguments (OpenAI's function format), and the
Python function that runs. A function's schema is read from its signature and type hints, so
`def flight_status(flight: str) -> dict` is a tool as it stands."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # OpenAI's rule for function names
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object"}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of an object: the arguments by name
    function: Callable[..., Any] | None = None  # None: described only (a server's client runs it)

    def spec(self) -> dict[str, Any]:
        """OpenAI's `tools` entry."""
        function = {"name": self.name, "description": self.description, "parameters": self.parameters}
        return {"type": "function", "function": function}


def tool_from_function(function: Callable[..., Any], name: str | None = None) -> Tool:
    """A tool from a Python function: parameters from its signature (a default makes one optional), the
    description from its docstring's first paragraph."""
    name = name or function.__name__
    if not NAME.match(name):
        raise LlmlabError(f"tool name {name!r} is not allowed", "use letters, digits, _ and - (at most 64)")
    hints = typing.get_type_hints(function)
    properties, required = {}, []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        properties[parameter.name] = _schema(hints.get(parameter.name, Any), f"{name}({parameter.name})")
        if parameter.default is inspect.Parameter.empty:
            required.append(parameter.name)
    doc = inspect.getdoc(function) or ""
    description = doc.split("\n\n")[0].replace("\n", " ").strip()
    parameters = {"type": "object", "properties": properties, "required": required, "additionalProperties": False}
    return Tool(name, description, parameters, function)


def tool_from_spec(spec: dict[str, Any], function: Callable[..., Any] | None = None) -> Tool:
    """A tool from OpenAI's `{"type": "function", "function": {...}}` entry (checked)."""
    body = spec.get("function") if isinstance(spec, dict) and spec.get("type") == "function" else None
    if not isinstance(body, dict) or not isinstance(body.get("name"), str) or not NAME.match(body["name"]):
        raise LlmlabError(f"bad tool {str(spec)[:80]}", 'give {"type": "function", "function": {"name": ...}}')
    parameters = body.get("parameters") or {"type": "object", "properties": {}}
    if not isinstance(parameters, dict) or parameters.get("type", "object") != "object":
        raise LlmlabError(f"tool {body['name']}: parameters must be a JSON schema of an object", "fix its schema")
    return Tool(body["name"], str(body.get("description") or ""), parameters, function)


def load_tool(spec: str) -> Tool:
    """`module:function` or `path/to/file.py:function` as a tool (one clear error if it cannot be had)."""
    where, _, attribute = spec.rpartition(":")
    if not where or not attribute:
        raise LlmlabError(f"--tool {spec!r} is not MODULE:FUNCTION", "e.g. --tool examples/flights.py:flight_status")
    module = _module(where, spec)
    function = getattr(module, attribute, None)
    if not callable(function):
        raise LlmlabError(f"--tool {spec}: {where} has no function {attribute!r}", "name a function it defines")
    return tool_from_function(function)


def _module(where: str, spec: str) -> types.ModuleType:
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise LlmlabError(f"--tool {spec}: no file {where}", "give the path of a Python file")
            module_spec = importlib.util.spec_from_file_location(f"llmlab_tool_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module  # dataclasses and pickling look modules up by name
            module_spec.loader.exec_module(module)
            return module
        return importlib.import_module(where)
    except LlmlabError:
        raise
    except Exception as exc:  # the user's module failed to import: say how, in one line
        raise LlmlabError(f"--tool {spec}: importing {where} failed ({type(exc).__name__}: {exc})",
                          "fix the module or the path") from None  # fmt: skip


def _schema(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema of one annotated parameter."""
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple):
        return {"type": "array", "items": _schema(args[0], where) if args else {}}
    if origin is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _schema(options[0], where) if len(options) == 1 else {"anyOf": [_schema(a, where) for a in options]}
    raise LlmlabError(f"tool parameter {where} has type {hint!r}, which has no JSON schema here",
                      "annotate it with str, int, float, bool, list[...], dict or Literal[...]")  # fmt: skip
