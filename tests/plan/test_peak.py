"""The peak of a training step: predicted phase by phase, measured by the allocator (CPU here; the same
check runs on CUDA with `llmlab plan memory --verify` where a GPU is visible)."""

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.config import ModelConfig
from llmlab.model import DecoderLM, build_model
from llmlab.plan.measure import cpu_allocator_peak
from llmlab.plan.peak import ModelShape, training_step_peak
from llmlab.plan.verify import verify_peak


@pytest.mark.parametrize(
    "preset,batch,seq_len,dtype,micro_batches",
    [
        ("gpt2-nano", 2, 256, torch.bfloat16, 1),  # flash kernel: no attention weights kept
        ("llama-nano", 2, 256, torch.bfloat16, 1),
        ("gpt2-nano", 4, 128, torch.float32, 1),  # math kernel (<= 128 positions on CPU): weights kept
        ("llama-nano", 4, 128, torch.float32, 1),
        ("llama-nano", 2, 256, torch.bfloat16, 3),  # accumulation: gradients alive during backward
        ("gpt2-mini", 1, 32, torch.bfloat16, 1),  # tiny batch: the end of backward is the peak
        ("bert-nano", 4, 256, torch.bfloat16, 1),  # masked LM: the head and loss at 15% of positions
        ("bert-nano", 4, 128, torch.float32, 1),
        ("t5-nano", 4, 256, torch.bfloat16, 1),  # relative bias: CPU keeps attention weights at any length
        ("t5-nano", 2, 128, torch.float32, 1),  # peak: the decoder's embedding gradient, encoder still waiting
        ("t5-mini", 1, 32, torch.float32, 1),  # the end of backward: the shared table's last sum
        ("bert-mini", 1, 32, torch.float32, 1),  # fp32 tied head: its gradient's sum is a new tensor
        ("transformer-base", 1, 64, torch.bfloat16, 1),  # sinusoidal positions, ReLU, LayerNorm
    ],
)
def test_step_peak_matches_the_allocator(preset, batch, seq_len, dtype, micro_batches):
    target_len = seq_len // 4 if preset.startswith(("t5", "transformer")) else None
    checks = verify_peak([preset], batch, seq_len, torch.device("cpu"), dtype, 8192, micro_batches, target_len)
    assert len(checks) == 3
    for check in checks:
        # the issue asks 10%; every case here measured within 2%, so a miss beyond 3% means a term of the
        # model went missing (the tied embedding's second gradient alone is ~6% of gpt2-mini's backward)
        assert 0.97 <= check.ratio <= 1.03, check


def test_peak_phase_moves_with_the_batch():
    config = ModelConfig.from_preset("llama-mini", vocab_size=8192)
    shape = ModelShape.of(DecoderLM(config))
    small = training_step_peak(config, shape, batch=1, seq_len=32, device="cpu")
    large = training_step_peak(config, shape, batch=8, seq_len=512, device="cpu")
    # the fused AdamW kernel needs no temporaries: at a tiny batch the end of backward (the tied
    # embedding's second gradient) tops the optimizer step, on CUDA and CPU alike
    assert small.peak_phase == "end of backward" and large.peak_phase == "loss backward"
    cuda = training_step_peak(config, shape, batch=1, seq_len=32, device="cuda")
    assert cuda.phases["end of backward"] > cuda.phases["optimizer step"]
    fp32 = training_step_peak(config, shape, batch=8, seq_len=512, device="cuda", precision="fp32")
    assert fp32.components["16-bit weight copies (autocast)"] == 0
    assert fp32.components["activations kept for backward"] > large.components["activations kept for backward"]


def test_cpu_allocator_peak_sees_a_temporary():
    def step():
        x = torch.empty(1_000_000, dtype=torch.float32)  # 4 MB, freed on return
        del x

    assert 4_000_000 <= cpu_allocator_peak(step) < 4_100_000


