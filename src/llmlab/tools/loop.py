"""A conversation turn with tools: the model answers or calls a tool; llmlab runs the call, adds the result
as a `tool` message and lets the model go on, until it answers or the step limit is reached (then it must
answer, without a call). Every failure of a tool reaches the model as an error in the tool message."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from llmlab.chat.session import ChatSession
from llmlab.errors import LlmlabError
from llmlab.generation.constraints import Grammar
from llmlab.tools.calls import ANSWER, CLOSE, OPEN, ToolCall, call_grammar, parse_call
from llmlab.tools.execute import ToolResult, run_call
from llmlab.tools.functions import Tool


@dataclass
class ToolEvent:
    """What happened, for the caller to show: a tool call, its result, or a piece of the answer."""

    kind: str  # "call", "result" or "answer"
    text: str
    call: ToolCall | None = None
    result: ToolResult | None = None


def tools_preamble(tools: list[Tool]) -> str:
    """The system message's part that lists the tools and how to call one (template-independent)."""
    specs = "\n".join(json.dumps(t.spec()["function"], ensure_ascii=False) for t in tools)
    call = f'{OPEN}{{"name": NAME, "arguments": {{...}}}}{CLOSE}'
    return f"You may call these tools:\n{specs}\nTo call one, reply with only {call}; a tool message brings the result."


class ToolChat:
    """A ChatSession with tools. `send(text)` yields ToolEvents: calls and results as they happen, then the
    answer streamed piece by piece."""

    def __init__(self, session: ChatSession, tools: list[Tool], choice: str | dict = "auto", max_steps: int = 4,
                 timeout: float = 10.0) -> None:  # fmt: skip
        if max_steps < 1 or timeout <= 0:
            raise LlmlabError(f"tool steps {max_steps}, timeout {timeout:g} s", "use at least 1 step and a timeout > 0")
        names = [t.name for t in tools]
        if len(set(names)) != len(names):
            raise LlmlabError(f"two tools share a name among {', '.join(names)}", "give each tool its own name")
        self.session, self.tools, self.choice, self.max_steps, self.timeout = session, tools, choice, max_steps, timeout
        self.grammars = {step: call_grammar(tools, choice if step == 0 else "auto") for step in (0, 1)}
        self.answer = Grammar.lark(f"start: {ANSWER}\n", "a plain answer (no tool call)")
        session.generator.bind(self.grammars[0])  # a grammar that cannot compile fails here, before any turn
        session.preamble = tools_preamble(tools) if tools else ""

    def send(self, text: str) -> Iterator[ToolEvent]:
        self.session.history.append({"role": "user", "content": text})
        if self.choice == "none" or not self.tools:
            yield from self._answer(None)
            return
        for step in range(self.max_steps):
            reply = "".join(self.session.respond(self.grammars[min(step, 1)]))
            call = parse_call(reply, self.tools)
            if call is None:  # an answer, already complete: give it whole
                yield ToolEvent("answer", reply)
                return
            call.id = f"call_{len(self.session.history)}"
            yield ToolEvent("call", reply.strip(), call=call)
            result = run_call(call, self.tools, self.timeout)
            self.session.history.append({"role": "tool", "content": result.content})
            yield ToolEvent("result", result.content, call=call, result=result)
        yield from self._answer(self.answer)  # out of steps: the model must answer now

    def _answer(self, grammar: Grammar | None) -> Iterator[ToolEvent]:
        for piece in self.session.respond(grammar):
            yield ToolEvent("answer", piece)
