"""The server's structured output and tool calls through the official `openai` client: response_format
(json_schema, json_object) always validates, tool_choice makes `tool_calls` that are valid calls of the
tools sent, a conversation with earlier calls and tool results is accepted, streams agree with whole
responses, and bad schemas or choices are 400s while the server keeps serving."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import pytest

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema", reason="pip install 'llmlab[augment]'")
pytest.importorskip("llguidance", reason="pip install 'llmlab[augment]'")

from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.retrieval import build_index, load_embedder  # noqa: E402
from llmlab.retrieval.chunking import ChunkSettings  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402
from tests.helpers import SAMPLE_TEXT, start_llmlab, tiny_model  # noqa: E402
from tests.retrieval.conftest import DOCUMENTS, WORDS, save_encoder  # noqa: E402

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 6}, "days": {"type": "integer", "minimum": 1, "maximum": 9},
                   "kind": {"enum": ["trip", "stay"]}},
    "required": ["city", "days", "kind"], "additionalProperties": False,
}  # fmt: skip
TOOLS = [
    {"type": "function", "function": {"name": "flight_status", "description": "Status of a flight",
     "parameters": {"type": "object", "properties": {"flight": {"type": "string", "maxLength": 6}},
                    "required": ["flight"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "weather", "description": "Weather in a city",
     "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}}, "required": ["city"],
                    "additionalProperties": False}}},
]  # fmt: skip


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    save_checkpoint(folder, tiny_model("llama", vocab_size=tok.vocab_size, block_size=2048), tok)
    docs = folder.parent / "docs"
    for name, text in DOCUMENTS.items():
        (docs / name).parent.mkdir(parents=True, exist_ok=True)
        (docs / name).write_text(text)
    encoder, index = folder.parent / "encoder", folder.parent / "index"
    save_encoder(encoder, train_tokenizer([WORDS * 10], kind="bpe", vocab_size=300, family="encoder"), 0)
    build_index([docs], load_embedder(encoder), index, ChunkSettings(24, 6), "exact")
    proc = start_llmlab("serve", str(folder), "--port", "0", "--name", "tiny", "--max-running", "4", "--dtype", "fp32",
                        "--compile", "off", "--index", str(index), until="serving", timeout=120)  # fmt: skip
    port = int(re.search(r":(\d+)/v1", proc.until_line).group(1))
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
    if proc.poll() is None:
        proc.kill()


def chat(client, **kwargs):
    base = {"model": "tiny", "messages": [{"role": "user", "content": "Plan a trip."}], "max_tokens": 120}
    return client.chat.completions.create(**{**base, **kwargs})


def test_response_format_json_schema_and_json_object_always_parse(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": SCHEMA}}
    reply = chat(client, response_format=fmt, n=3, seed=0)
    exact = json.loads(json.dumps(SCHEMA), parse_float=Decimal)
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content, parse_float=Decimal), exact)
    streamed = "".join(c.choices[0].delta.content or "" for c in chat(client, response_format=fmt, seed=0, stream=True)
                       if c.choices)  # fmt: skip
    assert streamed == reply.choices[0].message.content  # the same seed, the same text
    anything = chat(client, response_format={"type": "json_object"}, seed=1, max_tokens=300)
    if anything.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(anything.choices[0].message.content), dict)


def test_logprobs_under_a_grammar_are_the_models_and_finite(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "plan", "schema": SCHEMA}}
    reply = chat(client, response_format=fmt, seed=5, logprobs=True, top_logprobs=5)
    for entry in reply.choices[0].logprobs.content:
        assert entry.logprob <= 0 and 1 <= len(entry.top_logprobs) <= 5  # the model's, forbidden or not
        assert all(alt.logprob > float("-inf") for alt in entry.top_logprobs)


def test_tool_calls_are_valid_calls_and_the_conversation_goes_on(client):
    reply = chat(client, tools=TOOLS, tool_choice="required", seed=2, n=2, max_tokens=300)
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and choice.message.content is None, choice.message.content
        (call,) = choice.message.tool_calls
        spec = next(t["function"] for t in TOOLS if t["function"]["name"] == call.function.name)
        jsonschema.validate(json.loads(call.function.arguments), spec["parameters"])
    named = chat(
        client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "weather"}}, seed=3, max_tokens=300
    )
    call = named.choices[0].message.tool_calls[0]
    assert call.function.name == "weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]  # fmt: skip
    after = chat(client, tools=TOOLS, messages=messages, seed=4)
    assert after.choices[0].finish_reason in ("stop", "length", "tool_calls")
    chunks = [
        c for c in chat(client, tools=TOOLS, tool_choice="required", seed=2, stream=True, max_tokens=300) if c.choices
    ]
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices[0].delta.tool_calls]
    whole = reply.choices[0].message.tool_calls[0].function.arguments
    assert len(deltas) == 1 and deltas[0][0].function.arguments == whole
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_bad_formats_and_choices_are_400s_and_the_server_goes_on(client):
    bad_schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}
    with pytest.raises(openai.BadRequestError, match="response_format"):
        chat(client, response_format=bad_schema)
    with pytest.raises(openai.BadRequestError, match="not among the tools"):
        chat(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "book"}})
    with pytest.raises(openai.BadRequestError, match="without tools"):
        chat(client, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="not JSON"):
        bad_call = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{oops"}}
        chat(client, messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [bad_call]}])
    assert chat(client, max_tokens=3).choices[0].message.content is not None


def test_rag_retrieves_for_the_last_user_message_and_reports_its_passages(client):
    messages = [{"role": "user", "content": "What is a quagga?"}]
    reply = chat(client, messages=messages, max_tokens=8, extra_body={"rag": {"k": 2, "mode": "bm25"}})
    rag = reply.model_extra["rag"]
    assert [p["n"] for p in rag["passages"]] == [1, 2] and rag["passages"][0]["source"].endswith("zebra.txt")
    assert "quagga" in rag["passages"][0]["text"] and isinstance(rag["cited"], list)
    chunks = list(chat(client, messages=messages, max_tokens=4, stream=True, extra_body={"rag": {"k": 1}}))
    assert len(chunks[0].model_extra["rag"]["passages"]) == 1
    with pytest.raises(openai.BadRequestError, match="rag"):
        chat(client, messages=messages, extra_body={"rag": {"k": 0}})
