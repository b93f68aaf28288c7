"""The decoding step and its caches without compiling anything (fast; mutation testing runs this file): what
SlotCache and KVCache write and return, their refusals, and DecodeStep's compiled path driven by a stand-in
compiler (the inputs it marks dynamic, the compile report, the fall-back after a failure) and its disk cache."""

from __future__ import annotations

import pytest
import torch

import llmlab.generation.decode_step as decode_step_module
from llmlab.generation.decode_step import DecodeStep, _use_disk_cache, inductor_cache_dir
from llmlab.model.cache import KVCache, SlotCache


def _kv(rows: int, T: int, fill: float) -> torch.Tensor:
    return torch.full((rows, 2, T, 3), fill)


def test_a_slot_cache_prefills_from_its_first_slot_unless_told_another():
    cache = SlotCache(1, 4, 2, 5, 3, torch.float32, "cpu")
    keys, values = cache.update(0, _kv(1, 5, 1.0), _kv(1, 5, 2.0))  # no prefill() call: slot 0, all 5 positions
    assert keys.shape == (1, 2, 5, 3) and bool((cache.keys[0][0] == 1).all()) and bool((cache.values[0][0] == 2).all())
    assert bool((cache.keys[0][1:] == 0).all())
    cache.prefill(2)
    keys, _ = cache.update(0, _kv(1, 3, 7.0), _kv(1, 3, 7.0))
    assert keys.shape == (1, 2, 3, 3) and bool((cache.keys[0][2, :, :3] == 7).all())
    assert bool((cache.keys[0][3] == 0).all()) and bool((cache.keys[0][1] == 0).all())  # only slot 2 written
    with pytest.raises(ValueError, match="KV slot holds 5 positions, asked to write up to 6"):
        cache.update(0, _kv(1, 6, 0.0), _kv(1, 6, 0.0))
    assert cache.cross == {}  # an encoder-decoder's cross-attention keys go here


def test_a_slot_cache_shares_a_prefix_and_prefills_after_it():
    cache = SlotCache(1, 3, 2, 6, 3, torch.float32, "cpu")
    cache.update(0, _kv(1, 4, 5.0), _kv(1, 4, 6.0))  # slot 0 holds 4 positions
    cache.copy_prefix(0, 2, 3)  # slot 2 takes the first 3
    assert bool((cache.keys[0][2, :, :3] == 5).all()) and bool((cache.values[0][2, :, :3] == 6).all())
    assert bool((cache.keys[0][2, :, 3:] == 0).all()) and bool((cache.keys[0][1] == 0).all())
    cache.prefill(2, start=3)
    keys, _ = cache.update(0, _kv(1, 2, 9.0), _kv(1, 2, 9.0))  # positions 3 and 4, read with the prefix
    assert keys.shape == (1, 2, 5, 3) and bool((keys[0, :, 3:] == 9).all()) and bool((keys[0, :, :3] == 5).all())
    queries, keys_at = cache.relative_slots(2, torch.tensor([3, 4]))
    assert queries.tolist() == [3, 4] and keys_at.tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="asked to write up to 7"):
        cache.update(0, _kv(1, 4, 0.0), _kv(1, 4, 0.0))
    cache.decode(2, torch.tensor([5, 2]), read=6)
    queries, keys_at = cache.relative_slots(1, torch.tensor([[5], [2]]))
    assert queries.tolist() == [[5], [2]] and keys_at.tolist() == list(range(6))


def test_a_slot_cache_decodes_one_token_per_row_at_its_own_position():
    cache = SlotCache(1, 4, 2, 6, 3, torch.float32, "cpu")
    cache.decode(2, torch.tensor([1, 4]), read=5)  # each row writes its one new token at its own position
    k = torch.arange(12.0).reshape(2, 2, 1, 3)
    keys, values = cache.update(0, k, k.to(torch.bfloat16))  # under autocast: bf16 into the fp32 cache
    assert keys.shape == (2, 2, 5, 3) and values.dtype == torch.float32
    assert torch.equal(cache.keys[0][0, :, 1], k[0, :, 0]) and torch.equal(cache.keys[0][1, :, 4], k[1, :, 0])
    assert int((cache.keys[0] != 0).any(-1).sum()) == 2 * 2  # rows x heads: one position each, nothing else


def test_a_kv_cache_keeps_its_dtype_and_refuses_to_overflow():
    cache = KVCache(2, 1, 2, 4, 3, torch.bfloat16, "cpu")
    assert {t.dtype for t in cache.keys + cache.values} == {torch.bfloat16}
    cache.update(1, _kv(1, 3, 1.0), _kv(1, 3, 1.0))
    cache.advance(3)
    with pytest.raises(ValueError, match="KV cache holds 4 positions, asked to write up to 5"):
        cache.update(1, _kv(1, 2, 1.0), _kv(1, 2, 1.0))


