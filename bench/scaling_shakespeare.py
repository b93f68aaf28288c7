"""`llmlab scaling` on tiny Shakespeare (characters), timed: an IsoFLOP grid of 15 pre-training runs (widths
24-96 of llama-nano's 4 blocks at 2e11, 6e11 and 2e12 FLOPs), L(N, D) = E + A/N^alpha + B/D^beta fitted with
the Chinchilla paper's approach 3 and 200 bootstrap resamples; the fitted compute-optimal tokens per parameter
is printed as a ratio to Chinchilla's ~20. The issue asks for <= 20 minutes on this 2-core CPU.

    .venv/bin/python bench/scaling_shakespeare.py            # ~12 minutes; needs the shared data
    .venv/bin/python bench/scaling_shakespeare.py OUT        # keep the runs, scaling.json and scaling.png in OUT
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
DATA = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))

from machine import describe  # noqa: E402

from llmlab.cli import main as llmlab  # noqa: E402

GRID = ["--widths", "24,32,48,64,96", "--budgets", "2e11,6e11,2e12", "--tokenizer", "char", "--bootstrap", "200"]
CHINCHILLA_TOKENS_PER_PARAMETER = 20.0


def main() -> None:
    text = DATA / "tinyshakespeare.txt"
    if not text.is_file():
        raise SystemExit(f"{text} is absent: set LLMLAB_DATA to the shared data")
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(tmp) / "scaling")
        started = time.perf_counter()
        assert llmlab(["scaling", "--data", str(text), *GRID, "--out", str(out)]) == 0
        minutes = (time.perf_counter() - started) / 60
        result = json.loads((out / "scaling.json").read_text())
    ratio = result["tokens_per_parameter"] / CHINCHILLA_TOKENS_PER_PARAMETER
    low, high = result["intervals"]["tokens_per_parameter"]
    print(f"\nllmlab scaling {' '.join(GRID)}: {len(result['runs'])} runs and the fit in {minutes:.1f} min")
    print(f"compute-optimal tokens per parameter {result['tokens_per_parameter']:.1f} [{low:.1f}, {high:.1f}] = "
          f"{ratio:.2f}x Chinchilla's ~{CHINCHILLA_TOKENS_PER_PARAMETER:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
