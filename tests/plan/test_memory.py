import pytest

from llmlab.cli import main
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.plan.memory import accelerate_estimate, kv_cache_bytes, parse_size, plan_memory
from llmlab.plan.verify import verify


def test_course_table_24_bytes_per_parameter():
    plan = plan_memory(1e9)  # fp32, AdamW, the rule of thumb for activations and temporaries
    assert plan.inference["weights"] == 4e9  # 1B parameters: 4 GB to store
    assert [plan.training[k] / 1e9 for k in ("weights", "gradients", "optimizer states")] == [4, 4, 8]
    assert plan.training_total == 24e9  # ~24 GB to train, "6x"
    assert plan_memory(4e9).training_total == 96e9  # the 4B column


@pytest.mark.parametrize("strategy,expected_gb", [("ddp", 120.0), ("zero1", 31.4), ("zero2", 16.6), ("zero3", 1.88)])
def test_zero_paper_example_7_5b_on_64_gpus(strategy, expected_gb):
    plan = plan_memory(7.5e9, mixed_precision=True, gpus=64, strategy=strategy)
    digits = 2 if expected_gb < 10 else 1
    assert round(plan.model_states / 1e9, digits) == expected_gb


def test_fsdp_names_map_to_zero_stages(capsys):
    assert (
        main(
            [
                "plan",
                "memory",
                "--params",
                "7.5e9",
                "--mixed-precision",
                "--gpus",
                "64",
                "--strategy",
                "FULL_SHARD",
                "--json",
            ]
        )
        == 0
    )
    import json

    assert json.loads(capsys.readouterr().out)["model_states"] == pytest.approx(1.875e9)


def test_accelerate_convention_for_bert_base_cased():
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(vocab_size=28996))  # bert-base-cased's shape, random weights
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    estimate = accelerate_estimate(size)
    assert round(estimate["fp32"] / 2**20, 2) == 413.18
    assert round(estimate["training fp32 with Adam"] / 2**30, 2) == 1.61


def test_activation_and_kv_cache_formulas():
    config = ModelConfig.from_preset("gpt2-small", vocab_size=50257)
    s, b, h, a, L = 1024, 8, 768, 12, 12
    plan = plan_memory(124e6, mixed_precision=True, config=config, batch=b, seq_len=s)
    assert plan.training["activations"] == L * s * b * h * (34 + 5 * a * s / h)
    assert plan_memory(124e6, config=config, batch=b, seq_len=s, recompute="full").training["activations"] == (
        L * 2 * s * b * h
    )
    assert kv_cache_bytes(config, b, s, "fp16") == 2 * L * b * s * h * 2


def test_predictions_match_real_tensors_after_one_step():
    for check in verify(["gpt2-nano", "llama-nano"]):
        if check.component.startswith("activations"):
            assert 0.75 <= check.ratio <= 1.25, check
        else:
            assert check.measured == check.predicted, check  # weights, gradients, Adam moments: exact


def test_bad_inputs():
    with pytest.raises(LlmlabError, match="unknown strategy"):
        plan_memory(1e9, strategy="zero4")
    with pytest.raises(LlmlabError, match="cannot train in int8"):
        plan_memory(1e9, dtype="int8")
    with pytest.raises(LlmlabError, match="cannot read the size"):
        parse_size("eighty gigs")
    assert parse_size("80GB") == 80e9 and parse_size("24GiB") == 24 * 2**30


def test_non_positive_parameter_count_is_refused():
    with pytest.raises(LlmlabError, match="must be positive"):
        plan_memory(0)


def test_activation_formula_covers_every_family():
    bert = ModelConfig.from_preset("bert-base", vocab_size=30522)
    s, b, h, a = 512, 8, 768, 12
    plan = plan_memory(110e6, config=bert, batch=b, seq_len=s)
    assert plan.training["activations"] == 12 * s * b * h * (34 + 5 * a * s / h)  # a BERT layer is a GPT layer
    assert plan.training["logits and loss"] == b * 77 * 30522 * 10  # the head scores the 15% masked: 77 of 512
    assert "KV cache" not in plan.inference  # an encoder generates nothing

    t5 = ModelConfig.from_preset("t5-small", vocab_size=32128)  # 6+6 layers, 512 wide, 8 heads, GEGLU 1365
    S, T, h, a, i = 512, 114, 512, 8, t5.intermediate_size
    per_token = 11 + 4 + 3 + 8 * i / h  # attention, norms, gated MLP
    encoder = 6 * S * b * h * (per_token + 5 * a * S / h)
    decoder = 6 * (T * b * h * (per_token + 5 * a * T / h) + T * b * h * 11 + S * b * h * 6 + 5 * a * T * S * b)
    plan = plan_memory(60e6, config=t5, batch=b, seq_len=S, target_len=T)
    assert plan.training["activations"] == pytest.approx(encoder + decoder)
    assert plan.training["logits and loss"] == b * T * 32128 * 10
    assert plan.inference["KV cache"] == 6 * (T + S) * 2 * b * h * 4  # fp32 self- and cross-attention keys/values


@pytest.mark.parametrize("preset", ["gpt2-nano", "llama-nano", "t5-nano"])
def test_kv_cache_formula_equals_the_cache_llmlab_allocates(preset):
    import torch

    from llmlab.model import build_model

    config = ModelConfig.from_preset(preset, vocab_size=512)
    model = build_model(config).eval()
    batch, source, target = 3, 40, 24
    cache = model.new_cache(batch, target, torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        if config.family == "encoder-decoder":  # the first step computes the cross-attention keys/values
            memory = model.encode(torch.randint(0, 512, (batch, source)))
            model.decode(torch.zeros(batch, 1, dtype=torch.long), memory, cache=cache)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.keys + cache.values}
    for k, v in cache.cross.values():
        storages |= {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in (k, v)}
    if config.family == "encoder-decoder":
        assert kv_cache_bytes(config, batch, source, "bf16", target_len=target) == sum(storages.values())
    else:
        assert kv_cache_bytes(config, batch, target, "bf16") == sum(storages.values())


def test_data_parallel_adds_the_all_reduce_buffer():
    # the ZeRO paper's example: a fused fp32 gradient buffer of 6 GB for 1.5B parameters
    plan = plan_memory(1.5e9, mixed_precision=True, gpus=8, strategy="ddp")
    assert plan.training["temporary buffers (gradient all-reduce)"] == 6e9
    assert plan.model_states == 16 * 1.5e9  # the buffer is not a model state: ZeRO's figures stay
    assert "temporary buffers (gradient all-reduce)" not in plan_memory(1.5e9, gpus=1).training
    assert "temporary buffers (gradient all-reduce)" not in plan_memory(1.5e9, gpus=8, strategy="zero3").training
