"""The peak of a LoRA / QLoRA fine-tuning step (plan/adapter_peak.py) against the CPU allocator, and
what `plan memory --method` reports: gradients and optimizer states shrink by the trainable fraction."""

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.plan.verify import verify_adapter_peak


@pytest.mark.parametrize(
    "preset,method,targets,dtype,batch,seq_len",
    [
        ("llama-nano", "lora", ("qv",), torch.bfloat16, 4, 256),  # frozen o-proj and MLP keep no inputs
        ("llama-nano", "lora", ("mlp",), torch.float32, 4, 128),  # block 0's attention keeps nothing
        ("gpt2-nano", "lora", ("all-linear",), torch.bfloat16, 4, 256),
        ("llama-nano", "qlora", ("all-linear",), torch.bfloat16, 4, 256),  # NF4 layers: no weight copies
        ("gpt2-nano", "qlora", ("qv",), torch.float32, 4, 128),  # a 16-bit model whatever the precision
        ("t5-nano", "lora", ("qv",), torch.bfloat16, 2, 256),  # frozen bias: the fused kernel past 128
        ("t5-nano", "qlora", ("all-linear",), torch.float32, 2, 256),
    ],
)
def test_adapter_step_peak_matches_the_allocator(preset, method, targets, dtype, batch, seq_len):
    target_len = seq_len // 4 if preset.startswith("t5") else None
    checks = verify_adapter_peak([preset], batch, seq_len, torch.device("cpu"), dtype, method, targets,
                                 target_len=target_len)  # fmt: skip
    assert len(checks) == 3
    for check in checks:  # measured within 2% in every case; 3% as for pre-training's steps
        assert 0.97 <= check.ratio <= 1.03, check


def _plan(capsys, *args) -> dict:
    assert main(["plan", "memory", "--preset", "llama-micro", "--batch", "8", "--seq-len", "256", "--json",
                 *args]) == 0  # fmt: skip
    return json.loads(capsys.readouterr().out)


def test_lora_shrinks_gradients_and_states_by_the_trainable_fraction(capsys):
    full = _plan(capsys)
    lora = _plan(capsys, "--method", "lora", "--lora-r", "8")
    fraction = lora["trainable_params"] / full["params"]
    assert 0 < fraction < 0.02 and lora["params"] == full["params"]
    for part in ("gradients", "optimizer states"):
        assert lora["training"][part] == pytest.approx(full["training"][part] * fraction)
    assert lora["training"]["weights"] == full["training"]["weights"]  # the frozen base, still fp32
    assert lora["llmlab_step"]["peak"] < full["llmlab_step"]["peak"]
    qlora = _plan(capsys, "--method", "qlora", "--dtype", "bf16")
    # NF4 block layers (half a byte and an fp32 scale per 64 weights) and a 16-bit embedding
    assert qlora["training"]["weights"] < 0.6 * _plan(capsys, "--dtype", "bf16")["training"]["weights"]


@pytest.mark.parametrize(
    "args,fragment",
    [
        (["--method", "lora", "--params", "7e9"], "needs the architecture"),
        (["--preset", "llama-micro", "--method", "qlora", "--strategy", "zero3"], "cannot shard"),
        (["--preset", "llama-micro", "--method", "lora", "--lora-targets", "nope"], "matches no linear layer"),
        (["--preset", "llama-micro", "--method", "lora", "--lora-r", "0"], "--lora-r"),
        (["--preset", "llama-micro", "--method", "lora", "--mixed-precision"], "without --mixed-precision"),
    ],
)
def test_bad_adapter_plans_are_one_line(capsys, args, fragment):
    from tests.helpers import assert_one_line_error, run_cli

    code, _, err = run_cli(capsys, "plan", "memory", *args)
    assert_one_line_error(code, err, fragment)
