"""The continuous-batching engine: seeds, stop strings, max_tokens, cancellation, log-probabilities, several
adapters and a failing step (greedy equality with the offline generator, per family: test_engine_families.py)."""

from __future__ import annotations

import threading

import pytest
import torch

from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.serve.engine import Engine, Event, QueueFull, Sampling
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model

PROMPTS = ["def f(x):", "class A", "import os\n", "return", "for i in range(", "x = ", "while True", "# a", "if x",
           "print(", "y = [", "def g():", "try:", "with open(", "lambda", "z"]  # fmt: skip


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    return tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=2).eval(), tok


class Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.done = threading.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.finish_reason is not None:
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events)

    @property
    def finish(self) -> str | None:
        return self.events[-1].finish_reason if self.events else None


def run(engine: Engine, tok, prompts: list[str], sampling: Sampling) -> list[Collector]:
    collectors = [Collector() for _ in prompts]
    for prompt, c in zip(prompts, collectors):
        engine.submit(tok.encode(prompt), sampling, c)
    for c in collectors:
        assert c.done.wait(60)
    return collectors


def offline_greedy(model, tok, prompt: str, n: int) -> str:
    return Generator(model, tok).generate([prompt], GenerationConfig(max_new_tokens=n, greedy=True))[0][0].text


def test_a_seed_reproduces_a_sample_and_stop_strings_end_it(model_and_tokenizer):
    model, tok = model_and_tokenizer
    engine = Engine(model, tok, max_running=4)
    engine.start()
    try:
        a, b = run(engine, tok, ["x = ", "x = "], Sampling(max_tokens=20, temperature=1.0, seed=3))
        assert a.text == b.text
        assert len(a.text) >= 5, a.text  # 20 sampled tokens of a 300-token vocabulary
        stop = a.text[3:5]
        (c,) = run(engine, tok, ["x = "], Sampling(max_tokens=20, temperature=1.0, seed=3, stop=[stop]))
        assert c.finish == "stop" and c.text == a.text[: a.text.find(stop)]
    finally:
        engine.stop()


def test_cancelled_and_overflowing_requests(model_and_tokenizer):
    model, tok = model_and_tokenizer
    engine = Engine(model, tok, max_running=2, max_queue=2)
    c = Collector()
    seq = engine.submit(tok.encode("x"), Sampling(max_tokens=40, temperature=1.0), c)
    engine.submit(tok.encode("y"), Sampling(max_tokens=4), Collector())
    with pytest.raises(QueueFull):
        engine.submit(tok.encode("z"), Sampling(max_tokens=4), Collector())
    engine.cancel(seq)
    engine.start()
    try:
        assert c.done.wait(30) and c.finish == "cancelled"
        with pytest.raises(Exception, match="more than the context of 64"):
            engine.submit(tok.encode("x" * 10), Sampling(max_tokens=60), Collector())
    finally:
        engine.stop()
    assert engine.stats.running == 0


def test_logprobs_are_the_model_log_softmax(model_and_tokenizer):
    model, tok = model_and_tokenizer
    engine = Engine(model, tok, max_running=2)
    engine.start()
    try:
        (c,) = run(engine, tok, ["def f(x):"], Sampling(max_tokens=1, temperature=0.0, logprobs=3))
    finally:
        engine.stop()
    ids = torch.tensor([tok.encode("def f(x):")])
    with torch.no_grad():
        expected = model(ids)[0, -1].float().log_softmax(-1)
    event = c.events[0]
    assert event.logprob == pytest.approx(float(expected.max()), abs=1e-5)
    assert len(event.top_logprobs) == 3 and max(event.top_logprobs.values()) == pytest.approx(event.logprob)


