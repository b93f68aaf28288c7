"""`llmlab scaling` on a tiny grid: every run an ordinary pre-training run of the planned length, the fit and
its figure written, a rerun that trains nothing again, and bad grids refused in one line."""

import json

import pytest

from llmlab.config import ModelConfig
from llmlab.plan.model import parameter_breakdown
from tests.helpers import assert_one_line_error, run_cli

GRID = ["--widths", "16,24,32", "--budgets", "1e8,3e8,9e8", "--tokenizer", "char", "--block-size", "32",
        "--batch-size", "4", "--eval-iters", "2", "--bootstrap", "20", "--dtype", "fp32",
        "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("scaling")
    corpus = root / "corpus.txt"
    corpus.write_text(
        "".join(f"the {w} sat on the {v} mat.\n" for w in ("cat", "dog", "owl") for v in ("red", "big")) * 200
    )
    return root, corpus


def test_a_grid_trains_each_run_for_its_budget_and_fits_the_law(grid, capsys):
    root, corpus = grid
    out = root / "out"
    code, stdout, err = run_cli(capsys, "scaling", "--data", corpus, "--out", out, *GRID)
    assert code == 0, err
    result = json.loads((out / "scaling.json").read_text())
    assert len(result["runs"]) == 9 and (out / "scaling.png").read_bytes()[:4] == b"\x89PNG"
    for run in result["runs"]:
        folder = out / "runs" / run["out"].split("/")[-1]
        vocab = json.loads((folder / "config.json").read_text())["model"]["vocab_size"]
        config = ModelConfig.from_preset("llama-nano", vocab_size=vocab, n_embd=run["width"], block_size=32)
        assert run["params"] == sum(parameter_breakdown(config).values())
        assert run["tokens"] == run["steps"] * 4 * 32
        assert abs(6 * run["params"] * run["tokens"] - run["flops"]) <= 6 * run["params"] * 4 * 32 / 2  # one step
        state = json.loads((folder / "trainer_state.json").read_text())
        assert state["step"] == run["steps"]
    assert "tokens per parameter" in stdout and "Chinchilla's rule ~20" in stdout
    low, high = result["intervals"]["alpha"]
    assert low <= high and result["fit"]["alpha"] > 0


def test_a_rerun_reuses_finished_runs(grid, capsys):
    root, corpus = grid
    out = root / "out"
    weights = sorted((p, p.stat().st_mtime_ns) for p in (out / "runs").glob("*/model.safetensors"))
    code, _, err = run_cli(capsys, "scaling", "--data", corpus, "--out", out, *GRID)
    assert code == 0 and "steps," not in err  # no run announced: none trained
    assert sorted((p, p.stat().st_mtime_ns) for p in (out / "runs").glob("*/model.safetensors")) == weights


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--budgets", "1e9,x", "--widths", "16"], ["--budgets '1e9,x' is not a list of numbers"]),
        (["--budgets", "1e3", "--widths", "16,24,32,40,48"], ["not one step", "raise --budgets above"]),
        (["--budgets", "1e9", "--widths", "16,24"], ["2 runs cannot fit a law of 5 numbers"]),
        (["--budgets", "1e9", "--widths", "16,24", "--bootstrap", "5"], ["--bootstrap 5 is too few resamples"]),
    ],
)
def test_a_bad_grid_is_one_line(grid, tmp_path, capsys, args, fragments):
    root, corpus = grid
    common = ["--tokenizer", "char", "--block-size", "32", "--batch-size", "4", "--device", "cpu"]
    code, _, err = run_cli(capsys, "scaling", "--data", corpus, "--out", tmp_path / "o", *args, *common)
    assert_one_line_error(code, err, *fragments)
