"""The planners' formulas at small sizes, every figure worked out by hand in the comments: each term of the
memory plan (Korthikanti's activations per family and recomputation, logits, KV cache, ZeRO's shards), the
FLOPs of a step term by term, the compute budgets, and every refusal's exact message. The tests beside this
one check the same functions against published tables and the allocator; these pin each constant and branch."""

from __future__ import annotations

import pytest
import torch

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.plan import compute
from llmlab.plan.flops import flops_per_token, matmul_weights, step_flops
from llmlab.plan.memory import (
    MemoryPlan,
    accelerate_estimate,
    activation_bytes,
    cross_attention_bytes,
    kv_cache_bytes,
    logits_bytes,
    masked_positions,
    parse_size,
    plan_memory,
    scored_positions,
    token_bytes,
)


def config(preset: str, **overrides) -> ModelConfig:
    """h = 32, 4 heads of 8, MLP 128 wide (4h), 2 layers (t5: 3 decoder layers), vocabulary 100."""
    return ModelConfig.from_preset(f"{preset}-nano", n_layer=2, n_embd=32, n_head=4, vocab_size=100, **overrides)


GPT2, LLAMA, BERT, T5 = config("gpt2"), config("llama"), config("bert"), config("t5")


def message(call) -> str:
    with pytest.raises(LlmlabError) as caught:
        call()
    return str(caught.value)


# -- memory --------------------------------------------------------------------------------------------


def test_bytes_per_token_and_channel_of_each_block():
    assert token_bytes(GPT2) == 34  # 11 + 4 + (3 + 4 * 128/32): Korthikanti's GPT block
    assert token_bytes(config("gpt2", mlp="relu")) == 26  # the ReLU output is its input: 3 + 2 * 4
    assert token_bytes(LLAMA) == 54  # gated: 3 + 8 * 4 = 35, and rotary keeps q and k again: + 4
    assert token_bytes(T5) == 50  # gated, relative positions: nothing for rotary


@pytest.mark.parametrize(
    ("recompute", "expected"),
    [
        ("none", 77280),  # s*b*h = 10*3*32 = 960; 960 * (34 + 5*4*10/32) = 38640 per layer, 2 layers
        ("selective", 65280),  # 34 * 960 * 2
        ("full", 3840),  # 2 * 960 * 2
    ],
)
def test_activations_of_a_decoder(recompute, expected):
    assert activation_bytes(GPT2, 3, 10, recompute) == expected


def test_the_default_is_no_recomputation():
    assert activation_bytes(GPT2, 3, 10) == 77280


@pytest.mark.parametrize(
    ("recompute", "cross", "total"),
    [
        # decoder side 6*3*32 = 576 positions*h: 576*11 = 6336; encoder side 10*96*(2 + 4*4/4) = 5760;
        # attention weights 5*4*6*10*3 = 3600
        ("none", 15696, 108000 + 3 * (30960 + 15696)),  # encoder 960*(50 + 6.25)*2; decoder 576*(50 + 3.75)
        ("selective", 12096, 96000 + 3 * (28800 + 12096)),  # 50*960*2; 50*576
        ("full", 0, 3840 + 3 * 1152),  # 2*960*2; 2*576, the memory kept once by the encoder
    ],
)
def test_activations_of_an_encoder_decoder_with_its_cross_attention(recompute, cross, total):
    assert cross_attention_bytes(T5, 3, 6, 10, recompute) == cross
    assert activation_bytes(T5, 3, 10, recompute, target_len=6) == total


def test_an_encoder_decoders_target_defaults_to_the_input_length_and_grouped_kv_shrinks_the_memory_side():
    assert activation_bytes(T5, 3, 10, "full") == 3840 + 3 * 1920  # 2 * (10*3*32) per decoder layer
    grouped = config("t5", n_kv_head=2)
    assert cross_attention_bytes(grouped, 3, 6, 10, "selective") == 6336 + 960 * 4  # 2 + 4 * 2/4


def test_an_unknown_recomputation_is_refused():
    assert message(lambda: activation_bytes(GPT2, 1, 8, "some")) == (
        "unknown recompute mode 'some' — use one of: none, selective, full"
    )


def test_positions_the_head_scores_and_the_bytes_of_their_logits():
    assert [masked_positions(10), masked_positions(3), masked_positions(20, 0.5)] == [2, 1, 10]
    assert scored_positions(GPT2, 3, 10) == 30
    assert scored_positions(BERT, 3, 20) == 9  # 15% of 20 = 3 per row
    assert scored_positions(T5, 3, 10, 6) == 18 and scored_positions(T5, 3, 10) == 30
    assert logits_bytes(GPT2, 3, 10) == 30 * 100 * 10  # 16-bit logits, their fp32 copy, fp32 log-softmax
    assert logits_bytes(T5, 3, 10, 6) == 18 * 100 * 10


