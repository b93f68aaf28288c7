"""`llmlab finetune` on the training core: LoRA leaves the base untouched and resumes exactly, the
adapter folder names its base and refuses another, full fine-tuning writes a checkpoint, an
encoder-decoder learns from its targets, and bad options are one line with nothing written."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from llmlab.checkpoint.adapter import weights_fingerprint
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.finetune.config import FinetuneConfig
from llmlab.finetune.recipe import finetune
from llmlab.load import load_checkpoint, merged_with_adapter
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

RECORDS = [{"instruction": "Add the numbers.", "input": f"{a} + {b}", "output": str(a + b)}
           for a in range(6) for b in range(6)]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny decoder and encoder-decoder base (char tokenizers) and an instruction file."""
    root = tmp_path_factory.mktemp("ft")
    texts = [SAMPLE_TEXT, "Below is an instruction that describes a task. Write a response #:0123456789+"]
    for style, family in (("llama", "decoder"), ("t5", "encoder-decoder")):
        tok = train_tokenizer(texts, kind="char", family=family)
        model = tiny_model(style, vocab_size=tok.vocab_size, block_size=256)
        if family == "encoder-decoder":
            model.config.decoder_start_token_id = tok.pad_id
        save_checkpoint(root / style, model, tok)
    (root / "add.jsonl").write_text("\n".join(json.dumps(r) for r in RECORDS) + "\n")
    seven = [{"prompt": f"{a}+{a}=", "completion": "7"} for a in range(10)]  # short: a frozen random model
    (root / "seven.jsonl").write_text("\n".join(json.dumps(r) for r in seven) + "\n")  # hears a soft prompt
    return root


def options(folders, out, **overrides) -> FinetuneConfig:
    fields = dict(base=str(folders / "llama"), data=[str(folders / "add.jsonl")], out=str(out), batch_size=4,
                  max_steps=8, eval_interval=4, eval_iters=2, log_interval=2, lr=3e-3, device="cpu", dtype="fp32",
                  lora_targets=["all-linear"])  # fmt: skip
    return FinetuneConfig(**{**fields, **overrides})


def quiet(line: str) -> None:
    pass


def test_lora_trains_the_adapter_only_and_its_folder_names_the_base(folders, tmp_path):
    result = finetune(options(folders, tmp_path / "lora"), log=quiet)
    assert result.train_losses[8] < result.train_losses[1]
    base = load_checkpoint(folders / "llama").model
    assert (
        weights_fingerprint(base)
        == json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["base"]["fingerprint"]
    )  # the base on disk is what the adapter says (and it was never written to)
    assert not (tmp_path / "lora" / "model.safetensors").exists()
    tuned = load_checkpoint(tmp_path / "lora").model  # the adapter folder alone: base + adapter, merged
    ids = torch.randint(0, base.config.vocab_size, (1, 12))
    with torch.no_grad():
        assert (tuned(ids) - base(ids)).abs().max() > 1e-3  # the adapter changed something
        merged = merged_with_adapter(tmp_path / "lora").model
        assert torch.equal(tuned(ids), merged(ids))


def test_lora_resumes_exactly(folders, tmp_path):
    whole = finetune(options(folders, tmp_path / "a", lora_dropout=0.1), log=quiet)

    def stop_at_4(step: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    first = finetune(options(folders, tmp_path / "b", lora_dropout=0.1), on_step=stop_at_4, log=quiet)
    assert first.interrupted and first.step == 4
    resumed = finetune(options(folders, tmp_path / "b", lora_dropout=0.1, resume=True), log=quiet)
    assert sorted(resumed.train_losses) == [5, 6, 7, 8]
    assert [resumed.train_losses[s] for s in range(5, 9)] == [whole.train_losses[s] for s in range(5, 9)]


@pytest.mark.compiles
def test_compiled_lora_trains_like_eager(folders, tmp_path):
    """`--compile` (the training core's torch.compile of the model) through LoRA's own autograd function:
    dynamo captures graphs, and the losses and adapter are eager's up to the compiled kernels' rounding."""
    from torch._dynamo.utils import counters

    eager = finetune(options(folders, tmp_path / "eager", max_steps=3), log=quiet)
    graphs = counters["stats"]["unique_graphs"]
    compiled = finetune(options(folders, tmp_path / "compiled", max_steps=3, compile=True), log=quiet)
    assert counters["stats"]["unique_graphs"] > graphs  # it was compiled, not run eagerly
    for step in (1, 2, 3):
        assert compiled.train_losses[step] == pytest.approx(eager.train_losses[step], rel=1e-4)
    ours, theirs = (load_file(str(tmp_path / run / "adapter.safetensors")) for run in ("compiled", "eager"))
    assert ours.keys() == theirs.keys()
    for name in ours:  # Adam's first steps move each weight by ~lr whatever its gradient's size, so a rounding
        # difference in a near-zero gradient can flip a step: within 3 steps of lr 3e-3, not bit-equal
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=5e-3)


