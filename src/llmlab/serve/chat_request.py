"""What a chat request asks beyond sampling: the messages as the chat template reads them (earlier tool
calls written as the model writes them, the tools described in the system message, as `ToolChat` does
offline) and the grammar its reply must match (`response_format`, or a tool call under `tool_choice`)."""

from __future__ import annotations

import json
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.generation.constraints import Grammar
from llmlab.serve.api import ChatRequest
from llmlab.tools.calls import ToolCall, call_grammar
from llmlab.tools.functions import Tool, tool_from_spec
from llmlab.tools.loop import tools_preamble


def request_tools(body: ChatRequest) -> list[Tool]:
    tools = [tool_from_spec(spec) for spec in body.tools or []]
    names = [t.name for t in tools]
    if len(set(names)) != len(names):
        raise LlmlabError(f"two tools share a name among {', '.join(names)}", "give each tool its own name")
    return tools


def template_messages(body: ChatRequest, tools: list[Tool]) -> list[dict[str, str]]:
    """Role and content for every message; an assistant's tool calls become its content."""
    messages = []
    for message in body.messages:
        content = message.content or ""
        if message.tool_calls:
            content += "".join(ToolCall(c.function.name, _arguments(c.function.arguments)).text()
                               for c in message.tool_calls)  # fmt: skip
        messages.append({"role": message.role, "content": content})
    if tools and body.tool_choice != "none":
        preamble = tools_preamble(tools)
        if messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": f"{messages[0]['content']}\n\n{preamble}"}
        else:
            messages.insert(0, {"role": "system", "content": preamble})
    return messages


def request_grammar(body: ChatRequest, tools: list[Tool]) -> Grammar | None:
    """The reply's grammar: a tool call (or an answer) when tools are given, else the response format."""
    kind = body.response_format.type if body.response_format else "text"
    if tools and kind != "text":
        raise LlmlabError("response_format together with tools is not supported", "send one or the other")
    if tools:
        return call_grammar(tools, body.tool_choice or "auto")
    if body.tool_choice not in (None, "none", "auto"):
        raise LlmlabError(f"tool_choice {body.tool_choice!r} without tools", "send the tools it refers to")
    if kind == "json_object":
        return Grammar.json_schema({"type": "object"}, "response_format json_object")
    if kind == "json_schema":
        return Grammar.json_schema(body.response_format.json_schema.schema_, "response_format.json_schema.schema")
    return None


def _arguments(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise LlmlabError(f"tool call arguments {text[:60]!r} are not JSON", "send a JSON object") from None
    if not isinstance(value, dict):
        raise LlmlabError(f"tool call arguments {text[:60]!r} are not a JSON object", "send a JSON object")
    return value
