"""The compiled decoding step: the same greedy tokens as eager decoding (generator and server engine), no
compilation once the server has warmed up, a compile failure falls back to eager with one line, and the
disk cache is kept per torch version."""

from __future__ import annotations

import os

import pytest
import torch

from llmlab.errors import LlmlabError
from llmlab.generation import guarded_shortcut
from llmlab.generation.config import GenerationConfig, compile_choice
from llmlab.generation.decode_step import DecodeStep, inductor_cache_dir
from llmlab.generation.generator import Generator
from llmlab.model.cache import SlotCache
from llmlab.serve.engine import Engine, Sampling
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model
from tests.serve.test_engine import Collector

PROMPTS = ["def f(x):", "class A", "import os\nimport sys\n"]  # different lengths: the batch is left-padded


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    torch.manual_seed(0)
    return tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=2).eval(), tok


@pytest.mark.compiles
def test_compiled_generation_gives_the_eager_tokens(model_and_tokenizer):
    model, tok = model_and_tokenizer
    config = GenerationConfig(max_new_tokens=12, min_new_tokens=12, greedy=True)
    eager = Generator(model, tok, compile="off")
    compiled = Generator(model, tok, compile="on")
    for prompts in (PROMPTS[:1], PROMPTS):  # one row (a graph of its own), then a padded batch
        want = [c[0].token_ids for c in eager.generate(prompts, config)]
        got = [c[0].token_ids for c in compiled.generate(prompts, config)]
        assert got == want
    step = compiled.decode_step(0)
    assert step.compiled and not step.failed
    assert 1 <= len(step.compile_seconds) <= 3  # the single row, the batch, perhaps a re-specialisation
    calls = len(step.compile_seconds)
    compiled.generate(PROMPTS[:2], GenerationConfig(max_new_tokens=20, greedy=True))  # other rows and length
    assert len(step.compile_seconds) == calls, "a new batch size or length recompiled the step"
    assert not eager.decode_step(0).compiled


@pytest.mark.compiles
def test_the_compiled_server_step_gives_the_eager_tokens(model_and_tokenizer):
    model, tok = model_and_tokenizer
    texts = {}
    for compile in (False, True):
        engine = Engine(model, tok, max_running=4, compile=compile)
        engine.warm_up()
        warmed = len(engine.decode.compile_seconds)
        engine.start()
        try:
            collectors = [Collector() for _ in PROMPTS]
            for prompt, c, n in zip(PROMPTS, collectors, (6, 9, 12)):
                engine.submit(tok.encode(prompt), Sampling(max_tokens=n, temperature=0.0), c)
            assert all(c.done.wait(120) for c in collectors)
            texts[compile] = [c.text for c in collectors]
        finally:
            engine.stop()
        assert engine.decode.compiled == compile
        assert len(engine.decode.compile_seconds) == warmed, "serving compiled again after the warm-up"
    assert texts[True] == texts[False]


