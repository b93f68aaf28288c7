"""`llmlab distill`'s options: pre-training's (the student's data, model and training) plus the teacher's."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.distill.losses import DIVERGENCES
from llmlab.errors import LlmlabError
from llmlab.options import option
from llmlab.pretrain.config import PretrainConfig
from llmlab.training.config import Validated


@dataclass
class TeacherOptions(Validated):
    teacher: str | None = option(None, "the teacher: an llmlab checkpoint, a Hugging Face folder or hub id")
    temperature: float = option(2.0, "softens teacher and student alike; the soft term is scaled by T^2")
    alpha: float = option(0.5, "weight of the teacher's soft targets (1: those alone, 0: the labels alone)")
    divergence: str = option("forward", "forward KL(teacher||student), reverse KL(student||teacher), or jsd")
    teacher_cache: str | None = option(
        None,
        "keep the teacher's top-k logits of every training batch in this folder; a later run with the same "
        "data, seed and batch shape reads them instead of running the teacher (forward KL over the top k)",
    )
    teacher_top_k: int = option(
        32, "logits per position kept in --teacher-cache (at least the vocabulary: whole rows, no ids)"
    )

    def validate(self) -> None:
        super().validate()
        if not self.teacher:
            raise LlmlabError("no teacher given", "pass --teacher CKPT (an llmlab checkpoint or Hugging Face model)")
        if self.temperature <= 0 or not 0 <= self.alpha <= 1:
            raise LlmlabError(f"--temperature {self.temperature}, --alpha {self.alpha}",
                              "use a temperature > 0 and an alpha in [0, 1]")  # fmt: skip
        if self.teacher_cache and (self.divergence != "forward" or self.teacher_top_k < 1):
            settings = f"--divergence {self.divergence}, --teacher-top-k {self.teacher_top_k}"
            raise LlmlabError(f"--teacher-cache with {settings}",
                              "the cache holds the teacher's top k (k >= 1): use --divergence forward")  # fmt: skip
        if self.divergence not in DIVERGENCES:
            raise LlmlabError(f"unknown --divergence {self.divergence!r}", f"use one of {', '.join(DIVERGENCES)}")


@dataclass
class DistillConfig(PretrainConfig, TeacherOptions):
    """Everything `llmlab distill` takes: the student is built from --preset (or --init), on the teacher's
    tokenizer, and trained on --data with the family's own objective."""
