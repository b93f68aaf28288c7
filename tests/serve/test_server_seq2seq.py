"""`llmlab serve` on an encoder-decoder (T5) checkpoint, through the official `openai` client: greedy completions
and streams equal the offline generator, chat renders the conversation into the encoder, and a prompt past the
encoder's context is OpenAI's 400 while max_tokens is bounded by the decoder's own positions."""

from __future__ import annotations

import re

import openai
import pytest

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, start_llmlab, tiny_model
from tests.serve.test_engine_families import spread


@pytest.fixture(scope="module")
def t5_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve-t5") / "t5"
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=400, family="encoder-decoder")
    model = spread(tiny_model("t5", vocab_size=tok.vocab_size, block_size=48, n_layer=2))
    save_checkpoint(folder, model, tok)
    proc = start_llmlab("serve", str(folder), "--port", "0", "--name", "t5", "--dtype", "fp32", "--max-running", "4",
                        until="serving", timeout=120)  # fmt: skip
    port = int(re.search(r":(\d+)/v1", proc.until_line).group(1))
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=60)
    yield model, tok, client
    if proc.poll() is None:
        proc.kill()


def test_completions_and_streams_equal_the_offline_generator(t5_server):
    model, tok, client = t5_server
    prompts = ["def f(x):", "class A", "import os"]
    offline = Generator(model, tok).generate(prompts, GenerationConfig(max_new_tokens=10, greedy=True))
    reply = client.completions.create(model="t5", prompt=prompts, max_tokens=10, temperature=0)
    assert [c.text for c in sorted(reply.choices, key=lambda c: c.index)] == [o[0].text for o in offline]
    assert reply.usage.prompt_tokens == sum(len(tok.encode(p)) + 1 for p in prompts)  # each ends with </s>
    stream = client.completions.create(model="t5", prompt=prompts[0], max_tokens=10, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == offline[0][0].text


def test_chat_and_the_two_contexts(t5_server):
    _, _, client = t5_server
    messages = [{"role": "user", "content": "hello"}]
    chat = client.chat.completions.create(model="t5", messages=messages, max_tokens=48, temperature=1, seed=3)
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens <= 48
    with pytest.raises(openai.BadRequestError, match="more than the decoder's context of 48"):
        client.completions.create(model="t5", prompt="x", max_tokens=49)
    with pytest.raises(openai.BadRequestError, match="more than the encoder's context of 48"):
        client.completions.create(model="t5", prompt="def f(x): return x " * 20, max_tokens=4)
    assert client.completions.create(model="t5", prompt="ok", max_tokens=2).choices[0].finish_reason
