"""`llmlab align`'s options: the training core's, the preference data, the loss and what trains."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.align.losses import METHODS
from llmlab.errors import LlmlabError
from llmlab.finetune.config import LoraOptions
from llmlab.options import option
from llmlab.training.config import TrainerConfig, Validated


@dataclass
class AlignOptions(Validated):
    base: str | None = option(None, "the model to align: a run folder, a Hugging Face folder or hub id")
    data: list[str] = option(help="preference pairs (prompt, chosen, rejected): .jsonl/.json/.csv/.parquet or "
                             "hf:ORG/NAME; repeatable", default_factory=list)  # fmt: skip
    split: str = option("train", "split of an hf: dataset")
    val_data: str | None = option(None, "validation pairs (default: --val-fraction of the pairs)")
    val_fraction: float = option(0.05, "share of the pairs held out for validation when --val-data is absent")
    block_size: int | None = option(None, "context of a prompt and its completion (default: the model's)")
    method: str = option("dpo", "dpo, ipo (reference-regularised), simpo or orpo (no reference model)")
    beta: float = option(0.1, "DPO/IPO/SimPO: the inverse temperature of the implicit reward; ORPO: lambda")
    label_smoothing: float = option(0.0, "DPO: the probability a preference label is flipped (conservative DPO)")
    simpo_gamma: float = option(0.5, "SimPO: the target reward margin")
    tune: str = option("lora", "what trains: lora (the reference is the base without the adapter) or full")

    def validate(self) -> None:
        super().validate()
        if self.base is None:
            raise LlmlabError("no base model", "pass one: llmlab align BASE --data prefs.jsonl --out DIR")
        if not self.data:
            raise LlmlabError("no --data", "pass preference pairs: --data prefs.jsonl")
        if self.method not in METHODS:
            raise LlmlabError(f"unknown --method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.beta <= 0:
            raise LlmlabError(f"--beta must be positive, got {self.beta}", "use e.g. --beta 0.1")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise LlmlabError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}", "use e.g. 0.1")
        if not 0.0 < self.val_fraction < 1.0:
            raise LlmlabError(f"--val-fraction must be in (0, 1), got {self.val_fraction}", "use e.g. 0.05")
        if self.tune not in ("lora", "full"):
            raise LlmlabError(f"unknown --tune {self.tune!r}", "use lora or full")


@dataclass
class AlignConfig(TrainerConfig, LoraOptions, AlignOptions):
    """Everything `llmlab align` takes. Preference optimisation moves a model little: small steps."""

    lr: float = option(5e-5, "peak learning rate (LoRA ~5e-5; full fine-tuning ~5e-7..5e-6, as in the DPO paper)")
    weight_decay: float = option(0.0, "AdamW weight decay on matrices")
    warmup_steps: int = option(10, "linear warmup steps")
    batch_size: int = option(8, "pairs per micro-batch")
    eval_interval: int = option(50, "validate every N steps")
    eval_iters: int = option(5, "validation batches per evaluation")
    out: str = option("runs/align", "run folder: the adapter (LoRA) or the model (full), metrics.jsonl")

    def validate(self) -> None:
        super().validate()
        if self.tune == "lora":
            self.lora_spec().validate()