def test_kv_cache_bytes():
    per_position = 2 * 3 * 2 * 8  # keys and values, batch 3, 2 kv heads of 8 (llama)
    assert kv_cache_bytes(LLAMA, 3, 10) == 2 * 10 * per_position * 2  # 2 layers, bf16 by default
    assert kv_cache_bytes(LLAMA, 3, 10, "fp32") == 2 * 10 * per_position * 4
    assert kv_cache_bytes(LLAMA, 3, 10, "fp16") == 2 * 10 * per_position * 2
    assert kv_cache_bytes(LLAMA, 3, 10, "int8") == 2 * 10 * per_position * 2  # quantized weights, 16-bit cache
    assert kv_cache_bytes(LLAMA, 3, 10, "int4") == 2 * 10 * per_position * 2
    t5 = 2 * 3 * 4 * 8 * 2  # 4 kv heads, bf16
    assert kv_cache_bytes(T5, 3, 10, target_len=6) == 3 * (6 + 10) * t5  # 3 decoder layers: own and cross
    assert kv_cache_bytes(T5, 3, 10) == 3 * (10 + 10) * t5
    assert kv_cache_bytes(BERT, 3, 10) == 0.0


def test_training_bytes_per_parameter_by_precision_and_optimizer():
    def states(plan: MemoryPlan) -> list[float]:
        return [plan.training[k] for k in ("weights", "gradients", "optimizer states")]

    assert states(plan_memory(10, "bf16")) == [20, 20, 80]
    assert states(plan_memory(10, "fp16", "sgd")) == [20, 20, 40]
    assert states(plan_memory(10, optimizer="adam8bit")) == [40, 40, 20]
    assert states(plan_memory(10, mixed_precision=True)) == [20, 20, 120]  # + fp32 master copy: 2 + 2 + 12
    assert states(plan_memory(10, mixed_precision=True, optimizer="sgd")) == [20, 20, 80]
    assert states(plan_memory(10, mixed_precision=True, optimizer="adam8bit")) == [20, 20, 60]
    assert plan_memory(1).training["weights"] == 4  # one parameter is a model


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [("ddp", [40, 40, 80]), ("zero1", [40, 40, 20]), ("zero2", [40, 10, 20]), ("zero3", [10, 10, 20])],
)
def test_zero_stages_shard_states_then_gradients_then_weights(strategy, expected):
    plan = plan_memory(10, gpus=4, strategy=strategy)
    assert [plan.training[k] for k in ("weights", "gradients", "optimizer states")] == expected
    assert plan.model_states == sum(expected)
    buffer = plan.training.get("temporary buffers (gradient all-reduce)")
    assert buffer == (40 if strategy == "ddp" else None)  # DDP's flat fp32 gradients; ZeRO's buckets are small
    assert plan.inference == {"weights": 40}  # inference holds the whole model on each GPU


def test_one_gpu_needs_no_all_reduce_buffer_and_two_do():
    assert "temporary buffers (gradient all-reduce)" not in plan_memory(10, gpus=1).training
    assert plan_memory(10, gpus=2).training["temporary buffers (gradient all-reduce)"] == 40


def test_activations_come_from_the_formula_when_the_shape_is_known_and_the_rule_of_thumb_otherwise():
    plan = plan_memory(10, config=GPT2, batch=3, seq_len=10)
    assert plan.training["activations"] == 77280 and plan.training["logits and loss"] == 30000
    assert "activations and temporaries (rule of thumb)" not in plan.training
    assert plan.training_total == 40 + 40 + 80 + 77280 + 30000
    selective = plan_memory(10, config=T5, batch=3, seq_len=10, recompute="selective", target_len=6)
    assert selective.training["activations"] == 96000 + 3 * (28800 + 12096)
    assert selective.training["logits and loss"] == 18000
    assert plan_memory(10).training["activations and temporaries (rule of thumb)"] == 80  # 8 bytes per parameter
    assert plan_memory(10, mixed_precision=True).training_total == 160  # no rule of thumb in mixed precision
    for missing in (dict(batch=3), dict(seq_len=10), dict(batch=3, seq_len=10, config=None)):
        assert "activations" not in plan_memory(10, **{"config": GPT2, **missing}).training


