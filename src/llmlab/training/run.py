"""A recipe's `train()` in one call: the session, one run per folder, resume or refuse to overwrite,
the recipe's job, the trainer. A recipe only says how to build its `Job`."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmlab.checkpoint.lock import RunLock
from llmlab.training.checkpointing import read_resumable, refuse_existing
from llmlab.training.config import TrainerConfig
from llmlab.training.loop import Job, Trainer, TrainResult
from llmlab.training.session import Session, start_session

Prepare = Callable[[Any, Session, dict[str, Any] | None], Job]  # (config, session, saved state or None) -> job


def run(
    cfg: TrainerConfig,
    prepare: Prepare,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Validate `cfg`, take the run folder, build the recipe's job (resuming the saved state with
    --resume) and train it within the budgets.

    `on_step(step, loss)` runs after every optimizer step; raising KeyboardInterrupt there stops the
    run cleanly with a checkpoint, just like Ctrl-C."""
    cfg.validate()
    cfg = cfg.with_default_budget()
    session = start_session(cfg, log)
    out = Path(cfg.out)
    with RunLock(out) if session.main else contextlib.nullcontext():  # one run per folder at a time
        saved = read_resumable(out) if cfg.resume else None
        if saved is None:
            refuse_existing(out, cfg.overwrite)
        job = prepare(cfg, session, saved)
        trainer = Trainer(cfg, session, job, saved)
        if job.description:
            session.log(job.description)
        return trainer.fit(on_step)
