"""GGUF export: metadata, tokenizer and every tensor read back with gguf's own reader, against llmlab's
weights after the documented re-layout (split q|k|v and gate|up; Llama's q/k rows interleaved for llama.cpp's
rotary); q8_0 within its rounding; models GGUF cannot hold refused in one line with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.export.gguf import export_gguf, interleave_rotary
from llmlab.model.layers import RotaryEmbedding
from llmlab.model.soft_prompt import add_soft_prompt
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

gguf = pytest.importorskip("gguf")

VOCAB = 320  # more rows than the tokenizer has tokens: the rest are [PADn] tokens


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([SAMPLE_TEXT], "bpe", 300, "decoder")


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama", vocab_size=VOCAB, n_kv_head=2, tie_embeddings=False)


def fields(reader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def read_tensors(reader) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (values as fp32 in (rows, columns), GGML type name)"""
    out = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        out[t.name] = (
            np.asarray(values, dtype=np.float32).reshape(tuple(reversed(t.shape.tolist()))),
            t.tensor_type.name,
        )
    return out


def expected_llama(model) -> dict[str, torch.Tensor]:
    """llama.cpp's tensors, written out from llmlab's own parameter names (independently of the exporter)."""
    c, sd = model.config, model.state_dict()
    q, kv = c.n_head * c.head_dim, c.n_kv_head * c.head_dim
    out = {"token_embd.weight": sd["embed.weight"], "output_norm.weight": sd["decoder.norm.weight"],
           "output.weight": sd["lm_head.weight"]}  # fmt: skip
    for i in range(c.n_layer):
        p = f"decoder.blocks.{i}."
        wq, wk, wv = sd[p + "attn.qkv.weight"].split([q, kv, kv])
        gate, up = sd[p + "mlp.up.weight"].chunk(2)
        out.update({
            f"blk.{i}.attn_norm.weight": sd[p + "norm1.weight"], f"blk.{i}.ffn_norm.weight": sd[p + "norm2.weight"],
            f"blk.{i}.attn_q.weight": interleave_rotary(wq, c.n_head),
            f"blk.{i}.attn_k.weight": interleave_rotary(wk, c.n_kv_head), f"blk.{i}.attn_v.weight": wv,
            f"blk.{i}.attn_output.weight": sd[p + "attn.proj.weight"], f"blk.{i}.ffn_gate.weight": gate,
            f"blk.{i}.ffn_up.weight": up, f"blk.{i}.ffn_down.weight": sd[p + "mlp.down.weight"],
        })  # fmt: skip
    return out


def test_llama_f32_metadata_tokenizer_and_every_tensor(tmp_path, llama, tokenizer):
    done = export_gguf(llama, tokenizer, tmp_path / "m.gguf", "f32", name="tiny")
    reader = gguf.GGUFReader(done.path)
    f = fields(reader)
    assert f["general.architecture"] == "llama" and f["general.name"] == "tiny"
    assert f["llama.context_length"] == 64 and f["llama.embedding_length"] == 32 and f["llama.block_count"] == 2
    assert f["llama.attention.head_count"] == 4 and f["llama.attention.head_count_kv"] == 2
    assert f["llama.feed_forward_length"] == llama.config.intermediate_size and f["llama.vocab_size"] == VOCAB
    assert f["llama.rope.freq_base"] == 10000.0 and f["llama.rope.dimension_count"] == 8
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(llama.config.norm_eps)
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    vocab = tokenizer.inner.get_vocab(with_added_tokens=True)
    by_id = sorted(vocab, key=vocab.get)
    assert f["tokenizer.ggml.tokens"] == by_id + [f"[PAD{i}]" for i in range(len(by_id), VOCAB)]
    types = f["tokenizer.ggml.token_type"]
    assert types[tokenizer.eos_id] == gguf.TokenType.CONTROL and types[-1] == gguf.TokenType.UNUSED
    assert types[vocab["a"]] == gguf.TokenType.NORMAL
    merges = tokenizer.inner.to_str()
    assert f["tokenizer.ggml.merges"] and all(" " in m for m in f["tokenizer.ggml.merges"])
    assert f["tokenizer.ggml.merges"][0].split(" ")[0] in merges
    assert f["tokenizer.ggml.eos_token_id"] == tokenizer.eos_id == f["tokenizer.ggml.bos_token_id"]
    assert f["tokenizer.ggml.add_bos_token"] is False
    tensors, expected = read_tensors(reader), expected_llama(llama)
    assert set(tensors) == set(expected)
    for name, want in expected.items():
        got, kind = tensors[name]
        assert kind == "F32" and np.array_equal(got, want.numpy()), name