def test_inference_adds_the_kv_cache_of_models_that_generate():
    plan = plan_memory(10, "bf16", config=LLAMA, batch=3, seq_len=10)
    assert plan.inference == {"weights": 20, "KV cache": 3840}
    assert plan.inference_total == 3860
    int8 = plan_memory(10, "int8", mixed_precision=True, config=LLAMA, batch=3, seq_len=10)  # trained in 16 bits
    assert int8.inference == {"weights": 10, "KV cache": 3840}
    assert plan_memory(10, "int4", mixed_precision=True).inference == {"weights": 5}
    assert plan_memory(10, "bf16", config=T5, batch=3, seq_len=10, target_len=6).inference["KV cache"] == 18432
    assert "KV cache" not in plan_memory(10, config=BERT, batch=3, seq_len=10).inference
    assert "KV cache" not in plan_memory(10, config=LLAMA, batch=3).inference


def test_adapter_weights_count_as_model_states():
    plan = MemoryPlan(training={"weights": 1.0, "adapter weights (fp32)": 2.0, "gradients": 4.0,
                                "optimizer states": 8.0, "activations": 16.0})  # fmt: skip
    assert plan.model_states == 15.0 and plan.training_total == 31.0
    assert MemoryPlan().model_states == 0 and MemoryPlan().inference_total == 0


def test_bad_plans_are_refused_with_what_to_do():
    assert message(lambda: plan_memory(10, "fp8")) == "unknown dtype 'fp8' — use one of: fp32, fp16, bf16, int8, int4"
    assert message(lambda: plan_memory(10, optimizer="lion")) == (
        "unknown optimizer 'lion' — use one of: adamw, sgd, adam8bit"
    )
    assert message(lambda: plan_memory(10, strategy="fsdp")) == (
        "unknown strategy 'fsdp' — use one of: ddp, zero1, zero2, zero3"
    )
    assert message(lambda: plan_memory(0)) == "the parameter count must be positive, got 0 — pass e.g. --params 7e9"
    assert message(lambda: plan_memory(-2.5)) == (
        "the parameter count must be positive, got -2.5 — pass e.g. --params 7e9"
    )
    assert message(lambda: plan_memory(10, gpus=0)) == "--gpus must be >= 1, got 0 — pass the number of GPUs"
    assert message(lambda: plan_memory(10, "int8")) == (
        "cannot train in int8 — train in fp32/fp16/bf16; int8/int4 are for inference"
    )
    assert plan_memory(10, "int4", mixed_precision=True).inference["weights"] == 5  # mixed precision trains in 16 bits


def test_accelerates_estimate_convention():
    assert accelerate_estimate(800.0) == {
        "fp32": 800.0, "fp16/bf16": 400.0, "int8": 200.0, "int4": 100.0, "training fp32 with Adam": 3200.0
    }  # fmt: skip


@pytest.mark.parametrize(
    ("text", "size"),
    [("80GB", 80e9), ("24GiB", 24 * 2**30), ("2MiB", 2 * 2**20), ("1TiB", 2**40), ("7MB", 7e6), ("1.5TB", 1.5e12),
     ("512B", 512), (" 16 gib ", 16 * 2**30), ("3gb", 3e9)],
)  # fmt: skip
def test_sizes_are_read_in_decimal_and_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["80", "GB", "8 0GB", "80XB", "eightGB"])
def test_unreadable_sizes_are_refused(text):
    assert message(lambda: parse_size(text)) == f"cannot read the size {text!r} — write it like 80GB or 24GiB"


# -- FLOPs ---------------------------------------------------------------------------------------------


def test_matmul_weights_per_kind_of_layer():
    # llama: q 32 + k, v 16 each (2 kv heads of 8) from h 32; output 32x32; gate|up 32 -> 256; down 128 -> 32
    assert matmul_weights(LLAMA) == {"block": 32 * 64 + 1024 + 32 * 256 + 128 * 32, "cross_query": 2048,
                                     "cross_key_value": 32 * 2 * 16, "head": 3200, "head_transform": 1024}  # fmt: skip
    assert matmul_weights(GPT2)["block"] == 12 * 32 * 32  # the classic 12 h^2
    assert matmul_weights(T5)["cross_key_value"] == 2048


