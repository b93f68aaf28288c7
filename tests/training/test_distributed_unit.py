"""The distributed helpers in one process: what they ask of torch.distributed (recorded by fakes standing in
for the process group and its peers) and what they compute from it. The torchrun tests in
test_distributed.py prove the real thing end to end; these pin each decision (backend, device, timeout,
sharding options, normalisers, checkpoint files) where a mutation tester running in-process can see it."""

import datetime

import pytest
import torch
import torch.distributed as dist
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.training import distributed as D

CPU = torch.device("cpu")


def ctx(rank: int = 0, world: int = 2, strategy: str = "ddp", zero: int = 3) -> D.DistContext:
    return D.DistContext(rank=rank, world=world, local_rank=rank, device=CPU, strategy=strategy, zero=zero)


def message(call) -> str:
    with pytest.raises(LlmlabError) as caught:
        call()
    return str(caught.value)


@pytest.fixture
def no_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def fake_group(monkeypatch):
    """torchrun's environment for rank 1 of 2 and a process group that records how it was created."""
    calls: dict = {"init": [], "set_device": []}
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: bool(calls["init"]))
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls["init"].append(kw))
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls["set_device"].append(i))
    return calls


def test_the_context_knows_the_main_rank_and_the_sharded_strategy():
    assert ctx(rank=0).is_main and not ctx(rank=1).is_main
    assert ctx(strategy="fsdp").sharded and not ctx(strategy="ddp").sharded


def test_bad_strategies_and_launches_are_refused_with_what_to_do(no_torchrun, monkeypatch):
    assert message(lambda: D.init_distributed("zero", 3)) == "unknown strategy 'zero' — use one of: none, ddp, fsdp"
    assert message(lambda: D.init_distributed("ddp", 1)) == (
        "--zero must be 2 or 3, got 1 — ZeRO-1 is DDP with sharded optimizer states: use 2 or 3"
    )
    assert message(lambda: D.init_distributed("fsdp", 2)) == (
        "--strategy fsdp needs to be launched by torchrun — "
        "run: torchrun --nproc_per_node N -m llmlab pretrain ... --strategy fsdp"
    )
    assert D.init_distributed("none", 2) is None and not D.launched_by_torchrun()
    monkeypatch.setenv("RANK", "0")
    assert not D.launched_by_torchrun()  # RANK alone is not torchrun
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert D.launched_by_torchrun() and D.init_distributed("none", 3) is None  # one process under torchrun
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert message(lambda: D.init_distributed("none", 3)) == (
        "launched by torchrun with several processes but no --strategy — pass --strategy ddp or fsdp"
    )


def test_on_cpu_the_group_is_gloo_with_the_timeout_asked_for(fake_group):
    context = D.init_distributed("fsdp", 2, device="cpu", timeout_s=7)
    assert context == D.DistContext(rank=1, world=2, local_rank=1, device=CPU, strategy="fsdp", zero=2)
    assert fake_group["init"] == [{"backend": "gloo", "timeout": datetime.timedelta(seconds=7)}]
    assert fake_group["set_device"] == []
    D.init_distributed("ddp", 3)  # an existing group is reused, not created twice
    assert len(fake_group["init"]) == 1


def test_the_default_timeout_is_five_minutes(fake_group):
    D.init_distributed("ddp", 3, device="cpu")
    assert fake_group["init"][0]["timeout"] == datetime.timedelta(seconds=300)


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_with_cuda_each_rank_takes_its_local_gpu_and_nccl(fake_group, monkeypatch, device):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    context = D.init_distributed("ddp", 3, device=device)
    assert context.device == torch.device("cuda", 1) and context.local_rank == 1
    assert fake_group["set_device"] == [1] and fake_group["init"][0]["backend"] == "nccl"