def test_plan_memory_shows_the_step_peak(capsys):
    args = ["plan", "memory", "--preset", "llama-small", "--vocab-size", "32000", "--batch", "8", "--seq-len", "1024"]
    assert main([*args, "--dtype", "bf16", "--gpu-memory", "8GB", "--json"]) == 0
    step = json.loads(capsys.readouterr().out)["llmlab_step"]
    assert step["device"] == "cuda" and step["precision"] == "autocast"
    assert step["peak"] == max(step["phases"].values()) and step["peak_phase"] == "loss backward"
    assert step["components"]["loss on the logits (fp32)"] == 12 * 8 * 1024 * 32000
    assert step["fits"] is False  # ~8.0 GB
    assert main([*args, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "llmlab pretrain on one cpu device (fp32, AdamW)" in out and "peak (at the loss backward)" in out
    # sharded plans and other families have no single-device step to describe
    assert main([*args, "--gpus", "8", "--strategy", "zero3", "--json"]) == 0
    assert "llmlab_step" not in json.loads(capsys.readouterr().out)


def test_plan_memory_builds_no_real_weights_for_large_configs(capsys, tmp_path):
    llama_2_70b = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": 8192,
        "intermediate_size": 28672,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
    }
    (tmp_path / "config.json").write_text(json.dumps(llama_2_70b))
    assert main(["plan", "memory", "--model", str(tmp_path), "--batch", "1", "--seq-len", "4096", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 68_976_648_192  # Llama-2-70B's published count
    assert result["llmlab_step"]["phases"]["end of backward"] == 16 * result["params"]  # untied: no second gradient


def test_trainer_plans_its_peak_only_where_the_model_describes_the_run():
    from llmlab.data.objectives import Batch
    from llmlab.pretrain.config import TrainConfig
    from llmlab.pretrain.recipe import _planned_step_peak

    model = build_model(ModelConfig.from_preset("t5-nano", vocab_size=512, block_size=64))
    batch = Batch(torch.zeros(4, 64, dtype=torch.long), torch.zeros(4, 16), decoder_inputs=torch.zeros(4, 16))
    cuda, bf16 = torch.device("cuda"), torch.bfloat16
    planned = _planned_step_peak(model, TrainConfig(grad_accum=2), cuda, bf16, False, batch)
    expected = training_step_peak(model.config, ModelShape.of(model), 4, 64, "cuda", "autocast", 2, 16)
    assert planned == expected  # the batch's own shapes: 4 rows, 64 input and 16 target positions
    on_cpu = _planned_step_peak(model, TrainConfig(), torch.device("cpu"), bf16, False, batch)
    assert on_cpu == training_step_peak(model.config, ModelShape.of(model), 4, 64, "cpu", "autocast", 1, 16)
    assert _planned_step_peak(model, TrainConfig(), torch.device("mps"), bf16, False, batch) is None  # no model of MPS
    assert _planned_step_peak(model, TrainConfig(compile=True), cuda, bf16, False, batch) is None  # inductor's own plan
    assert _planned_step_peak(model, TrainConfig(optimizer="muon"), cuda, bf16, False, batch) is None


def test_ddp_step_peak_matches_the_allocator_on_each_rank(tmp_path):
    """2 gloo processes: DDP keeps a bucket copy of the gradients through every phase of a step.

    The CPU measurement sometimes overcounts by exactly one set of buckets, in both halves of a case's step
    (in about one case of ten, a different one each run): most likely DDP's buckets from before its rebuild,
    released by a finished all-reduce in one of gloo's threads, where the profiler records no frees. So up to
    three runs are made and each case must match in all its phases in at least one of them; a wrong model
    matches in none. The cases peak at the loss's backward, away from the last buckets' all-reduce."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    cases = [["gpt2-mini", 2, 256, "bf16", None], ["bert-nano", 4, 256, "fp32", None], ["t5-nano", 4, 256, "bf16", 64]]
    env = {**os.environ, "TMPDIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("peak_worker.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker)]
    runs, unmatched = [], {preset for preset, *_ in cases}
    for _ in range(3):
        done = subprocess.run([*command, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        checks = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(checks) == 9 and all("DDP" in component for _, component, _, _ in checks)
        runs.append([(preset, component, measured / predicted) for preset, component, predicted, measured in checks])
        off = {preset for preset, _, ratio in runs[-1] if not 0.97 <= ratio <= 1.03}
        unmatched &= off
        if not unmatched:
            return
    pytest.fail(f"{sorted(unmatched)} matched within 3% in no run: {runs}")


def test_trainer_logs_the_measured_peak_next_to_the_plan(tmp_path):
    """A CPU run checks the plan at its third step: the profiler's allocator peak next to the prediction."""
    from llmlab.pretrain.config import TrainConfig
    from llmlab.pretrain.recipe import train

    (tmp_path / "corpus.txt").write_text("To be, or not to be, that is the question.\n" * 400)
    lines = []
    config = TrainConfig(
        data=str(tmp_path / "corpus.txt"), tokenizer="char", preset="llama-nano", block_size=64, batch_size=8,
        max_steps=4, eval_interval=100, out=str(tmp_path / "run"), dtype="bf16", device="cpu",
        check_memory_plan=True,
    )  # fmt: skip
    train(config, log=lines.append)
    (line,) = [line for line in lines if line.startswith("memory: peak of step 3")]
    ratio = float(line.rsplit(" ", 1)[1])
    assert 0.97 <= ratio <= 1.03, line
    records = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if "peak_memory" in r]
    assert record["step"] == 3
    assert record["peak_memory"] / record["planned_peak_memory"] == pytest.approx(ratio, abs=1e-3)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--batch", "2"], "--batch and --seq-len go together"),
        (["--batch", "0", "--seq-len", "64"], "--batch must be >= 1"),
        (["--batch", "2", "--seq-len", "64", "--target-len", "8"], "--target-len is an encoder-decoder's"),
    ],
)
def test_plan_memory_refuses_incomplete_shapes(capsys, extra, message):
    assert main(["plan", "memory", "--preset", "gpt2-nano", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
