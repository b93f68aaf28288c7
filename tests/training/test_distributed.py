"""torchrun with 2 CPU processes (gloo): DDP and FSDP2 train exactly like one process with the global
batch, shard their memory, resume at another world size, and fail fast."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llmlab.errors import LlmlabError
from llmlab.pretrain.config import TrainConfig
from llmlab.pretrain.recipe import train

WORKER = Path(__file__).with_name("distributed_worker.py")
TEXT = "To be, or not to be, that is the question.\n" * 300


def base(tmp: Path, **overrides) -> dict:
    config = dict(
        data=str(tmp / "corpus.txt"), tokenizer="char", preset="llama-nano", n_layer=2, n_embd=64, n_head=4,
        n_kv_head=2, block_size=32, lr=3e-3, warmup_steps=2, max_steps=5, eval_interval=100, eval_iters=2,
        log_interval=1, dtype="fp32", device="cpu", overwrite=True,
    )  # fmt: skip
    return {**config, **overrides}


def torchrun(tmp: Path, config: dict, *extra: str, ranks: int = 2, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(ranks),
        str(WORKER),
    ]
    return subprocess.run(
        [*command, json.dumps(config), *extra], capture_output=True, text=True, env=env, timeout=timeout
    )


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train_loss"] for r in records if "train_loss" in r}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One process with the global batch (2 x 4 = 8)."""
    tmp = tmp_path_factory.mktemp("distributed")
    (tmp / "corpus.txt").write_text(TEXT)
    train(TrainConfig(**base(tmp, batch_size=8, out=str(tmp / "single"))), log=lambda s: None)
    train(TrainConfig(**base(tmp, batch_size=8, out=str(tmp / "whole"), max_steps=6)), log=lambda s: None)
    return tmp


@pytest.mark.parametrize("strategy,zero", [("ddp", 3), ("fsdp", 2), ("fsdp", 3)])
def test_two_ranks_train_exactly_like_one_process(reference, strategy, zero):
    out = reference / f"{strategy}{zero}"
    done = torchrun(reference, base(reference, batch_size=4, out=str(out), strategy=strategy, zero=zero))
    assert done.returncode == 0, done.stderr[-2000:]
    single, ours = losses(reference / "single"), losses(out)
    assert sorted(ours) == [1, 2, 3, 4, 5]
    assert all(abs(ours[s] - single[s]) <= 1e-5 for s in ours), (ours, single)
    a, b = load_file(reference / "single" / "model.safetensors"), load_file(out / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    memory = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if "memory" in line]
    per_rank = [sum(parts.values()) for parts in memory[0]["memory"]]
    full = 16 * sum(t.numel() for t in a.values())  # fp32 weights + gradients + two AdamW moments
    if strategy == "fsdp" and zero == 3:
        assert all(bytes_ <= full / 2 * 1.1 for bytes_ in per_rank), (per_rank, full)
    if strategy == "ddp":
        assert per_rank == [full, full]
    planned, measured = memory[0]["planned"], memory[0]["memory"][0]
    for part in ("gradients", "optimizer states"):
        assert measured[part] == pytest.approx(planned[part], rel=0.1)
    if zero == 2 and strategy == "fsdp":  # gathered only between forward and backward: at rest, sharded
        assert measured["weights"] == pytest.approx(planned["weights"] / 2, rel=0.1)
    else:
        assert measured["weights"] == pytest.approx(planned["weights"], rel=0.1)


def test_a_sharded_checkpoint_from_two_ranks_resumes_in_one_process(reference):
    config = base(reference, max_steps=6)
    whole = losses(reference / "whole")  # one process, global batch 8, uninterrupted
    split = reference / "split"
    done = torchrun(reference, {**config, "batch_size": 4, "out": str(split), "strategy": "fsdp"}, "3")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (split / "sharded").is_dir() and (split / "model.safetensors").is_file()
    resumed = train(TrainConfig(**{**config, "batch_size": 8, "out": str(split), "resume": True}), log=lambda s: None)
    assert resumed.step == 6
    assert {s: round(v, 5) for s, v in resumed.train_losses.items()} == {s: whole[s] for s in (4, 5, 6)}
    assert not (split / "sharded").exists()  # the one-process save replaced it with its own state


def test_a_sharded_checkpoint_from_two_ranks_resumes_with_four(reference):
    config = base(reference, max_steps=6, strategy="fsdp")
    split = reference / "split4"
    assert torchrun(reference, {**config, "batch_size": 4, "out": str(split)}, "3").returncode == 0
    done = torchrun(reference, {**config, "batch_size": 2, "out": str(split), "resume": True}, ranks=4)
    assert done.returncode == 0, done.stderr[-2000:]
    whole = losses(reference / "whole")
    assert {s: v for s, v in losses(split).items() if s > 3} == {s: whole[s] for s in (4, 5, 6)}


def test_resuming_at_the_same_world_size_is_exact_with_dropout(reference):
    """Each rank's random-number state travels with the shards, so dropout masks continue unchanged."""
    config = base(reference, max_steps=6, strategy="ddp", batch_size=4, dropout=0.1)
    assert torchrun(reference, {**config, "out": str(reference / "drop-whole")}).returncode == 0
    assert torchrun(reference, {**config, "out": str(reference / "drop-split")}, "3").returncode == 0
    done = torchrun(reference, {**config, "out": str(reference / "drop-split"), "resume": True, "overwrite": False})
    assert done.returncode == 0, done.stderr[-2000:]
    whole, split = losses(reference / "drop-whole"), losses(reference / "drop-split")
    assert split == whole and len(whole) == 6


def test_a_failing_rank_ends_the_job_quickly(reference):
    start = time.monotonic()
    done = torchrun(reference, base(reference, batch_size=4, out=str(reference / "fail"), strategy="ddp"), "-", "1")
    assert done.returncode != 0 and time.monotonic() - start < 60
    assert "rank 1 fails on purpose" in done.stderr


def test_a_strategy_without_torchrun_is_refused(tmp_path):
    with pytest.raises(LlmlabError, match="needs to be launched by torchrun"):
        train(TrainConfig(out=str(tmp_path / "x"), strategy="ddp"), log=lambda s: None)


def test_masked_lm_with_uneven_labels_per_rank_matches_one_process(reference):
    """Ranks see different numbers of masked tokens: the global normaliser keeps the one-process loss."""
    config = base(reference, preset="bert-nano", family="encoder", n_kv_head=4)
    train(TrainConfig(**{**config, "batch_size": 8, "out": str(reference / "mlm1")}), log=lambda s: None)
    done = torchrun(reference, {**config, "batch_size": 4, "out": str(reference / "mlm2"), "strategy": "ddp"})
    assert done.returncode == 0, done.stderr[-2000:]
    single, ours = losses(reference / "mlm1"), losses(reference / "mlm2")
    assert sorted(ours) == [1, 2, 3, 4, 5] and all(abs(ours[s] - single[s]) <= 1e-5 for s in ours), (ours, single)
