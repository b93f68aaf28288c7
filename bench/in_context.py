"""In-context learning, shown on a CPU: a small decoder pre-trained on a synthetic mixture of few-shot
episodes learns to answer from the examples in its context.

Every pre-training document is one episode: four random 3-letter inputs, each mapped to `left` or
`right` at random, and twelve examples of that mapping in the task's own format
(`Input: abc\\nLabel: left`). Since the mapping is redrawn for every episode, the answer to a query
can only come from the examples before it. The model is then evaluated with `llmlab evaluate` on
held-out episodes (fresh mappings, a seed the corpus never used) at 0, 1, 3 and 5 shots: at 0 shots
it can only guess (chance 50%); with k shots the query's input is among the examples with
probability 1 - (3/4)^k, so a model that reads its context perfectly would score 62.5%, 79% and 88%.

    .venv/bin/python bench/in_context.py            # ~10 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.evaluation.evaluate import evaluate_task  # noqa: E402
from llmlab.evaluation.tasks import icl_corpus, icl_task  # noqa: E402
from llmlab.load import load_checkpoint  # noqa: E402
from llmlab.pretrain.config import TrainConfig  # noqa: E402
from llmlab.pretrain.recipe import train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-time", type=float, default=480, help="seconds of pre-training")
    parser.add_argument("--episodes", type=int, default=100_000, help="pre-training documents")
    parser.add_argument("--limit", type=int, default=400, help="held-out episodes evaluated")
    parser.add_argument("--out", default="bench/out/icl", help="run folder")
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "icl.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in icl_corpus(args.episodes, seed=0)))
        config = TrainConfig(
            out=args.out, data=str(corpus), tokenizer="char", preset="llama-nano", n_embd=128, n_layer=4,
            n_head=4, n_kv_head=4, block_size=128, batch_size=32, lr=2e-3, warmup_steps=100,
            max_time=args.max_time, eval_interval=500, overwrite=True,
        )  # fmt: skip
        train(config)
    ckpt = load_checkpoint(args.out)
    results = evaluate_task(ckpt.model, ckpt.tokenizer, icl_task(), [0, 1, 3, 5], limit=args.limit, seed=0)
    print(f"\nheld-out episodes: {args.limit}; accuracy with 95% bootstrap intervals\n")
    print("| shots asked | shots that fit | accuracy (rank) | accuracy (generation) | a perfect context reader |")
    print("| --- | --- | --- | --- | --- |")
    for r in results:  # the budget may drop examples: the ceiling is for those that fit
        ceiling = 0.5 + 0.5 * (1 - 0.75**r.mean_shots_used)
        cells = [f"{r.metrics[m]:.3f} [{r.intervals[m][0]:.3f}, {r.intervals[m][1]:.3f}]" for m in r.metrics]
        print(f"| {r.shots} | {r.mean_shots_used:.1f} | {cells[0]} | {cells[1]} | {ceiling:.3f} |")
    print(
        f"\nthe same with the CLI: .venv/bin/llmlab evaluate {args.out} --task icl-synthetic "
        f"--shots 0,1,3,5 --limit {args.limit}"
    )


if __name__ == "__main__":
    main()
