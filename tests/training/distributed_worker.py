"""Run `llmlab.train` (the pre-training recipe) under torchrun for the distributed tests: argv[1] is the
TrainConfig as JSON, argv[2] (optional) a step after which to stop as Ctrl-C would, argv[3] (optional) a
rank that fails."""

import json
import sys

from llmlab.pretrain.config import TrainConfig
from llmlab.pretrain.recipe import train


def main() -> None:
    import os

    config = TrainConfig(**json.loads(sys.argv[1]))
    stop_after = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[2] != "-" else None
    failing_rank = int(sys.argv[3]) if len(sys.argv) > 3 else None

    def on_step(step: int, loss: float) -> None:
        if failing_rank is not None and int(os.environ["RANK"]) == failing_rank:
            raise RuntimeError(f"rank {failing_rank} fails on purpose at step {step}")
        if stop_after is not None and step == stop_after:
            raise KeyboardInterrupt

    train(config, on_step=on_step)


if __name__ == "__main__":
    main()