def test_interleaved_rotary_rows_rotate_as_llamacpp_expects(llama):
    """llama.cpp's LLAMA rotary turns dims (2i, 2i+1) by position * theta^(-2i/d); on the re-laid-out rows it
    gives llmlab's rotate-half rotation, re-laid out: q·k, and so attention, is unchanged."""
    c, d = llama.config, llama.config.head_dim
    rope = RotaryEmbedding(d, c.block_size, c.rope_theta)
    x, positions = torch.randn(5, c.n_embd), torch.arange(3, 8)
    wq = llama.state_dict()["decoder.blocks.0.attn.qkv.weight"][: c.n_head * d]
    ours = rope((x @ wq.t()).view(5, c.n_head, d)[None], positions)[0].transpose(0, 1)  # (T, H, d) -> (H, T, d)
    theirs = (x @ interleave_rotary(wq, c.n_head).t()).view(5, c.n_head, d).transpose(0, 1)
    angle = positions[:, None].float() * c.rope_theta ** (-torch.arange(0, d, 2).float() / d)
    even, odd = theirs[..., 0::2], theirs[..., 1::2]
    turned = torch.stack([even * angle.cos() - odd * angle.sin(), even * angle.sin() + odd * angle.cos()], -1)
    relaid = ours.reshape(c.n_head, 5, 2, d // 2).transpose(-1, -2).reshape(c.n_head, 5, d)
    assert torch.allclose(turned.flatten(-2), relaid, atol=1e-5)


def test_q8_0_and_f16(tmp_path, llama, tokenizer):
    expected = expected_llama(llama)
    for quant, matrix in (("q8_0", "Q8_0"), ("f16", "F16")):
        done = export_gguf(llama, tokenizer, tmp_path / f"{quant}.gguf", quant)
        reader = gguf.GGUFReader(done.path)
        assert fields(reader)["general.file_type"] == {"q8_0": 7, "f16": 1}[quant]
        for name, (got, kind) in read_tensors(reader).items():
            want = expected[name].numpy()
            if want.ndim == 1:
                assert kind == "F32" and np.array_equal(got, want), name
                continue
            assert kind == matrix, name
            error, blocks = np.abs(got - want).reshape(len(want), -1, 32), np.abs(want).reshape(len(want), -1, 32)
            if quant == "q8_0":  # half a step of amax/127 per block of 32, plus the fp16 rounding of that scale
                assert (error <= blocks.max(-1, keepdims=True) / 127 * 0.57).all(), name
            else:  # half an fp16 unit in the last place
                assert (error <= blocks / 2048 * 1.01 + 1e-7).all(), name


@pytest.mark.parametrize("tied", [False, True])
def test_q4_0_rounds_to_half_a_sixteenth_of_each_block_and_keeps_the_output_matrix_in_q8_0(tmp_path, tokenizer, tied):
    model = tiny_model("llama", vocab_size=VOCAB, n_kv_head=2, tie_embeddings=tied)
    expected = expected_llama(model)
    if tied:
        del expected["output.weight"]
    reader = gguf.GGUFReader(export_gguf(model, tokenizer, tmp_path / "q4.gguf", "q4_0").path)
    assert fields(reader)["general.file_type"] == 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    kinds = {}
    for name, (got, kind) in read_tensors(reader).items():
        want = expected[name].numpy()
        kinds[name] = kind
        if want.ndim == 1:
            assert kind == "F32" and np.array_equal(got, want), name
            continue
        blocks, error = np.abs(want).reshape(len(want), -1, 32), np.abs(got - want).reshape(len(want), -1, 32)
        step = blocks.max(-1, keepdims=True) / (127 if kind == "Q8_0" else 8)
        # q4_0: codes 0..15 around 8 with a step of amax/8; the end opposite amax's sign clips to 7 steps
        assert (error <= step * (0.57 if kind == "Q8_0" else 1.01)).all(), name
        assert kind == "Q8_0" or (error <= step * 0.51).mean() > 0.99, name  # half a step, but for the clipped end
    output = "token_embd.weight" if tied else "output.weight"
    assert kinds[output] == "Q8_0"
    assert {k for n, k in kinds.items() if n != output and expected[n].dim() == 2} == {"Q4_0"}


def test_gpt2_keeps_fused_qkv_and_learned_positions(tmp_path, tokenizer):
    model = tiny_model("gpt2", vocab_size=VOCAB)
    reader = gguf.GGUFReader(export_gguf(model, tokenizer, tmp_path / "g.gguf").path)
    f, tensors, sd = fields(reader), read_tensors(reader), model.state_dict()
    assert f["general.architecture"] == "gpt2" and f["gpt2.context_length"] == 64
    assert f["gpt2.attention.layer_norm_epsilon"] == pytest.approx(model.config.norm_eps)
    pairs = {"token_embd.weight": "embed.weight", "position_embd.weight": "decoder.pos_embed.weight",
             "output_norm.bias": "decoder.norm.bias", "blk.1.attn_qkv.weight": "decoder.blocks.1.attn.qkv.weight",
             "blk.1.attn_qkv.bias": "decoder.blocks.1.attn.qkv.bias",
             "blk.0.ffn_up.weight": "decoder.blocks.0.mlp.up.weight",
             "blk.0.ffn_down.weight": "decoder.blocks.0.mlp.down.weight"}  # fmt: skip
    for theirs, ours in pairs.items():
        assert np.array_equal(tensors[theirs][0], sd[ours].numpy()), theirs
    assert "output.weight" not in tensors  # tied: llama.cpp reads the embedding


def test_cli_export_gguf(tmp_path, capsys, tokenizer):
    save_checkpoint(tmp_path / "ckpt", tiny_model("llama", vocab_size=tokenizer.vocab_size), tokenizer)
    code, out, err = run_cli(
        capsys, "export", tmp_path / "ckpt", tmp_path / "m.gguf", "--to", "gguf", "--quant", "q8_0"
    )
    assert code == 0, err
    assert "GGUF (llama, q8_0, 20 tensors" in out
    assert fields(gguf.GGUFReader(tmp_path / "m.gguf"))["general.name"] == "ckpt"


def refused(tmp_path, capsys, style, tokenizer, *fragments, args=("--to", "gguf"), **overrides) -> None:
    """`llmlab export` of a tiny `style` model with these options: one line naming each fragment, no file."""
    save_checkpoint(tmp_path / "ckpt", tiny_model(style, vocab_size=tokenizer.vocab_size, **overrides), tokenizer)
    code, _, err = run_cli(capsys, "export", tmp_path / "ckpt", tmp_path / "out" / "m.gguf", *args)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("style, fragment", [("bert", "an encoder"), ("t5", "T5 relative positions")])
def test_other_families_are_refused(tmp_path, capsys, style, fragment):
    tokenizer = train_tokenizer([SAMPLE_TEXT], "bpe", 400, {"bert": "encoder", "t5": "encoder-decoder"}[style])
    refused(tmp_path, capsys, style, tokenizer, "cannot be written as GGUF", fragment)


def test_what_gguf_cannot_hold_is_named(tmp_path, capsys, tokenizer):
    chars = train_tokenizer([SAMPLE_TEXT], "char", family="decoder")
    refused(tmp_path / "a", capsys, "llama", chars, "not byte-level BPE")
    refused(
        tmp_path / "b", capsys, "llama", tokenizer, "a task head (task=classify)", task="classify", labels=["n", "y"]
    )
    refused(
        tmp_path / "c",
        capsys,
        "gpt2",
        tokenizer,
        "mlp='gelu-erf'",
        "a task head",
        mlp="gelu-erf",
        task="classify",
        labels=["n", "y"],
    )
    refused(
        tmp_path / "d", capsys, "llama", tokenizer, "--quant is for --to gguf", args=("--to", "onnx", "--quant", "f16")
    )
    save_checkpoint(tmp_path / "e", tiny_model("llama", vocab_size=tokenizer.vocab_size), tokenizer)
    (tmp_path / "taken.gguf").write_text("")
    code, _, err = run_cli(capsys, "export", tmp_path / "e", tmp_path / "taken.gguf", "--to", "gguf")
    assert_one_line_error(code, err, "already exists")


def test_soft_prompt_small_embedding_and_bad_type_are_refused(tmp_path, llama, tokenizer):
    from llmlab.errors import LlmlabError

    with pytest.raises(LlmlabError, match="unknown GGUF type"):
        export_gguf(llama, tokenizer, tmp_path / "x.gguf", "q4_k")
    prompted = tiny_model("llama", vocab_size=VOCAB)
    add_soft_prompt(prompted, 4)
    with pytest.raises(LlmlabError, match="a soft prompt"):
        export_gguf(prompted, tokenizer, tmp_path / "x.gguf")
    with pytest.raises(LlmlabError, match=f"a tokenizer of {tokenizer.vocab_size} tokens for an embedding of 64"):
        export_gguf(tiny_model("llama", vocab_size=64), tokenizer, tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_rope_scaling(tmp_path, tokenizer):
    """Linear scaling is a factor in the metadata; Llama 3's is a divisor per frequency (`rope_freqs`):
    1 for high frequencies, the factor for low ones, blended between."""
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}  # fmt: skip
    model = tiny_model("llama", vocab_size=VOCAB, n_embd=64, n_head=2, rope_scaling=llama3)
    reader = gguf.GGUFReader(export_gguf(model, tokenizer, tmp_path / "l3.gguf").path)
    divisors = read_tensors(reader)["rope_freqs.weight"][0]
    assert divisors.shape == (16,) and divisors[0] == 1.0 and divisors[-1] == pytest.approx(8.0)
    assert ((divisors >= 1.0) & (divisors <= 8.0 + 1e-5)).all() and (np.diff(divisors) >= -1e-6).all()
    linear = tiny_model("llama", vocab_size=VOCAB, rope_scaling={"rope_type": "linear", "factor": 4.0})
    f = fields(gguf.GGUFReader(export_gguf(linear, tokenizer, tmp_path / "lin.gguf").path))
    assert f["llama.rope.scaling.type"] == "linear" and f["llama.rope.scaling.factor"] == 4.0
