"""Distillation, a recipe on the training core: pre-training's data, batches and student, with a loss that
adds the teacher's soft targets (`distill/losses.py`). The teacher is frozen, on the student's device, and
read with the same tokenizer as the student, which is the teacher's own.

    llmlab distill --teacher runs/big --preset llama-micro --data corpus.txt --out runs/small --max-time 600
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

from llmlab.distill.config import DistillConfig
from llmlab.distill.losses import distillation_loss, labelled_logits
from llmlab.distill.teacher_cache import BATCH_FIELDS, TeacherCache, cached_batches, teacher_identity
from llmlab.errors import LlmlabError
from llmlab.load import load_checkpoint
from llmlab.pretrain.recipe import prepare_job
from llmlab.tokenizer import tokenizer_fingerprint
from llmlab.training.loop import Job, TrainResult
from llmlab.training.run import run
from llmlab.training.session import Session


def distill(cfg: DistillConfig, on_step: Callable[[int, float], None] | None = None,
            log: Callable[[str], None] | None = None) -> TrainResult:  # fmt: skip
    """Train the student as `cfg` says; returns the losses seen and where the checkpoint is."""
    return run(cfg, prepare_distillation, on_step, log)


def prepare_distillation(cfg: DistillConfig, session: Session, saved: dict[str, Any] | None) -> Job:
    teacher = load_checkpoint(cfg.teacher, device=session.device)
    family = cfg.resolved_family()
    if teacher.model.config.family != family:
        raise LlmlabError(f"the teacher is a {teacher.model.config.family} model and the student a {family}",
                          "distil into a student of the teacher's family (--family or --preset)")  # fmt: skip
    job = prepare_job(cfg, session, saved, tokenizer=teacher.tokenizer)
    student_tokenizer = job.checkpointer.tokenizer
    if tokenizer_fingerprint(student_tokenizer) != tokenizer_fingerprint(teacher.tokenizer):
        raise LlmlabError(f"the student ({cfg.init or cfg.out}) reads text with another tokenizer than the teacher",
                          "start the student from a preset (it takes the teacher's tokenizer)")  # fmt: skip
    student_block, teacher_block = job.model.config.block_size, teacher.model.config.block_size
    if student_block > teacher_block:
        raise LlmlabError(f"the student reads {student_block} positions, the teacher only {teacher_block}",
                          f"pass --block-size {teacher_block} (or less)")  # fmt: skip
    if job.model.config.vocab_size != teacher.model.config.vocab_size:
        sizes = f"{job.model.config.vocab_size} entries, the teacher's {teacher.model.config.vocab_size}"
        raise LlmlabError(f"the student's vocabulary has {sizes}", "use a student with the teacher's vocabulary")
    frozen = teacher.model.eval().requires_grad_(False)
    session.log(f"teacher: {cfg.teacher}, {sum(p.numel() for p in frozen.parameters()) / 1e6:.2f}M parameters; "
                f"{cfg.divergence} divergence at temperature {cfg.temperature}, alpha {cfg.alpha}")  # fmt: skip
    loss = functools.partial(distillation_loss, frozen, cfg.temperature, cfg.alpha, cfg.divergence)
    batches = job.batches
    if cfg.teacher_cache:
        key = {**{f: getattr(cfg, f) for f in BATCH_FIELDS}, **teacher_identity(cfg.teacher),
               "top_k": min(cfg.teacher_top_k, teacher.model.config.vocab_size),  # any k >= V: whole rows
               "world": session.world,
               "rows_shape": [job.model.config.block_size, cfg.batch_size]}  # fmt: skip
        cache = TeacherCache(cfg.teacher_cache, key)
        rank = session.ctx.rank if session.ctx is not None else 0
        batches = cached_batches(job.batches, cache, cfg.teacher_top_k,
                                 lambda b: labelled_logits(frozen, b.to(session.device)), rank)  # fmt: skip
        session.log(f"teacher cache: {cache.folder} (top {cfg.teacher_top_k} logits per position)")
    method = f"{cfg.divergence} KL at T={cfg.temperature:g}, alpha {cfg.alpha:g}, from teacher {cfg.teacher}"
    stage = dataclasses.replace(job.stage, kind="distillation", method=method)  # the teacher's FLOPs not counted
    return dataclasses.replace(job, loss=loss, batches=batches, planned_peak=None, stage=stage)