@pytest.fixture
def fresh_dynamo():
    """Dynamo's compiled graphs forgotten before and after (also when the test fails)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.compiles
def test_a_compile_failure_decodes_eagerly_after_one_line(
    model_and_tokenizer, monkeypatch, tmp_path, fresh_dynamo, request
):
    import torch._inductor.config as inductor

    # inductor's own patch: monkeypatch's undo of a config attribute leaves it missing for later compiles
    no_compiler = inductor.patch({"cpp.cxx": (str(tmp_path / "no-such-compiler"),), "fx_graph_cache": False})
    no_compiler.__enter__()
    request.addfinalizer(lambda: no_compiler.__exit__(None, None, None))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # nothing compiled before
    _, tok = model_and_tokenizer
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_embd=48).eval()
    lines: list[str] = []
    step = DecodeStep(model, compile=True, report=lines.append)
    c = model.config
    cache = SlotCache(c.n_layer, 2, c.n_kv_head, 8, c.head_dim, torch.float32, "cpu")
    tokens, positions = torch.tensor([[3], [5]]), torch.tensor([[0], [0]])
    mask = torch.ones(2, 1, 1, 1, dtype=torch.bool)
    logits = step(tokens, positions, positions[:, 0], mask, cache)
    assert len(lines) == 1 and lines[0].startswith("warning: compiling the decoding step failed"), lines
    assert step.failed and not step.compiled
    eager = DecodeStep(model, compile=False)(tokens, positions, positions[:, 0], mask, cache)
    torch.testing.assert_close(logits, eager, rtol=0, atol=0)
    step(tokens, positions + 1, positions[:, 0] + 1, torch.ones(2, 1, 1, 2, dtype=torch.bool), cache)
    assert len(lines) == 1  # said once


@pytest.mark.compiles
def test_an_error_of_the_model_itself_is_raised_not_taken_for_a_compile_failure(model_and_tokenizer, fresh_dynamo):
    _, tok = model_and_tokenizer
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32, n_layer=1).eval()
    lines: list[str] = []
    step = DecodeStep(model, compile=True, report=lines.append)
    c = model.config
    cache = SlotCache(c.n_layer, 1, c.n_kv_head, 8, c.head_dim, torch.float32, "cpu")
    with pytest.raises(IndexError):  # a token id past the vocabulary
        step(torch.tensor([[tok.vocab_size + 100]]), torch.tensor([[0]]), torch.tensor([0]),
             torch.ones(1, 1, 1, 1, dtype=torch.bool), cache)  # fmt: skip
    assert not step.failed and not lines


@pytest.mark.compiles
def test_the_shortcut_runs_a_compiled_entry_only_where_its_guards_pass(model_and_tokenizer, fresh_dynamo):
    _, tok = model_and_tokenizer
    torch.manual_seed(0)
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32, n_layer=1).eval()
    lines: list[str] = []
    step, eager = DecodeStep(model, compile=True, report=lines.append), DecodeStep(model, compile=False)
    c = model.config

    def both(rows: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The compiled and the eager step's logits on the same inputs (each its own cache, filled alike)."""
        torch.manual_seed(rows * 100 + length)
        keys = torch.randn(rows, c.n_kv_head, 16, c.head_dim)
        out = []
        for run in (step, eager):
            cache = SlotCache(c.n_layer, rows, c.n_kv_head, 16, c.head_dim, torch.float32, "cpu")
            for t in (*cache.keys, *cache.values):
                t.copy_(keys)
            tokens = torch.arange(3, 3 + rows)[:, None]
            at = torch.full((rows,), length - 1)
            out.append(run(tokens, at[:, None], at, torch.ones(rows, 1, 1, length, dtype=torch.bool), cache))
        return out[0], out[1]

    torch.testing.assert_close(*both(1, 4), rtol=1e-5, atol=1e-5)  # compiles (through dynamo)
    assert not step.failed, lines
    step._shortcut.refresh()  # what the next call does first
    assert len(step._shortcut.entries) == 1
    through_dynamo = []
    compiled_fn = step._fn
    step._fn = lambda *args: through_dynamo.append(1) or compiled_fn(*args)
    torch.testing.assert_close(*both(1, 7), rtol=1e-5, atol=1e-5)  # another length: the shortcut, not dynamo
    assert through_dynamo == []
    torch.testing.assert_close(*both(2, 7), rtol=1e-5, atol=1e-5)  # two rows fail the one-row entry's guards
    step._shortcut.refresh()
    assert through_dynamo == [1] and len(step._shortcut.entries) == 2
    model.decoder.blocks[0].attn.scale = 0.5  # the graph read this as a constant: its guard fails now
    got, want = both(1, 5)
    assert through_dynamo == [1, 1], "a changed attribute must not run the graph compiled before it changed"
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.compiles
def test_steps_sharing_a_cache_check_only_their_inputs_guards(model_and_tokenizer, fresh_dynamo, monkeypatch):
    _, tok = model_and_tokenizer
    torch.manual_seed(0)
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=32, n_layer=1).eval()
    step, eager = DecodeStep(model, compile=True, report=lambda line: None), DecodeStep(model, compile=False)
    c = model.config
    caches = [SlotCache(c.n_layer, 1, c.n_kv_head, 16, c.head_dim, torch.float32, "cpu") for _ in range(2)]

    def call(run: DecodeStep, cache: SlotCache, length: int) -> torch.Tensor:
        at = torch.tensor([length - 1])
        return run(torch.tensor([[7]]), at[:, None], at, torch.ones(1, 1, 1, length, dtype=torch.bool), cache)

    call(step, caches[0], 3)  # compiles
    step._shortcut.refresh()  # what the next call does first (the entries it reads stay while dynamo's do)
    full_checks = []
    for entry in step._shortcut.entries:
        entry.check = (lambda check: lambda frame: full_checks.append(1) or check(frame))(entry.check)
    call(step, caches[0], 4)  # the cache of the last call... but not yet trusted: every guard once
    assert len(full_checks) == 1
    for length in (5, 6, 7):  # the same cache: the inputs' guards alone
        for mine, theirs in zip((*caches[1].keys, *caches[1].values), (*caches[0].keys, *caches[0].values)):
            mine.copy_(theirs)  # the eager step reads what the compiled one has written so far
        torch.testing.assert_close(call(step, caches[0], length), call(eager, caches[1], length), rtol=1e-5,
                                   atol=1e-5)  # fmt: skip
    assert len(full_checks) == 1
    call(step, caches[1], 8)  # another cache: every guard again
    assert len(full_checks) == 2
    monkeypatch.setattr(guarded_shortcut, "FULL_CHECK_EVERY", 2)
    for length in (9, 10, 11):  # and every FULL_CHECK_EVERY steps on the same cache
        call(step, caches[1], length)
    assert len(full_checks) == 3
    wrong = SlotCache(c.n_layer, 1, c.n_kv_head, 16, c.head_dim, torch.float64, "cpu")
    caches[1].keys[0] = wrong.keys[0]  # an input guard of the trusted cache fails: the call goes to dynamo
    through_dynamo = []
    compiled_fn = step._fn
    step._fn = lambda *args: through_dynamo.append(1) or compiled_fn(*args)
    call(step, caches[1], 12)
    assert through_dynamo == [1] and len(full_checks) == 4  # dynamo took it (and compiled for float64 keys)