def test_an_adapter_on_another_base_is_refused(folders, tmp_path, capsys):
    finetune(options(folders, tmp_path / "lora", max_steps=2), log=quiet)
    other = tmp_path / "other"
    ckpt = load_checkpoint(folders / "llama")
    with torch.no_grad():
        ckpt.model.lm_head.weight.add_(0.01)  # same shapes, other weights
    save_checkpoint(other, ckpt.model, ckpt.tokenizer)
    code, _, err = run_cli(capsys, "generate", other, "--adapter", tmp_path / "lora", "--prompt", "1")
    assert_one_line_error(code, err, "was trained on another base")


def test_full_fine_tuning_writes_a_checkpoint_and_packing_trains(folders, tmp_path):
    result = finetune(options(folders, tmp_path / "full", method="full", lr=1e-3, packing=True), log=quiet)
    assert result.train_losses[8] < result.train_losses[1]
    assert (tmp_path / "full" / "model.safetensors").is_file()
    assert load_checkpoint(tmp_path / "full").model.config == load_checkpoint(folders / "llama").model.config


def test_an_encoder_decoder_learns_its_targets_with_lora(folders, tmp_path):
    lines = []
    result = finetune(options(folders, tmp_path / "t5", base=str(folders / "t5"), max_steps=10), log=lines.append)
    assert result.train_losses[10] < result.train_losses[1]
    assert any("method lora" in line and "encoder-decoder" in line for line in lines)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--lora-r", "0"], ["--lora-r must be at least 1"]),
        (["--lora-targets", "q_proj"], ["matches no linear layer", "attn.qkv"]),
        (["--method", "prefix"], ["unknown --method"]),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(folders, tmp_path, capsys, args, fragments):
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "finetune", folders / "llama", "--data", folders / "add.jsonl", "--out", out,
                           "--max-steps", "1", *args)  # fmt: skip
    assert_one_line_error(code, err, *fragments)
    assert not out.exists() or not any(out.iterdir())


def test_a_malformed_line_is_named(folders, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(RECORDS[0]) + "\n" + '{"instruction": "x", "output": \n')
    code, _, err = run_cli(capsys, "finetune", folders / "llama", "--data", bad, "--out", tmp_path / "o")
    assert_one_line_error(code, err, "bad.jsonl:2 is not valid JSON")


def test_qlora_trains_adapters_on_an_nf4_base_and_loads_on_it(folders, tmp_path):
    from llmlab.model.lora import LoRALinear
    from llmlab.model.quantize import NF4Linear

    result = finetune(options(folders, tmp_path / "q", method="qlora", max_steps=10), log=quiet)
    assert result.train_losses[10] < result.train_losses[1]
    tuned = load_checkpoint(tmp_path / "q").model
    layers = [m for m in tuned.modules() if isinstance(m, LoRALinear)]
    assert layers and all(isinstance(m.base, NF4Linear) for m in layers)  # it runs on what it was trained on
    ids = torch.randint(0, tuned.config.vocab_size, (1, 8))
    with torch.no_grad():
        float_base = merged_with_adapter(tmp_path / "q").model  # merged into the original, float base
        assert (tuned(ids).float() - float_base(ids)).abs().max() < 0.5  # NF4 rounding apart, the same model


def test_prompt_tuning_trains_a_soft_prompt_only_and_resumes_exactly(folders, tmp_path):
    seven = [str(folders / "seven.jsonl")]
    fields = dict(method="prompt-tuning", prompt_tokens=4, prompt_init="7+", lr=0.3, data=seven, val_fraction=0.2)
    whole = finetune(options(folders, tmp_path / "a", **fields), log=quiet)
    assert whole.train_losses[8] < whole.train_losses[1] - 0.03
    tensors = load_file(tmp_path / "a" / "adapter.safetensors")
    assert list(tensors) == ["soft_prompt"] and tensors["soft_prompt"].shape[0] == 4

    def stop_at_4(step: int, loss: float) -> None:
        if step == 4:
            raise KeyboardInterrupt

    finetune(options(folders, tmp_path / "b", **fields), on_step=stop_at_4, log=quiet)
    resumed = finetune(options(folders, tmp_path / "b", resume=True, **fields), log=quiet)
    assert [resumed.train_losses[s] for s in range(5, 9)] == [whole.train_losses[s] for s in range(5, 9)]
    assert load_checkpoint(tmp_path / "b").model.soft_prompt.shape == (4, 32)


