"""ONNX export: ONNX Runtime's logits equal llmlab's within 1e-4 (fp32) for a decoder, an encoder and an
encoder-decoder, at input shapes other than the traced one; a disagreeing or impossible export leaves nothing."""

from __future__ import annotations

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.errors import LlmlabError
from llmlab.export.onnx import export_onnx
from llmlab.model.quantize import QuantizationSpec, quantize_model
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

ort = pytest.importorskip("onnxruntime")


def run_onnx(path, *ids: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {n: x.numpy() for n, x in zip(names, ids)})[0])


def test_cli_decoder_logits_match(tmp_path, capsys):
    tokenizer = train_tokenizer([SAMPLE_TEXT], "bpe", 300, "decoder")
    model = tiny_model("llama", vocab_size=tokenizer.vocab_size, n_kv_head=2)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    code, out, err = run_cli(capsys, "export", tmp_path / "ckpt", tmp_path / "m.onnx", "--to", "onnx")
    assert code == 0, err
    assert "ONNX (input_ids -> logits, fp32" in out and "match llmlab's within" in out
    ids = torch.tensor([tokenizer.encode("def add(a, b):\n    return")] * 3)
    with torch.no_grad():
        expected = model(ids)
    assert (run_onnx(tmp_path / "m.onnx", ids) - expected).abs().max() <= 1e-4


@pytest.mark.parametrize("style", ["bert", "t5"])
def test_encoder_and_encoder_decoder_logits_match(tmp_path, style):
    model = tiny_model(style)
    done = export_onnx(model, tmp_path / "m.onnx")
    assert done.max_abs_diff <= 1e-4
    ids = (torch.randint(0, 64, (3, 11)),) + ((torch.randint(0, 64, (3, 6)),) if style == "t5" else ())
    with torch.no_grad():
        expected = model(*ids)
    assert done.inputs == (("input_ids", "decoder_input_ids") if style == "t5" else ("input_ids",))
    assert (run_onnx(done.path, *ids) - expected).abs().max() <= 1e-4


def test_a_disagreeing_or_impossible_export_leaves_nothing(tmp_path):
    with pytest.raises(LlmlabError, match="differ from llmlab's"):
        export_onnx(tiny_model("gpt2"), tmp_path / "m.onnx", tolerance=-1.0)  # any difference is too much
    quantized = quantize_model(tiny_model("llama"), QuantizationSpec(format="int8"))
    with pytest.raises(LlmlabError, match="quantized weights"):
        export_onnx(quantized, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_cli_refuses_an_existing_file(tmp_path, capsys):
    (tmp_path / "m.onnx").write_text("")
    code, _, err = run_cli(capsys, "export", tmp_path / "nowhere", tmp_path / "m.onnx", "--to", "onnx")
    assert_one_line_error(code, err, "already exists")
