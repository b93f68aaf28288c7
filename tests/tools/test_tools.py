"""Tool calls: schemas from Python signatures, calls that are always valid calls of a registered tool (even
from an untrained model), every failure of a tool fed back as an error message, and the chat command."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path
from typing import Literal

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="pip install 'llmlab[augment]'")
pytest.importorskip("llguidance", reason="pip install 'llmlab[augment]'")

from llmlab.chat.session import ChatSession  # noqa: E402
from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.data.chat import DEFAULT_TEMPLATE, ChatTemplate  # noqa: E402
from llmlab.errors import LlmlabError  # noqa: E402
from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402
from llmlab.tools.calls import ToolCall, call_grammar, parse_call  # noqa: E402
from llmlab.tools.execute import run_call  # noqa: E402
from llmlab.tools.functions import load_tool, tool_from_function, tool_from_spec  # noqa: E402
from llmlab.tools.loop import ToolChat  # noqa: E402
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model  # noqa: E402

FLIGHTS = Path(__file__).resolve().parents[2] / "examples" / "flights.py"


def book(seat: int, meal: Literal["veg", "fish"], names: list[str], note: str | None = None) -> str:
    """Book a seat.

    Longer text that is not the description."""
    return f"booked {seat}"


def test_a_functions_signature_is_its_schema():
    tool = tool_from_function(book)
    assert tool.description == "Book a seat."
    assert tool.parameters == {
        "type": "object",
        "properties": {"seat": {"type": "integer"}, "meal": {"enum": ["veg", "fish"]},
                       "names": {"type": "array", "items": {"type": "string"}}, "note": {"type": "string"}},
        "required": ["seat", "meal", "names"],
        "additionalProperties": False,
    }  # fmt: skip
    assert tool_from_spec(tool.spec()).parameters == tool.parameters

    def odd(x: complex) -> None: ...

    with pytest.raises(LlmlabError, match="odd"):
        tool_from_function(odd)


def test_tools_load_from_a_file_or_a_module_and_refuse_clearly():
    assert load_tool(f"{FLIGHTS}:flight_status").parameters["required"] == ["flight"]
    assert load_tool("json:loads").name == "loads"
    for spec, fragment in [("nowhere.py:f", "no file"), (f"{FLIGHTS}:missing", "no function"),
                           ("no_such_module_x:f", "importing"), ("plain", "MODULE:FUNCTION")]:  # fmt: skip
        with pytest.raises(LlmlabError, match=fragment):
            load_tool(spec)


def test_every_failure_of_a_tool_is_an_error_message_and_the_caller_goes_on():
    release = threading.Event()

    def hangs(x: int) -> int:
        release.wait(10)
        return x

    def raises(x: int) -> int:
        raise ValueError("the service is down")

    tools = [tool_from_function(hangs), tool_from_function(raises), load_tool(f"{FLIGHTS}:flight_status")]
    try:
        cases = [
            (ToolCall("hangs", {"x": 1}), "did not answer within 0.2 s"),
            (ToolCall("raises", {"x": 1}), "ValueError: the service is down"),
            (ToolCall("invented", {}), "no tool named 'invented'"),
            (ToolCall("flight_status", {"flight": 7}), "bad arguments"),
            (ToolCall("flight_status", {"flight": "XX1"}), "KeyError"),
        ]
        for call, fragment in cases:
            result = run_call(call, tools, timeout=0.2)
            assert result.error and fragment in json.loads(result.content)["error"], result.content
    finally:
        release.set()
    ok = run_call(ToolCall("flight_status", {"flight": "ba 117"}), tools)
    assert not ok.error and json.loads(ok.content)["status"] == "on time"
    assert parse_call('<tool_call>{"name": "a", "arguments": {"b": 1}}</tool_call>', tools).arguments == {"b": 1}
    assert parse_call("It is on time.", tools) is None
    assert parse_call("<tool_call>{not json", tools).name == ""


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")


def session(tokenizer, seed: int, max_new_tokens: int = 160) -> ChatSession:
    generator = Generator(tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=2048), tokenizer, "off")
    template = ChatTemplate(DEFAULT_TEMPLATE, tokenizer.decode([tokenizer.require("eos", "")]))
    return ChatSession(generator, template, GenerationConfig(max_new_tokens=max_new_tokens, seed=seed))


def bounded(tool):
    """The tool with its strings bounded: an untrained model closes a string only by chance (~1 in 300 tokens)."""
    parameters = json.loads(json.dumps(tool.parameters))
    for schema in parameters["properties"].values():
        schema.update({"maxLength": 5} if schema.get("type") == "string" else {})
    return tool_from_spec({"type": "function", "function": {**tool.spec()["function"], "parameters": parameters}},
                          tool.function)  # fmt: skip


def test_an_untrained_model_makes_valid_calls_and_the_loop_feeds_results_back(tokenizer):
    tools = [bounded(load_tool(f"{FLIGHTS}:flight_status")), bounded(load_tool(f"{FLIGHTS}:list_flights"))]
    for seed in range(4):
        chat = ToolChat(session(tokenizer, seed), tools, choice="required", max_steps=2)
        events = list(chat.send("Is BA117 on time?"))
        kinds = [e.kind for e in events]
        assert kinds[:2] == ["call", "result"] and kinds[-1] == "answer", kinds
        for event in events:
            if event.kind == "call":
                tool = next(t for t in tools if t.name == event.call.name)
                jsonschema.validate(event.call.arguments, tool.parameters)
        roles = [m["role"] for m in chat.session.history]
        assert roles[:3] == ["user", "assistant", "tool"] and roles[-1] == "assistant"
        assert "flight_status" in chat.session.messages([])[0]["content"]  # the tools are described to it
        answer = chat.session.history[-1]["content"]
        assert parse_call(answer, tools) is None, answer  # after the step limit it answers, not calls


def test_a_named_tool_choice_and_bad_choices(tokenizer):
    tools = [bounded(load_tool(f"{FLIGHTS}:flight_status")), bounded(load_tool(f"{FLIGHTS}:list_flights"))]
    chat = ToolChat(session(tokenizer, 0), tools, {"type": "function", "function": {"name": "list_flights"}}, 1)
    call = next(e.call for e in chat.send("Flights to JFK?") if e.kind == "call")
    assert call.name == "list_flights"
    with pytest.raises(LlmlabError, match="not among the tools"):
        call_grammar(tools, {"type": "function", "function": {"name": "book"}})
    with pytest.raises(LlmlabError, match="share a name"):
        ToolChat(session(tokenizer, 0), tools + tools[:1])


def test_no_answer_can_be_a_call_that_escaped_the_grammar(tokenizer):
    """An answer may not begin with '<' or whitespace: ' <tool_call>{...}' naming an undeclared tool is refused."""
    from llmlab.generation.constraints import TokenGrammar

    tools = [load_tool(f"{FLIGHTS}:flight_status")]
    grammar = TokenGrammar(call_grammar(tools, "auto"), tokenizer, tokenizer.require("eos", ""))
    for text, ok in [(' <tool_call>{"name":"rm","arguments":{}}</tool_call>', False), ("\nHello", False),
                     ("It is on time.", True), ('<tool_call>{"name":"flight_status","arguments":{"flight":"BA1"}}'
                                                "</tool_call>", True)]:  # fmt: skip
        matcher = grammar.matcher()
        assert (matcher.consume_tokens(tokenizer.encode(text)) and matcher.is_accepting()) == ok, text


def test_chat_command_with_a_tool(capsys, monkeypatch, tmp_path, tokenizer):
    save_checkpoint(tmp_path / "ckpt", tiny_model("llama", vocab_size=tokenizer.vocab_size, block_size=1024), tokenizer)
    monkeypatch.setattr("sys.stdin", io.StringIO("Is BA117 on time?\n"))
    code, out, err = run_cli(capsys, "chat", tmp_path / "ckpt", "--tool", f"{FLIGHTS}:flight_status",
                             "--tool-choice", "required", "--max-tool-steps", "1", "--max-new-tokens", "60",
                             "--seed", "0")  # fmt: skip
    assert code == 0, err
    assert "(tool call) <tool_call>" in err and "(tool result)" in err
    assert "assistant>" in out
    code, _, err = run_cli(capsys, "chat", tmp_path / "ckpt", "--tool", "examples/none.py:f")
    assert_one_line_error(code, err, "no file")


def test_react_steps_are_thoughts_valid_actions_and_observations_then_an_answer(tokenizer):
    from llmlab.tools.react import FINAL, OBSERVATION, ReactChat

    tools = [bounded(load_tool(f"{FLIGHTS}:flight_status"))]
    acted = 0
    for seed in range(3):
        chat = ReactChat(session(tokenizer, seed, max_new_tokens=400), tools, max_steps=2)
        events = list(chat.send("Is BA117 on time?"))
        kinds = [e.kind for e in events]
        assert kinds[0] == "thought" and kinds[-1] == "answer" and kinds.count("thought") <= 3, kinds
        for event in events:
            if event.kind == "call":
                assert event.call.name == "flight_status", event.text
                jsonschema.validate(event.call.arguments, tools[0].parameters)
        transcript = chat.session.history[-1]["content"]
        assert transcript.startswith("Thought: ") and kinds.count("result") == transcript.count(OBSERVATION)
        if events[-1].text:
            assert FINAL in transcript
        acted += "call" in kinds
    assert acted  # some seed took an action (and got its observation)
    with pytest.raises(LlmlabError, match="ReAct needs a tool"):
        ReactChat(session(tokenizer, 0), [])
