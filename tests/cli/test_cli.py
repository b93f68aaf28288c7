"""Bad input gets one clear line and exit code 2, nothing half-written; the happy path works end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llmlab.cli import main
from tests.helpers import assert_one_line_error, run_cli, start_llmlab

TINY = [
    "--preset",
    "llama-nano",
    "--n-layer",
    "1",
    "--n-embd",
    "32",
    "--block-size",
    "32",
    "--batch-size",
    "4",
    "--eval-iters",
    "1",
    "--tokenizer",
    "char",
    "--dtype",
    "fp32",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "corpus.txt"
    corpus.write_text("hello world, hello llmlab.\n" * 300)
    assert main(["pretrain", "--data", str(corpus), "--out", str(root / "run"), "--max-steps", "6", *TINY]) == 0
    return root / "run"


def _as_generate_runs(run, prompts, **options):
    """What `Generator.generate` gives for `prompts`, the checkpoint loaded as `llmlab generate` loads it
    (auto device and dtype, the checkpoint's generation defaults under the options given)."""
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.load import load_checkpoint

    device = resolve_device("auto")
    ckpt = load_checkpoint(run, device=device, dtype=resolve_dtype("auto", device))
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), **options})
    return ckpt, Generator(ckpt.model, ckpt.tokenizer).generate(prompts, config)