def make_adapter(base_folder, out, seed: int, targets=("all-linear",)) -> None:
    """A LoRA adapter folder for the base in `base_folder` with random (non-zero) B matrices."""
    from llmlab.checkpoint.adapter import AdapterInfo, save_adapter, weights_fingerprint
    from llmlab.load import load_checkpoint
    from llmlab.model.lora import LoraSpec, add_lora, lora_state

    ckpt = load_checkpoint(base_folder)
    spec = LoraSpec(r=4, alpha=8, targets=targets)
    fingerprint = weights_fingerprint(ckpt.model)
    torch.manual_seed(seed)
    add_lora(ckpt.model, spec)
    tensors = {k: (torch.randn_like(v) * 0.5 if k.endswith("lora_B") else v) for k, v in lora_state(ckpt.model).items()}
    info = AdapterInfo("lora", spec.to_dict(), str(base_folder), fingerprint, ckpt.model.config, out)
    save_adapter(out, info, tensors, ckpt.tokenizer, ckpt.generation)


def test_requests_for_different_adapters_decode_together(model_and_tokenizer, tmp_path):
    """Base and two adapters in one batch: each sequence's greedy text is its merged model's."""
    from llmlab.checkpoint.folder import save_checkpoint
    from llmlab.load import load_checkpoint
    from llmlab.serve.models import load_served

    model, tok = model_and_tokenizer
    save_checkpoint(tmp_path / "base", model, tok)
    make_adapter(tmp_path / "base", tmp_path / "a", 1)
    make_adapter(tmp_path / "base", tmp_path / "b", 2, targets=("attn.qkv",))
    served = load_served(str(tmp_path / "base"), [("a", str(tmp_path / "a")), ("b", str(tmp_path / "b"))], "base",
                         torch.device("cpu"), torch.float32, 4, 16)  # fmt: skip
    engine = served[0].engine
    assert [m.adapter for m in served] == [-1, 0, 1] and all(m.engine is engine for m in served)
    engine.start()
    try:
        jobs = [(PROMPTS[i], served[i % 3]) for i in range(9)]
        collectors = [Collector() for _ in jobs]
        for (prompt, m), c in zip(jobs, collectors):
            engine.submit(m.prompt_ids(prompt), Sampling(max_tokens=10, temperature=0.0), c, m.adapter)
        for c in collectors:
            assert c.done.wait(60)
    finally:
        engine.stop()
    offline_models = {-1: model, 0: load_checkpoint(tmp_path / "base", adapter=tmp_path / "a").model,
                      1: load_checkpoint(tmp_path / "base", adapter=tmp_path / "b").model}  # fmt: skip
    for (prompt, m), c in zip(jobs, collectors):
        assert c.text == offline_greedy(offline_models[m.adapter], tok, prompt, 10), (prompt, m.name)
    base_a = offline_greedy(offline_models[0], tok, PROMPTS[0], 10)
    assert base_a != offline_greedy(model, tok, PROMPTS[0], 10)  # the adapters change the text


def test_an_adapter_for_another_base_is_refused(model_and_tokenizer, tmp_path):
    from llmlab.checkpoint.folder import save_checkpoint
    from llmlab.errors import LlmlabError
    from llmlab.serve.models import load_served

    model, tok = model_and_tokenizer
    save_checkpoint(tmp_path / "base", model, tok)
    other = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=2)
    torch.nn.init.normal_(other.embed.weight)
    save_checkpoint(tmp_path / "other", other, tok)
    make_adapter(tmp_path / "other", tmp_path / "a", 1)
    with pytest.raises(LlmlabError, match="trained on another base"):
        load_served(str(tmp_path / "base"), [("a", str(tmp_path / "a"))], "base", torch.device("cpu"), torch.float32,
                    4, 16)  # fmt: skip


def test_a_failing_step_ends_its_sequences_with_an_error_and_the_engine_goes_on(model_and_tokenizer, monkeypatch):
    import llmlab.serve.engine as engine_module

    model, tok = model_and_tokenizer
    engine = Engine(model, tok, max_running=2)
    calls = {"n": 0}
    real = engine_module.next_tokens

    def fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("a bug in sampling")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine_module, "next_tokens", fails_once)
    engine.start()
    try:
        (first,) = run(engine, tok, ["def f(x):"], Sampling(max_tokens=8, temperature=0.0))
        assert first.finish == "error"
        (second,) = run(engine, tok, ["class A"], Sampling(max_tokens=4, temperature=0.0))
        assert second.finish == "length" and len(second.events) == 4
    finally:
        engine.stop()