def test_step_flops_of_each_family_term_by_term():
    # gpt2, batch 3, 10 tokens: 6 * 30 tokens * (2 blocks * 12288 + head 3200); 12 * 3 * 2 layers * 10 * 10 * 32
    assert step_flops(GPT2, 3, 10) == {"matmuls": 6 * 30 * 27776, "attention": 230400}
    # bert: blocks at every token, the head (and its transform) at the 2 masked positions of each row
    assert step_flops(BERT, 3, 10) == {"matmuls": 6 * 30 * 2 * 12288 + 6 * 6 * (3200 + 1024), "attention": 230400}
    # t5, 10 input and 6 target tokens: encoder 10 * 2 * 16384; decoder 6 * (3 * (16384 + 2048) + 3200) and the
    # memory's keys and values 10 * 3 * 2048; attention 12 * 3 * 32 * (2*10*10 + 3*6*6 + 3*6*10)
    assert step_flops(T5, 3, 10, 6) == {"matmuls": 18 * (327680 + 412416), "attention": 1152 * 488}
    assert step_flops(T5, 3, 10) == step_flops(T5, 3, 10, 10)


def test_flops_per_token_of_a_decoder():
    assert flops_per_token(GPT2, 10) == (6 * 10 * 27776 + 12 * 2 * 10 * 10 * 32) / 10


# -- compute budgets -----------------------------------------------------------------------------------


def test_training_and_inference_flops_and_their_units():
    assert compute.training_flops(1e9, 2e10) == 1.2e20 and compute.training_flops(1e9, 2e10, 3.0) == 6e19
    assert compute.inference_flops(1e9, 100) == 2e11
    assert compute.pf_days(8.64e19) == 1.0 and compute.pf_days(4.32e19) == 0.5
    assert compute.tokens_for_budget(1.2e20, 1e9) == 2e10 and compute.tokens_for_budget(1.2e20, 1e9, 3.0) == 4e10


def test_gpu_days_at_a_utilisation():
    day = 312e12 * 86400  # an A100 at its bf16 peak for a day
    assert compute.gpu_days(day, "A100") == pytest.approx(1.0)
    assert compute.gpu_days(day, "A100", "bf16", mfu=0.5) == pytest.approx(2.0)
    assert compute.gpu_days(day, "A100", "fp32", mfu=1.0) == pytest.approx(312 / 19.5)
    assert message(lambda: compute.gpu_days(day, "B200")) == "unknown GPU 'B200' — use one of: V100, A100, H100, H200"
    assert message(lambda: compute.gpu_days(day, "V100", "bf16")) == (
        "V100 has no bf16 peak in the table — use one of: fp32, fp16"
    )
    for mfu in (0.0, 1.01, -0.5):
        assert message(lambda m=mfu: compute.gpu_days(day, "A100", mfu=m)) == (
            f"utilisation must be in (0, 1], got {mfu} — pass e.g. --mfu 0.4"
        )


def test_chinchillas_optimum_spends_the_budget_at_the_fits_minimum():
    fit = compute.CHINCHILLA_FITS["hoffmann2022"]
    assert fit.loss(1e9, 1e10) == pytest.approx(1.69 + 406.4 / 1e9**0.34 + 410.7 / 1e10**0.28)
    budget = 1e21
    params, tokens = fit.optimal(budget)
    assert 6 * params * tokens == pytest.approx(budget)
    best = fit.loss(params, tokens)
    for factor in (0.9, 1.1):  # any other split of the same budget loses more
        assert fit.loss(params * factor, budget / (6 * params * factor)) > best
    larger, _ = fit.optimal(100 * budget)
    assert larger / params == pytest.approx(100 ** (0.28 / 0.62))  # N grows as C^(beta / (alpha + beta))


def test_twenty_tokens_per_parameter():
    params, tokens = compute.twenty_tokens_per_parameter(1.2e21)
    assert params == pytest.approx(1e9 * 10**0.5) and tokens == pytest.approx(20 * params)
    assert 6 * params * tokens == pytest.approx(1.2e21)


class FakeCuda:
    type = "cuda"


@pytest.mark.parametrize(
    ("name", "dtype", "tf32", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989.5e12),
        ("NVIDIA A100-SXM4-40GB", torch.float16, False, 312e12),
        ("NVIDIA A100-SXM4-40GB", torch.float32, True, 156e12),
        ("NVIDIA A100-SXM4-40GB", torch.float32, False, 19.5e12),
        ("Tesla V100-SXM2-16GB", torch.bfloat16, False, 0.0),  # no bf16 on a V100
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, False, 0.0),  # not in the table
    ],
)
def test_the_peak_of_the_gpu_in_use(monkeypatch, name, dtype, tf32, peak):
    gpu = FakeCuda()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: name if device is gpu else "another GPU")
    before = torch.backends.cuda.matmul.allow_tf32  # a property of torch's cuBLAS module: set, then restored
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        assert compute.accelerator_peak_flops(gpu, dtype) == peak
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    assert compute.accelerator_peak_flops(torch.device("cpu"), dtype) == 0.0
