"""ReAct (reason, act, observe) as a prompt pattern on the tool-call machinery: the assistant's turn is a
transcript of steps, each a constrained `Thought: ...` line followed by either `Action: {call}` (run, its
result appended as `Observation: ...`) or `Final Answer: ...`. The last allowed step must answer."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator

from llmlab.chat.session import ChatSession
from llmlab.errors import LlmlabError
from llmlab.generation.constraints import Grammar
from llmlab.tools.calls import ToolCall, call_schema
from llmlab.tools.execute import run_call
from llmlab.tools.functions import Tool
from llmlab.tools.loop import ToolEvent

THOUGHT, ACTION, OBSERVATION, FINAL = "Thought: ", "Action: ", "Observation: ", "Final Answer: "
PREAMBLE = ("Answer in steps. Each step is one line starting with 'Thought: ', then either a line 'Action: ' "
            'with a JSON call {"name": TOOL, "arguments": {...}} of one of these tools, after which an '
            "'Observation: ' line brings its result, or 'Final Answer: ' with the answer.\nTools:\n")  # fmt: skip


def react_grammar(tools: list[Tool], may_act: bool) -> Grammar:
    """One step: a thought line, then an action (a valid call) or, if `may_act` is False, the final answer."""
    thought = f'thought: "{THOUGHT}" /[^\\n]{{1,200}}/ "\\n"\n'
    final = f'final: "{FINAL}" /[^\\n]{{1,400}}/\n'
    if not may_act:
        return Grammar.lark(f"start: thought final\n{thought}{final}", "the ReAct answer step")
    action = f'action: "{ACTION}" body "\\n"\nbody: %json {json.dumps(call_schema(tools))}\n'
    return Grammar.lark(f"start: thought (action | final)\n{thought}{final}{action}", "the ReAct step grammar")


class ReactChat:
    """`send(text)` yields ToolEvents (kind "thought", "call", "result", then "answer"); the whole transcript
    becomes the assistant's turn in the session's history."""

    def __init__(self, session: ChatSession, tools: list[Tool], max_steps: int = 4, timeout: float = 10.0) -> None:
        if not tools or max_steps < 1 or timeout <= 0:
            got = f"{len(tools)} tools, {max_steps} steps, {timeout:g} s"
            raise LlmlabError(f"ReAct needs a tool, a step and a timeout > 0 (got {got})",
                              "pass --tool, --max-tool-steps >= 1, --tool-timeout > 0")  # fmt: skip
        self.session, self.tools, self.max_steps, self.timeout = session, tools, max_steps, timeout
        self.step_grammar, self.answer_grammar = react_grammar(tools, True), react_grammar(tools, False)
        session.generator.bind(self.step_grammar)
        specs = "\n".join(json.dumps(t.spec()["function"], ensure_ascii=False) for t in tools)
        session.preamble = PREAMBLE + specs

    def send(self, text: str) -> Iterator[ToolEvent]:
        self.session.history.append({"role": "user", "content": text})
        prompt, transcript = self.session.prompt(), ""
        config = self.session.reply_config()
        for step in range(self.max_steps + 1):
            grammar = self.step_grammar if step < self.max_steps else self.answer_grammar
            seeded = config if config.seed is None else dataclasses.replace(config, seed=config.seed + step)
            (completion,) = self.session.generator.generate([prompt + transcript], seeded, grammar)[0]
            output = completion.text.strip()
            transcript += output + "\n"
            thought, _, rest = output.partition("\n")
            yield ToolEvent("thought", thought.removeprefix(THOUGHT))
            if not rest.startswith(ACTION):  # the final answer, or a step cut by the token limit
                break
            call = _parse_action(rest)
            yield ToolEvent("call", rest, call=call)
            result = run_call(call, self.tools, self.timeout)
            transcript += f"{OBSERVATION}{result.content}\n"
            yield ToolEvent("result", result.content, call=call, result=result)
        answer = transcript.rsplit(FINAL, 1)[1].strip() if FINAL in transcript else ""
        self.session.history.append({"role": "assistant", "content": transcript.strip()})
        yield ToolEvent("answer", answer)


def _parse_action(line: str) -> ToolCall:
    try:
        parsed = json.loads(line.removeprefix(ACTION))
    except json.JSONDecodeError:
        return ToolCall("", {}, raw=line)
    return ToolCall(str(parsed.get("name", "")), parsed.get("arguments") or {}, raw=line)
