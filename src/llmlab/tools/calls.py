"""How a model writes a tool call, and the grammar that makes it write a valid one.

A call is `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the Hermes / Qwen convention many
open models are tuned on). With `tool_choice` "required" (or one named tool) the whole reply is such a
call; with "auto" it is either a call or a plain answer, which may not begin with `<` or whitespace, so
no reply is a call that escaped the grammar; "none" leaves the reply free. The JSON inside is constrained
by a schema that is the union of the tools' schemas, so the name is one of the tools and the arguments
validate, even from a model that was never taught tools.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.generation.constraints import Grammar
from llmlab.tools.functions import Tool

OPEN, CLOSE = "<tool_call>", "</tool_call>"
ANSWER = "/[^<\\s](.|\\n)*/"  # a plain answer: it cannot start like a call, not even after whitespace
CHOICES = ("auto", "required", "none")


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""
    raw: str = field(default="", repr=False)  # the text the model wrote

    def text(self) -> str:
        return f"{OPEN}{json.dumps({'name': self.name, 'arguments': self.arguments})}{CLOSE}"


def call_schema(tools: list[Tool]) -> dict[str, Any]:
    """A call of any one of the tools: its name as a constant, its arguments under its schema."""
    options = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                "required": ["name", "arguments"], "additionalProperties": False} for t in tools]  # fmt: skip
    return {"anyOf": options, "x-guidance": {"whitespace_flexible": False}}


def call_grammar(tools: list[Tool], choice: str | dict = "auto") -> Grammar | None:
    """The reply's grammar for a tool_choice: "auto", "required", "none", or OpenAI's
    {"type": "function", "function": {"name": ...}} naming one tool. None means unconstrained."""
    if not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        tools = [t for t in tools if t.name == name]
        if not tools:
            raise LlmlabError(f"tool_choice names {name!r}, which is not among the tools", "name one of the tools")
        choice = "required"
    if choice not in CHOICES:
        raise LlmlabError(f"tool_choice {choice!r} is not a choice", f"use one of {', '.join(CHOICES)}")
    call = f'call: "{OPEN}" body "{CLOSE}"\nbody: %json {json.dumps(call_schema(tools))}\n'
    start = "start: call\n" if choice == "required" else f"start: answer | call\nanswer: {ANSWER}\n"
    names = ", ".join(t.name for t in tools)
    return Grammar.lark(start + call, f"the tool-call grammar ({choice}: {names})")


def parse_call(text: str, tools: list[Tool]) -> ToolCall | None:
    """The call in a reply, or None for a plain answer. A call whose JSON does not parse comes back with
    an empty name, and one of an unknown tool with that name: `run_call` answers both with an error."""
    stripped = text.strip()
    if not stripped.startswith(OPEN):
        return None
    body = stripped[len(OPEN) :]
    body = body[: body.rfind(CLOSE)] if CLOSE in body else body
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError:
        return ToolCall("", {}, raw=text)
    if not isinstance(parsed, dict):
        return ToolCall("", {}, raw=text)
    arguments = parsed.get("arguments")
    return ToolCall(str(parsed.get("name", "")), arguments if isinstance(arguments, dict) else {}, raw=text)
