"""`llmlab serve`, called as users call it: the official `openai` client and raw HTTP. A greedy request returns
what the offline generator returns; streams are OpenAI's server-sent events; bad requests get OpenAI's error
shape and status while the server keeps serving; a client that disconnects frees its slot; SIGTERM exits 0."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import httpx
import openai
import pytest

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, start_llmlab, tiny_model
from tests.serve.test_engine import make_adapter

KEY = "test-key-123"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "tiny"
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64)
    save_checkpoint(folder, model, tok)
    make_adapter(folder, folder.parent / "adapter", seed=1)
    os.environ["LLMLAB_TEST_SERVE_KEY"] = KEY
    proc = start_llmlab("serve", str(folder), "--port", "0", "--name", "tiny", "--adapter",
                        f"tiny-a={folder.parent / 'adapter'}", "--api-key-env", "LLMLAB_TEST_SERVE_KEY",
                        "--max-running", "4", "--max-queue", "4", "--dtype", "fp32", "--max-body-bytes", "20000",
                        until="serving", timeout=120)  # fmt: skip
    line = proc.until_line
    port = int(re.search(r":(\d+)/v1", line).group(1))
    url = f"http://127.0.0.1:{port}"
    yield {"url": url, "proc": proc, "model": model, "tok": tok, "folder": folder,
           "client": openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=60)}  # fmt: skip
    if proc.poll() is None:
        proc.kill()


def offline(server, prompt: str, n: int) -> str:
    gen = Generator(server["model"], server["tok"])
    return gen.generate([prompt], GenerationConfig(max_new_tokens=n, greedy=True))[0][0].text


def test_greedy_completion_equals_the_offline_generator(server):
    client = server["client"]
    reply = client.completions.create(model="tiny", prompt="def f(x):", max_tokens=12, temperature=0)
    assert reply.choices[0].text == offline(server, "def f(x):", 12)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == len(server["tok"].encode("def f(x):"))
    assert reply.usage.completion_tokens <= 12
    two = client.completions.create(model="tiny", prompt=["def f(x):", "class A:"], max_tokens=3, n=2)
    tok = server["tok"]
    assert len(two.choices) == 4
    assert two.usage.prompt_tokens == len(tok.encode("def f(x):")) + len(tok.encode("class A:"))


def test_an_adapter_is_served_by_its_name(server):
    from llmlab.load import load_checkpoint

    merged = load_checkpoint(server["folder"], adapter=server["folder"].parent / "adapter").model
    reply = server["client"].completions.create(model="tiny-a", prompt="def f(x):", max_tokens=12, temperature=0)
    text = Generator(merged, server["tok"]).generate(["def f(x):"], GenerationConfig(max_new_tokens=12, greedy=True))
    assert reply.choices[0].text == text[0][0].text != offline(server, "def f(x):", 12)


def test_chat_n_seed_stop_and_logprobs(server):
    client = server["client"]
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    a = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, n=2, seed=7, temperature=1)
    b = client.chat.completions.create(model="tiny", messages=messages, max_tokens=10, n=2, seed=7, temperature=1)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len(a.choices) == 2 and a.choices[0].message.role == "assistant"
    text = client.completions.create(model="tiny", prompt="x = ", max_tokens=20, seed=1).choices[0].text
    assert len(text) > 4, text
    stop = text[2:4]
    cut = client.completions.create(model="tiny", prompt="x = ", max_tokens=20, seed=1, stop=[stop])
    assert cut.choices[0].text == text[: text.find(stop)] and cut.choices[0].finish_reason == "stop"
    scored = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, logprobs=True,
                                            top_logprobs=2, temperature=0)  # fmt: skip
    content = scored.choices[0].logprobs.content
    assert content and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_streams_are_the_same_text_as_whole_responses(server):
    client = server["client"]
    whole = client.completions.create(model="tiny", prompt="import", max_tokens=15, seed=3)
    stream = client.completions.create(model="tiny", prompt="import", max_tokens=15, seed=3, stream=True,
                                       stream_options={"include_usage": True})  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                          stream=True, seed=2)  # fmt: skip
    deltas = list(chat)
    assert deltas[0].choices[0].delta.role == "assistant" and deltas[-1].choices[0].finish_reason is not None


def test_raw_sse_format(server):
    body = {"model": "tiny", "prompt": "class", "max_tokens": 5, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{server['url']}/v1/completions", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    assert json.loads(lines[0][6:])["object"] == "text_completion"


def test_errors_surface_as_the_client_exceptions(server):
    client = server["client"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.completions.create(model="../../etc/passwd", prompt="x", max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, temperature=-1)
    with pytest.raises(openai.BadRequestError, match="more than the context of 64"):
        client.completions.create(model="tiny", prompt="x", max_tokens=500)
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}], max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server['url']}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.RateLimitError):  # 16 sequences: more than 4 running + 4 queued
        client.completions.create(model="tiny", prompt="x", max_tokens=30, n=16)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    bad = httpx.post(f"{server['url']}/v1/completions", content=b"{not json", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    big = httpx.post(f"{server['url']}/v1/completions", content=b" " * 30000, headers=headers)
    assert big.status_code == 413 and "error" in big.json()
    with pytest.raises(openai.BadRequestError, match="no index"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2,
                                       extra_body={"rag": {"k": 2}})  # fmt: skip
    assert client.completions.create(model="tiny", prompt="x", max_tokens=2).choices  # still serving


def test_models_health_metrics_and_a_disconnect_frees_its_slot(server):
    client, url = server["client"], server["url"]
    assert [m.id for m in client.models.list()] == ["tiny", "tiny-a"]
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "tiny", "prompt": "x", "max_tokens": 60, "stream": True, "temperature": 1}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, headers=headers, timeout=60) as r:
        next(r.iter_lines())  # the first token arrived; now hang up
    deadline, running = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        metrics = httpx.get(f"{url}/metrics", headers=headers).text
        running = float(re.search(r"^llmlab_running_sequences (\S+)", metrics, re.M).group(1))
        if running == 0:
            break
        time.sleep(0.1)
    assert running == 0
    assert re.search(r'llmlab_requests_total\{endpoint="/v1/completions",status="200"\} \d', metrics)
    assert "llmlab_time_to_first_token_seconds_count" in metrics


def test_sigterm_stops_the_server_cleanly(server):
    proc = server["proc"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
