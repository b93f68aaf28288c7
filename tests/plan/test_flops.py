"""The FLOPs of a training step, term by term, against torch's own count of llmlab's models."""

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.config import ModelConfig
from llmlab.model import build_model
from llmlab.plan.flops import flops_per_token, step_flops
from llmlab.plan.verify import verify_flops


@pytest.mark.parametrize(
    "preset,batch,seq_len,target_len",
    [
        ("gpt2-nano", 2, 64, None),
        ("llama-nano", 2, 64, None),  # grouped-query attention: narrower key/value projections
        ("bert-nano", 2, 64, None),  # the masked-LM head at 15% of positions only
        ("t5-nano", 2, 64, 16),  # cross-attention keys/values per source token
        ("transformer-base", 1, 16, 8),
    ],
)
def test_formula_equals_the_counted_flops(preset, batch, seq_len, target_len):
    (check,) = verify_flops([(preset, batch, seq_len, target_len)])
    assert check.counted == check.formula, check


def test_six_nd_and_its_corrections():
    gpt2 = ModelConfig.from_preset("gpt2-small", vocab_size=50257)
    with torch.device("meta"):
        model = build_model(gpt2)
    n = model.num_parameters()
    # the matmul weights: every matrix but the position table (the token table counts once, as the tied
    # head); biases and norm gains (0.1% of N) are not matmuls
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.dim() == 2 and "pos_embed" not in name)
    assert step_flops(gpt2, 1, 1)["matmuls"] == 6 * matrices
    assert matrices == n - 1024 * 768 - 121_344
    # at 1024 positions attention adds 12 L s h per token: GPT-2 small trains at 1.144 x 6N
    assert flops_per_token(gpt2, 1024) / (6 * n) == pytest.approx(1.144, abs=5e-4)
    t5 = ModelConfig.from_preset("t5-small", vocab_size=32128)
    with torch.device("meta"):
        n = build_model(t5).num_parameters()
    flops = sum(step_flops(t5, 1, 512, 512).values())
    # each token passes through one stack: about 3 N per token (T5's convention), here 1.15 x with attention
    assert flops / (3 * n * 1024) == pytest.approx(1.154, abs=5e-3)


def test_plan_compute_verify_and_per_token_flops(capsys):
    assert main(["plan", "compute", "--verify", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert len(checks) == 6 and all(c["counted"] == c["formula"] for c in checks)
    args = ["plan", "compute", "--preset", "gpt2-small", "--vocab-size", "50257", "--seq-len", "1024"]
    assert main([*args, "--tokens", "1e10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 124_439_808 and result["flops"] == 6 * 124_439_808 * 1e10
    assert result["training_flops_per_token_with_attention"] / (6 * result["params"]) == pytest.approx(1.144, abs=5e-4)


def test_training_reports_model_flops(tmp_path):
    from llmlab.plan.compute import accelerator_peak_flops
    from llmlab.pretrain.config import TrainConfig
    from llmlab.pretrain.recipe import train
    from llmlab.training.report import throughput_text

    assert throughput_text(2.5e12, 1e13) == "2.50 TFLOP/s (MFU 25%)"
    assert throughput_text(5e10, 0.0) == "50.0 GFLOP/s"  # no known peak (CPU): no MFU
    assert accelerator_peak_flops(torch.device("cpu"), torch.bfloat16) == 0.0
    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n" * 200)
    config = TrainConfig(
        data=str(tmp_path / "corpus.txt"), tokenizer="char", preset="gpt2-nano", block_size=32, batch_size=4,
        max_steps=4, log_interval=2, eval_interval=100, out=str(tmp_path / "run"), dtype="fp32", device="cpu",
    )  # fmt: skip
    train(config, log=lambda line: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "model_flops_per_s" in r]
    assert len(logged) == 2
    vocab_size = json.loads((tmp_path / "run" / "config.json").read_text())["model"]["vocab_size"]
    model = ModelConfig.from_preset("gpt2-nano", vocab_size=vocab_size, block_size=32)
    per_token = sum(step_flops(model, 4, 32).values()) / (4 * 32)
    for record in logged:
        assert record["model_flops_per_s"] == pytest.approx(record["tokens_per_s"] * per_token, rel=1e-3)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--preset", "gpt2-nano", "--seq-len", "0"], "--seq-len must be >= 1"),
        (["--params", "1e9", "--seq-len", "64"], "--seq-len gives a decoder's FLOPs"),
        (["--preset", "bert-nano", "--seq-len", "64"], "--seq-len gives a decoder's FLOPs"),
        (["--params", "1e9", "--preset", "gpt2-nano"], "both --params and --preset"),
    ],
)
def test_plan_compute_refuses_what_it_would_ignore(capsys, extra, message):
    assert main(["plan", "compute", *extra, "--tokens", "1e9"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
