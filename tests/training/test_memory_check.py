"""The plan check of every run: free on CUDA, opt-in on CPU (the profiler), and quiet either way."""

from __future__ import annotations

from llmlab.cli import main

OPTIONS = ["--tokenizer", "char", "--preset", "llama-nano", "--block-size", "64", "--batch-size", "8", "--max-steps",
           "4", "--eval-interval", "100", "--eval-iters", "1", "--dtype", "bf16", "--device", "cpu"]  # fmt: skip


def pretrain(tmp_path, capfd, *extra: str) -> str:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("To be, or not to be, that is the question.\n" * 400)
    code = main(["pretrain", "--data", str(corpus), "--out", str(tmp_path / "run"), "--overwrite", *OPTIONS, *extra])
    err = capfd.readouterr().err  # file-descriptor level: the C++ allocator's warnings land here too
    assert code == 0, err
    return err


def test_a_cpu_run_does_not_profile_unless_asked(tmp_path, capfd):
    err = pretrain(tmp_path, capfd)
    assert "memory: peak" not in err
    assert "CPUAllocator" not in err and "[W" not in err


def test_asked_on_cpu_the_check_runs_without_the_profilers_noise(tmp_path, capfd):
    err = pretrain(tmp_path, capfd, "--check-memory-plan")
    (line,) = [line for line in err.splitlines() if line.startswith("memory: peak of step 3")]
    assert 0.97 <= float(line.rsplit(" ", 1)[1]) <= 1.03, line
    assert "CPUAllocator" not in err and "USDT" not in err, err