def test_forgetting_is_measured_before_and_after_on_the_same_text(folders, tmp_path):
    from llmlab.evaluation.perplexity import text_perplexity

    text = tmp_path / "val.txt"
    text.write_text(SAMPLE_TEXT)
    lines: list[str] = []
    finetune(options(folders, tmp_path / "f", method="full", eval_forgetting=str(text)), log=lines.append)
    record = json.loads((tmp_path / "f" / "metrics.jsonl").read_text().splitlines()[-1])
    base, tuned = load_checkpoint(folders / "llama"), load_checkpoint(tmp_path / "f")
    assert record["forgetting_before_perplexity"] == pytest.approx(
        text_perplexity(base.model, base.tokenizer, SAMPLE_TEXT)[0]
    )
    assert record["forgetting_after_perplexity"] == pytest.approx(
        text_perplexity(tuned.model, tuned.tokenizer, SAMPLE_TEXT)[0]
    )
    assert record["forgetting_after_perplexity"] != record["forgetting_before_perplexity"]
    assert any(line.startswith("forgetting: | perplexity |") for line in lines)


def test_an_adapter_is_quantized_merged_and_a_soft_prompt_is_refused_for_merging(folders, tmp_path, capsys):
    finetune(options(folders, tmp_path / "lora", max_steps=2), log=quiet)
    code, out, _ = run_cli(capsys, "quantize", folders / "llama", tmp_path / "q", "--adapter", tmp_path / "lora",
                           "--to", "int8")  # fmt: skip
    assert code == 0 and load_checkpoint(tmp_path / "q").model.config.n_layer == 2
    finetune(options(folders, tmp_path / "pt", max_steps=1, method="prompt-tuning", prompt_tokens=2), log=quiet)
    code, _, err = run_cli(capsys, "merge", tmp_path / "pt", tmp_path / "m")
    assert_one_line_error(code, err, "is a soft prompt")
    assert not (tmp_path / "m").exists()


def test_lora_under_ddp_trains_like_one_process_with_the_global_batch(folders, tmp_path):
    import os
    import subprocess
    import sys

    single = finetune(options(folders, tmp_path / "one", batch_size=4, max_steps=4, lora_dropout=0.0), log=quiet)
    flags = ["--data", folders / "add.jsonl", "--batch-size", "2", "--max-steps", "4", "--eval-interval", "4",
             "--eval-iters", "2", "--log-interval", "1", "--lr", "3e-3", "--lora-targets", "all-linear",
             "--lora-dropout", "0", "--dtype", "fp32", "--device", "cpu", "--strategy", "ddp"]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "llmlab",
               "finetune", folders / "llama", "--out", tmp_path / "two", *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    ddp = {r["step"]: r["train_loss"] for r in records if "train_loss" in r}
    assert ddp == pytest.approx({s: round(single.train_losses[s], 5) for s in range(1, 5)}, abs=2e-5)
    memory = next(r for r in records if "memory" in r)
    assert memory["memory"][0]["gradients"] == pytest.approx(memory["planned"]["gradients"], rel=0.01)


def test_evaluating_with_an_adapter_writes_beside_the_adapter_not_the_base(folders, tmp_path, capsys):
    finetune(options(folders, tmp_path / "lora", max_steps=2), log=quiet)
    task = tmp_path / "sums.jsonl"
    task.write_text("\n".join(json.dumps({"text": f"{a} + {a}", "label": str(a % 2)}) for a in range(8)))
    code, _, err = run_cli(capsys, "evaluate", folders / "llama", "--adapter", tmp_path / "lora", "--task", task,
                           "--shots", "0")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "lora" / "eval-sums" / "results.json").is_file()
    assert not (folders / "llama" / "eval-sums").exists()


@pytest.mark.parametrize(
    "style,method,dtype",
    [("llama", "lora", "bf16"), ("llama", "qlora", "fp32"), ("llama", "full", "bf16")],
)
def test_a_run_checks_its_step_peak_against_plan_memory(folders, tmp_path, style, method, dtype):
    """`--check-memory-plan`: the allocator's peak of step 3 next to `plan memory --method`'s prediction
    for the batch that step trained on (response-only rows, padded), with the adapters' dropout on. A base
    wide enough that the allocator's fixed costs are noise. Not an encoder-decoder: its padded input's
    mask combined with T5's bias is not modelled (measured 10% over the plan)."""
    tok = load_checkpoint(folders / style).tokenizer
    model = tiny_model(style, vocab_size=tok.vocab_size, block_size=256, n_embd=256, n_layer=4, n_head=4)
    save_checkpoint(tmp_path / "base", model, tok)
    lines = []
    cfg = options(folders, tmp_path / "out", base=str(tmp_path / "base"), method=method, dtype=dtype, max_steps=4,
                  check_memory_plan=True, lora_dropout=0.05)  # fmt: skip
    finetune(cfg, log=lines.append)
    (line,) = [line for line in lines if line.startswith("memory: peak of step 3")]
    ratio = float(line.rsplit(" ", 1)[1])
    assert 0.97 <= ratio <= 1.05, line