def test_a_replaced_or_cast_parameter_gets_a_new_packed_copy(model_and_tokenizer):
    _, tok = model_and_tokenizer
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1).eval()
    generator = Generator(model, tok, compile="off")
    config = GenerationConfig(max_new_tokens=3, min_new_tokens=3, greedy=True)
    generator.generate(PROMPTS[:1], config)
    first = generator.runner
    torch.manual_seed(1)
    with torch.no_grad():  # other weights, as new Parameter objects
        model.load_state_dict({k: v + torch.randn_like(v) for k, v in model.state_dict().items()}, assign=True)
    assert generator.runner is not first
    got = generator.generate(PROMPTS[:1], config)[0][0].token_ids
    want = Generator(model, tok, compile="off").generate(PROMPTS[:1], config)[0][0].token_ids
    assert got == want


def test_the_disk_cache_is_per_torch_version_and_the_choice_reads_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    assert inductor_cache_dir() == tmp_path / "inductor" / f"torch-{torch.__version__}"
    monkeypatch.setenv("LLMLAB_COMPILE", "on")
    assert compile_choice("auto") == "on" and compile_choice("off") == "off"
    monkeypatch.setenv("LLMLAB_COMPILE", "bogus")
    with pytest.raises(LlmlabError, match="LLMLAB_COMPILE"):
        compile_choice("auto")
    with pytest.raises(LlmlabError, match="not a choice"):
        compile_choice("yes")


def test_inductors_own_default_folder_is_not_taken_for_a_users_choice(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from llmlab.generation.decode_step import _use_disk_cache

    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what inductor sets once asked
    _use_disk_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor_cache_dir())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    _use_disk_cache()
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "mine")


def stepwise_logits(generator: Generator, prompts: list[str], steps: int) -> list[torch.Tensor]:
    """Each step's (rows, vocab) logits from the generator's own decoding steps, feeding back greedy tokens."""
    ids = [generator.tokenizer.encode(p) for p in prompts]
    return greedy_steps(generator._decoder_steps(ids, GenerationConfig(max_new_tokens=steps)), steps)


def greedy_steps(step, steps: int) -> list[torch.Tensor]:
    logits, new = [], None
    with torch.no_grad():
        for _ in range(steps):
            logits.append(step(new))
            new = logits[-1].argmax(-1)
    return logits


