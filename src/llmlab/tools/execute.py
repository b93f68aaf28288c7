"""Running a tool call: arguments checked against the tool's schema, the function run with a time limit,
and whatever happens (a result, an exception, a timeout, an unknown tool) turned into the text of a `tool`
message, so the conversation goes on and the model can read what went wrong."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from llmlab.tools.calls import ToolCall
from llmlab.tools.functions import Tool


@dataclass
class ToolResult:
    content: str  # the `tool` message's text: the result as JSON, or {"error": ...}
    error: bool = False


def run_call(call: ToolCall, tools: list[Tool], timeout: float = 10.0) -> ToolResult:
    """Run one call. A hung function is abandoned after `timeout` seconds (its thread is a daemon and is
    left to finish alone: Python cannot stop a thread), and the model is told it timed out."""
    tool = next((t for t in tools if t.name == call.name), None)
    if tool is None:
        known = ", ".join(t.name for t in tools)
        return _error(f"no tool named {call.name!r}" if call.name else "the call is not valid JSON", f"tools: {known}")
    problem = _invalid(call.arguments, tool.parameters)
    if problem:
        return _error(f"bad arguments for {tool.name}: {problem}")
    if tool.function is None:
        return _error(f"{tool.name} has no function to run here")
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = tool.function(**call.arguments)
        except BaseException as exc:  # noqa: BLE001 - a tool's failure is the model's to read, not ours to raise
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=target, name=f"tool-{tool.name}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return _error(f"{tool.name} did not answer within {timeout:g} s")
    if "error" in outcome:
        return _error(f"{tool.name} raised {outcome['error']}")
    value = outcome.get("value")
    return ToolResult(value if isinstance(value, str) else json.dumps(value, default=str, ensure_ascii=False))


def _invalid(arguments: dict[str, Any], schema: dict[str, Any]) -> str:
    try:
        import jsonschema
    except ImportError:
        return ""
    error = jsonschema.exceptions.best_match(jsonschema.validators.validator_for(schema)(schema).iter_errors(arguments))
    return "" if error is None else f"{'/'.join(map(str, error.path)) or 'arguments'}: {error.message}"


def _error(message: str, hint: str = "") -> ToolResult:
    return ToolResult(json.dumps({"error": message + (f" ({hint})" if hint else "")}, ensure_ascii=False), True)
