"""The quantization report: every format measured on a checkpoint (size, perplexity, speed)."""

import json

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.cli import main
from tests.helpers import tiny_model


def test_report_measures_every_format(tmp_path, char_tokenizer, capsys):
    from tests.helpers import SAMPLE_TEXT

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT * 20)
    model = tiny_model("llama", vocab_size=char_tokenizer.vocab_size, n_embd=64)
    save_checkpoint(tmp_path / "full", model, char_tokenizer)
    code = main(["quantize", str(tmp_path / "full"), str(tmp_path / "report"), "--report", "--data", str(corpus)])
    assert code == 0

    rows = {r["variant"]: r for r in json.loads((tmp_path / "report" / "report.json").read_text())}
    assert list(rows) == [
        "fp32",
        "bf16",
        "fp16",
        "int8",
        "int4-g64",
        "int4-g32",
        "nf4",
        "int8+embeddings",
        "int4-g64+embeddings",
    ]
    assert rows["int8+embeddings"]["disk_mb"] < rows["int8"]["disk_mb"]
    assert rows["fp32"]["perplexity_change"] == 0 and rows["fp32"]["max_layer_error"] == 0
    assert rows["int8"]["weight_memory_mb"] < rows["bf16"]["weight_memory_mb"] < rows["fp32"]["weight_memory_mb"]
    assert 0 < rows["int8"]["max_layer_error"] < rows["int4-g64"]["max_layer_error"] < 0.2
    assert 0 < rows["int8"]["max_layer_error"] < rows["nf4"]["max_layer_error"] < 0.2
    assert rows["nf4"]["weight_memory_mb"] < rows["int8"]["weight_memory_mb"]
    assert (tmp_path / "report" / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_a_report_on_an_encoder_is_refused_before_anything_is_written(tmp_path, capsys):
    from llmlab.tokenizer import train_tokenizer
    from tests.helpers import SAMPLE_TEXT, assert_one_line_error

    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    save_checkpoint(tmp_path / "bert", tiny_model("bert", vocab_size=tok.vocab_size, block_size=16), tok)
    code = main(["quantize", str(tmp_path / "bert"), str(tmp_path / "int8"), "--to", "int8", "--report"])
    assert_one_line_error(code, capsys.readouterr().err, "--report measures decoder-only models", "not encoder")
    assert not (tmp_path / "int8").exists()