def uncached_logits(model, tok, prompt: str, chosen: list[int]) -> torch.Tensor:
    """The same steps by full forwards over one unpadded row, without a cache."""
    ids = tok.encode(prompt)
    with torch.no_grad():
        return torch.stack([model(torch.tensor([ids + chosen[:i]]))[0, -1].float() for i in range(len(chosen) + 1)])


def sharp_model(tok, **overrides):
    """A random model with weights scaled up, so that a wrong mask or position moves the logits visibly."""
    return sharpen(tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=2, **overrides))


def sharpen(model):
    """Weights other than the norms scaled up 4x (in place); the model in eval mode."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.mul_(4)
    return model.eval()


COMPILED_ROPE = pytest.param("on", "rope", marks=pytest.mark.compiles)


@pytest.mark.parametrize(("compile", "positions"), [("off", "rope"), COMPILED_ROPE, ("off", "relative")])
def test_every_decoding_step_matches_full_forwards(model_and_tokenizer, compile, positions):
    """Left-padded rows, the prefill and every cached step (the last included) against uncached forwards."""
    _, tok = model_and_tokenizer
    model = sharp_model(tok) if positions == "rope" else sharp_model(tok, positions="relative")
    steps = stepwise_logits(Generator(model, tok, compile=compile), PROMPTS, 6)
    for row, prompt in enumerate(PROMPTS):
        chosen = [int(s[row].argmax()) for s in steps[:-1]]
        got = torch.stack([s[row] for s in steps])
        torch.testing.assert_close(got, uncached_logits(model, tok, prompt, chosen), atol=2e-3, rtol=1e-3)


def test_generation_under_bf16_autocast(model_and_tokenizer):
    """RL rollouts generate from an fp32 policy under bf16 autocast (packed fp32 weights refuse bf16 input)."""
    _, tok = model_and_tokenizer
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1).eval()
    config = GenerationConfig(max_new_tokens=4, min_new_tokens=4, greedy=True)
    with torch.autocast("cpu", torch.bfloat16):
        assert len(Generator(model, tok, compile="off").generate(PROMPTS, config)[0][0].token_ids) == 4


@pytest.mark.parametrize("preset", ["t5-nano", "transformer-base"])
def test_every_encoder_decoder_step_matches_full_forwards(model_and_tokenizer, preset):
    """Right-padded sources of three lengths, the cached decoder steps against one uncached forward per row:
    logits, not tokens, so a dropped source mask or cache shows."""
    from llmlab.config import ModelConfig
    from llmlab.model import build_model

    _, tok = model_and_tokenizer
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, n_layer=2, n_decoder_layer=2, n_head=4, n_embd=32, block_size=48,
                                     intermediate_size=64, vocab_size=tok.vocab_size)  # fmt: skip
    model = sharpen(build_model(config))
    model.config.decoder_start_token_id = tok.eos_id
    ids = [tok.encode(p) + [tok.eos_id] for p in PROMPTS]
    steps = greedy_steps(
        Generator(model, tok, compile="off")._seq2seq_steps(ids, GenerationConfig(max_new_tokens=5)), 5
    )
    for row, src in enumerate(ids):
        chosen = [int(s[row].argmax()) for s in steps[:-1]]
        with torch.no_grad():
            want = model(torch.tensor([src]), torch.tensor([[tok.eos_id, *chosen]]))[0].float()
        torch.testing.assert_close(torch.stack([s[row] for s in steps]), want, atol=2e-3, rtol=1e-3)


def test_every_soft_prompted_step_matches_full_forwards(model_and_tokenizer):
    """A decoder with a soft prompt decodes through a growing cache: each step's logits, left-padded rows."""
    from llmlab.model.soft_prompt import add_soft_prompt

    _, tok = model_and_tokenizer
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=2)
    add_soft_prompt(model, 4, seed=1)
    with torch.no_grad():
        model.soft_prompt.add_(torch.randn_like(model.soft_prompt))
    model = sharpen(model)
    steps = stepwise_logits(Generator(model, tok, compile="off"), PROMPTS, 5)
    for row, prompt in enumerate(PROMPTS):
        chosen = [int(s[row].argmax()) for s in steps[:-1]]
        got = torch.stack([s[row] for s in steps])
        torch.testing.assert_close(got, uncached_logits(model, tok, prompt, chosen), atol=2e-3, rtol=1e-3)