def test_by_default_a_gpu_is_used_when_there_is_one(fake_group, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.init_distributed("ddp", 3).device == torch.device("cuda", 1)


def test_cuda_is_left_alone_when_the_cpu_is_asked_for(fake_group, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert D.init_distributed("ddp", 3, device="cpu").device == CPU
    assert fake_group["set_device"] == [] and fake_group["init"][0]["backend"] == "gloo"


def test_the_local_rank_defaults_to_zero(fake_group, monkeypatch):
    monkeypatch.delenv("LOCAL_RANK")
    assert D.init_distributed("ddp", 3, device="cpu").local_rank == 0


class Block(nn.Module):
    """Named like the model's transformer block: wrap_model shards modules by that name."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)


def tiny_model() -> nn.Module:
    return nn.Sequential(Block(), nn.Linear(4, 4), Block())


@pytest.fixture
def fake_fully_shard(monkeypatch):
    import torch.distributed.fsdp as fsdp

    calls = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **kw: calls.append((module, kw)))
    return calls


@pytest.mark.parametrize("zero", [2, 3])
def test_fsdp_shards_every_block_then_the_root(fake_fully_shard, zero):
    model = tiny_model()
    assert D.wrap_model(model, ctx(strategy="fsdp", zero=zero), None) is model
    assert [module for module, _ in fake_fully_shard] == [model[0], model[2], model]
    for _, options in fake_fully_shard:
        assert options["reshard_after_forward"] is (zero == 3)
        assert options["mp_policy"].param_dtype is None and options["mp_policy"].reduce_dtype is None


@pytest.mark.parametrize("name,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_fsdp_mixed_precision_computes_low_and_reduces_in_fp32(fake_fully_shard, name, dtype):
    D.wrap_model(tiny_model(), ctx(strategy="fsdp"), name)
    for _, options in fake_fully_shard:
        assert options["mp_policy"].param_dtype == dtype and options["mp_policy"].reduce_dtype == torch.float32


def test_unknown_mixed_precision_and_mixed_precision_with_ddp_are_refused(fake_fully_shard):
    assert message(lambda: D.wrap_model(tiny_model(), ctx(strategy="fsdp"), "fp8")) == (
        "--fsdp-mixed-precision 'fp8' — use bf16 or fp16"
    )
    assert message(lambda: D.wrap_model(tiny_model(), ctx(strategy="ddp"), "bf16")) == (
        "--fsdp-mixed-precision is for --strategy fsdp — use --dtype bf16 with ddp"
    )
    assert fake_fully_shard == []


def test_ddp_wraps_the_model_with_device_ids_only_on_cuda(monkeypatch):
    import torch.nn.parallel as parallel

    made = []
    monkeypatch.setattr(parallel, "DistributedDataParallel", lambda model, **kw: made.append((model, kw)) or "ddp")
    model = tiny_model()
    assert D.wrap_model(model, ctx(strategy="ddp"), None) == "ddp"
    on_gpu = D.DistContext(rank=1, world=2, local_rank=1, device=torch.device("cuda", 1), strategy="ddp", zero=3)
    D.wrap_model(model, on_gpu, None)
    assert made == [(model, {"device_ids": None}), (model, {"device_ids": [1]})]


def test_unwrap_returns_the_model_inside_a_wrapper():
    inner = nn.Linear(2, 2)
    wrapper = nn.Module()
    wrapper.module = inner
    assert D.unwrap(wrapper) is inner and D.unwrap(inner) is inner


def test_all_reduce_mean_sums_in_float64_over_the_peers_and_divides_by_the_world(monkeypatch):
    seen = []

    def all_reduce(tensor):  # the peer holds 1.0
        seen.append((tensor.dtype, tensor.device, tensor.shape))
        tensor += 1.0

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    assert D.all_reduce_mean(1 / 3, ctx(world=2)) == (1 / 3 + 1.0) / 2  # exact only in float64
    assert seen == [(torch.float64, CPU, (1,))]
    assert D.all_reduce_mean(1 / 3, None) == 1 / 3 and len(seen) == 1


def test_barrier_and_gather_only_talk_to_peers_when_there_are_any(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "barrier", lambda: calls.append("barrier"))

    def all_gather_object(out, value):
        calls.append(len(out))
        out[:] = [value, "peer"]

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    D.barrier(None)
    assert calls == []
    D.barrier(ctx())
    assert D.gather_objects("me", None) == ["me"] and calls == ["barrier"]
    assert D.gather_objects("me", ctx(world=2)) == ["me", "peer"] and calls == ["barrier", 2]


class Shard:
    """Stands in for a DTensor: its local shard is what this rank holds."""

    def __init__(self, local: torch.Tensor) -> None:
        self.local = local

    def to_local(self) -> torch.Tensor:
        return self.local


def test_local_bytes_count_this_ranks_shard_in_its_own_dtype():
    tensors = [torch.zeros(3), None, torch.zeros(2, 5, dtype=torch.bfloat16), Shard(torch.zeros(4, dtype=torch.int8))]
    assert D.local_bytes(tensors) == 3 * 4 + 10 * 2 + 4
    assert D.local_bytes([]) == 0


def test_model_state_bytes_counts_weights_gradients_and_moments_but_not_step_counters():
    model = nn.Linear(3, 2)  # 8 parameters: 32 bytes in fp32
    optimizer = torch.optim.AdamW(model.parameters())
    assert D.model_state_bytes(model, [optimizer]) == {"weights": 32, "gradients": 0, "optimizer states": 0}
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    assert D.model_state_bytes(model, [optimizer]) == {"weights": 32, "gradients": 32, "optimizer states": 64}


def test_rng_states_are_saved_by_the_main_rank_and_restored_at_the_same_world_size(tmp_path, monkeypatch):
    assert not D.load_rng(tmp_path, None)  # nothing saved yet
    D.save_rng(tmp_path, None)
    expected = torch.rand(3)
    assert D.load_rng(tmp_path, None) and torch.equal(torch.rand(3), expected)

    torch.manual_seed(7)
    peer_state = torch.get_rng_state()
    peer_draw = torch.rand(3)

    def gather(state, context):  # the peer's state arrives only when there is a peer to ask
        return [state] if context is None else [state, peer_state][: context.world]

    monkeypatch.setattr(D, "gather_objects", gather)
    D.save_rng(tmp_path / "nothing", ctx(rank=1))  # only the main rank writes
    D.save_rng(tmp_path, ctx(rank=0))
    assert not D.load_rng(tmp_path, None)  # written by two ranks, read by one: a fresh stream
    assert D.load_rng(tmp_path, ctx(rank=1, world=2)) and torch.equal(torch.rand(3), peer_draw)


def test_a_sharded_checkpoint_round_trips_in_one_process_and_replaces_the_last(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = optimizer.state[model.weight]["exp_avg"].clone()
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "stale").write_text("from an earlier save")
    D.save_sharded(model, [optimizer], folder)
    assert not (folder / "stale").exists()

    fresh = nn.Linear(3, 2)
    fresh_optimizer = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    fresh(torch.ones(1, 3)).sum().backward()
    fresh_optimizer.step()
    D.load_sharded(fresh, [fresh_optimizer], folder)
    assert all(torch.equal(fresh.state_dict()[k], weights[k]) for k in weights)
    assert torch.equal(fresh_optimizer.state[fresh.weight]["exp_avg"], moments)
    full = D.full_model_state(fresh)
    assert full.keys() == weights.keys() and all(torch.equal(full[k], weights[k]) for k in weights)


def test_a_sharded_save_makes_its_folder_and_only_rank_0_clears_an_old_one(tmp_path, monkeypatch):
    import torch.distributed.checkpoint as dcp

    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    D.save_sharded(model, [optimizer], tmp_path / "new")  # no folder yet: nothing to clear
    assert (tmp_path / "new").is_dir()
    saved, barriers = [], []
    monkeypatch.setattr(dcp, "save", lambda state, checkpoint_id: saved.append(checkpoint_id))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "barrier", lambda: barriers.append(1))
    for rank in (1, 0):  # every rank writes its shards after the barrier; only rank 0 removes the last save
        monkeypatch.setattr(dist, "get_rank", lambda r=rank: r)
        folder = tmp_path / f"old{rank}"
        folder.mkdir()
        (folder / "stale").write_text("an earlier save")
        D.save_sharded(model, [optimizer], folder)
        assert (folder / "stale").exists() is (rank == 1)
    assert saved == [str(tmp_path / "old1"), str(tmp_path / "old0")] and barriers == [1, 1]


def test_saving_and_loading_shards_in_one_process_is_not_warned_about(tmp_path):
    import warnings

    model = nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in (D.save_sharded, D.load_sharded):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step(model, [optimizer], tmp_path / "sharded")
        assert not [w for w in caught if "torch.distributed is disabled" in str(w.message)], step.__name__


@pytest.fixture
def one_process_group(tmp_path):
    """A real gloo process group of one rank, in this process, so FSDP2 can shard a model here."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_the_full_model_state_of_a_sharded_model_is_plain_tensors(one_process_group):
    from torch.distributed.fsdp import fully_shard

    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    fully_shard(model)
    assert type(model[0].weight).__name__ == "DTensor"  # sharded: its state dict would be DTensors
    full = D.full_model_state(model)
    assert full.keys() == expected.keys()
    for name, tensor in full.items():
        assert type(tensor) is torch.Tensor and tensor.device == CPU and torch.equal(tensor, expected[name]), name