def test_pretrain_leaves_checkpoint_metrics_and_plot(trained):
    names = {p.name for p in trained.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "metrics.jsonl",
        "loss.png",
        "trainer_state.json",
        "optimizer.safetensors",
    } <= names
    from llmlab.load import load_checkpoint

    model = json.loads((trained / "config.json").read_text())["model"]
    ckpt = load_checkpoint(trained)
    assert (model["n_layer"], model["n_embd"], model["block_size"]) == (1, 32, 32)  # the options, not the preset's
    corpus = "hello world, hello llmlab.\n"
    assert model["vocab_size"] == ckpt.tokenizer.vocab_size == len(set(corpus)) + 2  # + unknown, end-of-text
    ids = ckpt.tokenizer.encode(corpus)
    assert len(ids) == len(corpus) and ckpt.tokenizer.decode(ids) == corpus  # a character tokenizer
    state = json.loads((trained / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["tokens_seen"] == 6 * 4 * 32  # steps x batch x block
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "train_loss" in m][-1] == 6
    assert min(m["val_loss"] for m in metrics if "val_loss" in m) == pytest.approx(state["best_val_loss"], abs=1e-5)
    png = (trained / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_generate_batches_prompts_and_samples(capsys, trained):
    code, out, _ = run_cli(
        capsys,
        "generate",
        trained,
        "--prompt",
        "hello",
        "--prompt",
        "wor",
        "--max-new-tokens",
        5,
        "--num-samples",
        2,
        "--seed",
        1,
        "--json",
    )
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [("hello", 1), ("hello", 2), ("wor", 1), ("wor", 2)]
    ckpt, expected = _as_generate_runs(trained, ["hello", "wor"], max_new_tokens=5, num_samples=2, seed=1)
    flat = [c for samples in expected for c in samples]
    assert [(r["completion"], r["finish_reason"], r["tokens"]) for r in records] == [
        (c.text, c.finish_reason, len(c.token_ids)) for c in flat
    ]
    for r in records:  # the count is of the completion's tokens (end-of-sequence not included)
        assert r["tokens"] == len(ckpt.tokenizer.encode(r["completion"])) <= 5
        assert r["finish_reason"] == ("length" if r["tokens"] == 5 else "eos")
    assert len({r["completion"] for r in records}) > 1  # sampled, not one greedy text repeated


def test_prompts_file_and_stream(capsys, trained, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("hello\nwor\n")
    code, out, _ = run_cli(capsys, "generate", trained, "--prompts-file", prompts, "--greedy", "--max-new-tokens", 4)
    assert code == 0 and out.count("--- prompt") == 2
    _, expected = _as_generate_runs(trained, ["hello", "wor"], greedy=True, max_new_tokens=4)
    assert out == "".join(
        f"--- prompt {i}, sample 1 (greedy; ended by {c.finish_reason}) ---\n{c.prompt}{c.text}\n"
        for i, (c,) in enumerate(expected, 1)
    )
    code, out, _ = run_cli(
        capsys, "generate", trained, "--prompt", "hel", "--greedy", "--stream", "--max-new-tokens", 4
    )
    _, ((streamed,),) = _as_generate_runs(trained, ["hel"], greedy=True, max_new_tokens=4)
    assert code == 0 and out == f"hel{streamed.text}\n"


@pytest.mark.parametrize(
    "option,value,fragment",
    [
        ("--temperature", -1, "temperature"),
        ("--top-p", 0, "top-p"),
        ("--top-p", 1.5, "top-p"),
        ("--top-k", -1, "top-k"),
        ("--max-new-tokens", -1, "max-new-tokens"),
    ],
)
def test_invalid_sampling_values(capsys, trained, option, value, fragment):
    code, _, err = run_cli(capsys, "generate", trained, "--prompt", "hi", option, value)
    assert_one_line_error(code, err, fragment)


def test_prompt_longer_than_context(capsys, trained):
    code, _, err = run_cli(capsys, "generate", trained, "--prompt", "hello " * 20, "--max-new-tokens", 8)
    assert_one_line_error(code, err, "context window", "--truncate-prompt")
    code, out, err = run_cli(
        capsys, "generate", trained, "--prompt", "hello " * 20, "--max-new-tokens", 8, "--truncate-prompt", "--seed", 0
    )
    assert code == 0 and "warning: prompt truncated from 120 to its last 24 tokens" in err  # 32 - 8 new tokens
    _, ((c,),) = _as_generate_runs(trained, ["hello " * 20], max_new_tokens=8, truncate_prompt=True, seed=0)
    mode = "temperature 1.0, top-k off, top-p 1.0"
    # the whole prompt is printed, though the model saw its last 24 tokens
    assert out == f"--- prompt 1, sample 1 ({mode}; ended by {c.finish_reason}) ---\n{'hello ' * 20}{c.text}\n"


def test_missing_empty_and_binary_data(capsys, tmp_path):
    code, _, err = run_cli(capsys, "pretrain", "--data", tmp_path / "absent.txt", "--out", tmp_path / "r", *TINY)
    assert_one_line_error(code, err, "does not exist")
    (tmp_path / "empty.txt").write_text("")
    code, _, err = run_cli(capsys, "pretrain", "--data", tmp_path / "empty.txt", "--out", tmp_path / "r", *TINY)
    assert_one_line_error(code, err, "no usable text")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(b"\x00\x01\x02" * 100)
    code, _, err = run_cli(capsys, "pretrain", "--data", tmp_path / "bin", "--out", tmp_path / "r", *TINY)
    assert_one_line_error(code, err, "no usable text")
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_unknown_preset(capsys, tmp_path):
    code, _, err = run_cli(capsys, "pretrain", "--preset", "gpt9", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "unknown preset 'gpt9'", "llama-nano")


def test_tampered_and_incomplete_checkpoints(capsys, trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    with open(broken / "model.safetensors", "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x00\x00\x00\x01")
    code, _, err = run_cli(capsys, "generate", broken, "--prompt", "hi")
    assert_one_line_error(code, err, "checksum")
    (broken / "config.json").unlink()
    code, _, err = run_cli(capsys, "generate", broken, "--prompt", "hi")
    assert_one_line_error(code, err, "missing config.json")
    code, _, err = run_cli(capsys, "generate", tmp_path / "nothing", "--prompt", "hi")
    assert_one_line_error(code, err, "does not exist")


def test_resume_with_changed_model_config(capsys, trained):
    code, _, err = run_cli(capsys, "pretrain", "--out", trained, "--resume", "--n-embd", 64)
    assert_one_line_error(code, err, "changed model config", "n_embd")


def test_resume_takes_the_original_options(capsys, trained, tmp_path):
    import shutil

    run = tmp_path / "again"
    shutil.copytree(trained, run)
    code, _, err = run_cli(capsys, "pretrain", "--out", run, "--resume", "--max-steps", 8)
    assert code == 0, err
    assert "resuming" in err and "done: 8 steps" in err


def test_console_script_runs_as_a_module():
    src = Path(__file__).resolve().parents[2] / "src"
    result = subprocess.run(
        [sys.executable, "-m", "llmlab", "presets"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=120,
    )
    assert result.returncode == 0 and "llama-micro" in result.stdout


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    import json
    import signal

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("ctrl-c must not lose the run.\n" * 300)
    command = [
        "pretrain",
        "--data",
        str(corpus),
        "--out",
        str(tmp_path / "run"),
        "--max-steps",
        "100000",
        "--log-interval",
        "1",
        *TINY,
    ]
    with start_llmlab(*command, until="step 5") as proc:
        proc.send_signal(signal.SIGINT)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
    assert code == 130, rest  # saved and resumable, but not finished: a script must not go on
    assert "interrupted; continue with --resume" in rest
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    assert state["step"] >= 5


def test_generate_defaults_leave_room_for_a_prompt(capsys, trained):
    code, out, err = run_cli(capsys, "generate", trained, "--prompt", "hello", "--greedy")  # context 32
    assert code == 0, err
    ckpt, ((expected,),) = _as_generate_runs(trained, ["hello"], greedy=True)
    assert ckpt.generation.max_new_tokens == 16  # the default: 5 prompt tokens + 16 new fit in 32
    assert out == f"--- prompt 1, sample 1 (greedy; ended by {expected.finish_reason}) ---\nhello{expected.text}\n"
    assert expected.finish_reason == "eos" or len(expected.token_ids) == 16


def test_stop_and_prompt_files_accept_written_newlines():
    from llmlab.cli.common import unescape

    assert unescape("a\\nb\\tc") == "a\nb\tc"
    assert unescape("plain") == "plain"