def test_auto_compiles_once_enough_tokens_are_asked_for(model_and_tokenizer, monkeypatch):
    """The policy alone (nothing is called, so nothing compiles): "auto" switches at AUTO_COMPILE_TOKENS
    counted over calls, keeps its step afterwards, "off" never compiles and "on" always does."""
    from llmlab.generation.config import AUTO_COMPILE_TOKENS

    model, tok = model_and_tokenizer
    monkeypatch.setenv("LLMLAB_COMPILE", "auto")  # the tests' default is "off"
    auto = Generator(model, tok, compile="auto")
    first = auto.decode_step(AUTO_COMPILE_TOKENS - 2)
    assert not first.compiled and auto.decode_step(1) is first  # one short of the threshold in all
    second = auto.decode_step(1)
    assert second is not first and second.compiled and auto.decode_step(5) is second
    off = Generator(model, tok, compile="off")
    off.generate(PROMPTS, GenerationConfig(max_new_tokens=4, greedy=True))
    assert off._decoded == len(PROMPTS) * 4  # a generate call counts rows x new tokens
    assert not off.decode_step(10 * AUTO_COMPILE_TOKENS).compiled
    assert Generator(model, tok, compile="on").decode_step(1).compiled


def test_refresh_repacks_weights_written_behind_the_version_counter(model_and_tokenizer):
    """An optimizer's fused kernels write parameters without bumping their version: `refresh` must repack."""
    _, tok = model_and_tokenizer
    model = sharp_model(tok)
    generator = Generator(model, tok, compile="off")
    stepwise_logits(generator, PROMPTS[:1], 2)  # packs the weights
    with torch.no_grad():
        for p in model.parameters():
            p.data.mul_(0.5)  # through .data: the version counter does not move
    generator.refresh()
    got = stepwise_logits(generator, PROMPTS[:1], 3)
    want = stepwise_logits(Generator(model, tok, compile="off"), PROMPTS[:1], 3)
    torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=0, atol=0)


def test_the_cache_holds_the_models_compute_dtype(model_and_tokenizer, monkeypatch):
    """A bf16 model's keys and values are cached in bf16 (half the memory), not in the default fp32."""
    import llmlab.generation.generator as generator_module

    _, tok = model_and_tokenizer
    made = []

    class Recording(SlotCache):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(args)

    monkeypatch.setattr(generator_module, "SlotCache", Recording)
    model = tiny_model("llama", vocab_size=tok.vocab_size, block_size=64, n_layer=1).to(torch.bfloat16).eval()
    Generator(model, tok, compile="off").generate(PROMPTS[:1], GenerationConfig(max_new_tokens=2, greedy=True))
    assert made and made[0][5] == torch.bfloat16 and torch.device(made[0][6]) == torch.device("cpu")


def test_the_packed_copy_is_rebuilt_exactly_when_the_weights_are_other_tensors(model_and_tokenizer):
    """Unchanged weights keep the packed copy; one Parameter replaced (same count of parameters), or every
    parameter given new storage through `.data`, gets a new one that decodes like a fresh generator."""
    _, tok = model_and_tokenizer
    model = sharp_model(tok)
    generator = Generator(model, tok, compile="off")
    stepwise_logits(generator, PROMPTS[:1], 2)
    first = generator.runner
    assert generator.runner is first
    count = len(list(model.parameters()))
    name, old = next((n, p) for n, p in model.named_parameters() if "mlp" in n)
    owner = model.get_submodule(name.rsplit(".", 1)[0])
    setattr(owner, name.rsplit(".", 1)[1], torch.nn.Parameter(old.detach() * 0.5))
    assert len(list(model.parameters())) == count
    second = generator.runner
    assert second is not first
    for p in model.parameters():
        p.data = p.data * 0.75  # the same Parameter objects, new storage
    assert generator.runner is not second
    got = torch.stack(stepwise_logits(generator, PROMPTS[:1], 3))
    want = torch.stack(stepwise_logits(Generator(model, tok, compile="off"), PROMPTS[:1], 3))
    torch.testing.assert_close(got, want, rtol=0, atol=0)