def test_the_disk_cache_folder_and_when_it_is_ours_to_set(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_CACHE", str(tmp_path))
    assert inductor_cache_dir() == tmp_path / "inductor" / f"torch-{torch.__version__}"
    monkeypatch.delenv("LLMLAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert inductor_cache_dir() == tmp_path / "home" / ".cache" / "llmlab" / "inductor" / f"torch-{torch.__version__}"
    monkeypatch.setitem(__import__("sys").modules, "torch._inductor.runtime.cache_dir_utils", None)  # no default
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "")
    _use_disk_cache()
    assert __import__("os").environ["TORCHINDUCTOR_CACHE_DIR"] == ""  # set by someone: kept
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    _use_disk_cache()
    assert __import__("os").environ["TORCHINDUCTOR_CACHE_DIR"] == str(inductor_cache_dir())


class _Runner(torch.nn.Module):
    """Logits that are the sum of each row's token and position: enough to see the step's plumbing."""

    def forward(self, tokens, positions, cache, mask, last_only=False):
        return (tokens + positions).float()[:, :, None].expand(-1, -1, 3)


def _inputs(rows: int = 2):
    cache = SlotCache(1, rows, 1, 8, 2, torch.float32, "cpu")
    mask = torch.ones(rows, 1, 1, 4, dtype=torch.bool)
    return torch.tensor([[3]] * rows), torch.tensor([[5]] * rows), torch.arange(rows), mask, cache


def test_the_compiled_path_marks_sizes_dynamic_and_reports_each_new_graph(monkeypatch):
    from torch._dynamo.utils import counters

    marked, made = [], []

    def fake_compile(fn, dynamic=None, options=None):
        made.append(fn)

        def compiled(*args):
            counters["stats"]["unique_graphs"] += 1 if len(made) == 1 and not compiled.calls else 0
            compiled.calls += 1
            return fn(*args)

        compiled.calls = 0
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch._dynamo, "mark_dynamic",
                        lambda t, dim: marked.append((tuple(t.shape), dim, float(t.flatten()[0]))))  # fmt: skip
    monkeypatch.setattr(decode_step_module, "_use_disk_cache", lambda: None)
    lines = []
    step = DecodeStep(_Runner(), compile=True, report=lines.append)
    assert step.compiled and not step.failed and made[0].__func__ is not DecodeStep._eager
    assert made[0].__func__.__code__ is not DecodeStep._eager.__code__  # its own code object: its own count
    tokens, positions, slots, mask, cache = _inputs(2)
    assert step(tokens, positions, slots, mask, cache).tolist() == [[8.0] * 3, [8.0] * 3]
    # tokens (3), positions (5), slots (0, 1), the mask's rows and read length, the cache's rows and length
    assert sorted(marked) == sorted([((2, 1), 0, 3.0), ((2, 1), 0, 5.0), ((2,), 0, 0.0), ((2, 1, 1, 4), 0, 1.0),
                                     ((2, 1, 1, 4), 3, 1.0), ((2, 1, 8, 2), 0, 0.0), ((2, 1, 8, 2), 2, 0.0),
                                     ((2, 1, 8, 2), 0, 0.0), ((2, 1, 8, 2), 2, 0.0)])  # fmt: skip
    assert len(step.compile_seconds) == 1 and lines[0].startswith("compiled the decoding step for 2 row(s) in ")
    step(tokens, positions, slots, mask, cache)  # no new graph: nothing more to say
    assert len(lines) == 1 and len(step.compile_seconds) == 1
    marked.clear()
    step(*_inputs(1))  # one row: a size of 1 is never marked (the compiler specialises it whatever is asked)
    assert sorted(marked) == [((1, 1, 1, 4), 3, 1.0), ((1, 1, 8, 2), 2, 0.0), ((1, 1, 8, 2), 2, 0.0)]


def test_a_compiler_that_fails_leaves_the_eager_step_and_one_line(monkeypatch):
    monkeypatch.setattr(decode_step_module, "_use_disk_cache", lambda: None)

    def refusing(fn, dynamic=None, options=None):
        raise RuntimeError("no backend\nmore detail")

    monkeypatch.setattr(torch, "compile", refusing)
    lines = []
    step = DecodeStep(_Runner(), compile=True, report=lines.append)
    assert (step.compiled, step.failed) == (False, True)
    assert lines == ["warning: compiling the decoding step failed (no backend); decoding eagerly instead"]
    assert step(*_inputs(1)).tolist() == [[8.0] * 3]

    def failing_later(fn, dynamic=None, options=None):
        def compiled(*args):
            raise RuntimeError("inductor broke")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_later)
    lines.clear()
    step = DecodeStep(_Runner(), compile=True, report=lines.append)
    assert step(*_inputs(1)).tolist() == [[8.0] * 3]  # the eager answer, then eager from now on
    assert (step.compiled, step.failed) == (False, True) and step._fn == step._eager
    assert lines == ["warning: compiling the decoding step failed (inductor broke); decoding eagerly instead"]


@pytest.mark.parametrize(
    ("error", "said"),
    [(RuntimeError(), "RuntimeError"), (RuntimeError("x" * 300 + "\nmore"), "x" * 200)],
)
def test_the_fall_back_line_names_an_error_without_a_message_and_cuts_a_long_one(monkeypatch, capsys, error, said):
    monkeypatch.setattr(decode_step_module, "_use_disk_cache", lambda: None)

    def refusing(fn, dynamic=None, options=None):
        raise error

    monkeypatch.setattr(torch, "compile", refusing)
    DecodeStep(_Runner(), compile=True)  # the default report: one line on stderr
    out, err = capsys.readouterr()
    assert out == "" and err == f"warning: compiling the decoding step failed ({said}); decoding eagerly instead\n"


def test_a_fresh_code_object_keeps_the_methods_closure_and_self():
    from llmlab.generation.decode_step import _own_code

    def make(offset):
        class Adder:
            def add(self, x):
                return x + offset + self.base

        return Adder

    adder = make(10)()
    adder.base = 5
    fresh = _own_code(adder.add)
    assert fresh(1) == 16 and fresh.__func__.__code__ is not adder.add.__func__.__code__
