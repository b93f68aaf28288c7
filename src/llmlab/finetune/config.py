"""`llmlab finetune`'s options: the training core's, plus the base model, the instruction data and how
they are turned into rows, and the method (full, LoRA, QLoRA) with its settings."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.errors import LlmlabError
from llmlab.finetune.examples import FORMATS
from llmlab.model.lora import LoraSpec
from llmlab.options import option
from llmlab.training.config import TrainerConfig, Validated

METHODS = ("full", "lora", "qlora", "prompt-tuning", "linear-probe")
HEAD_TASKS = ("classify", "multilabel", "regress", "tag")  # an encoder with a task head (model/heads.py)
TASK_METHODS = ("full", "lora", "linear-probe")


@dataclass
class FinetuneData(Validated):
    """Where the examples come from and how they become token rows."""

    base: str | None = option(None, "the model to adapt: a run folder, a Hugging Face folder or hub id")
    data: list[str] = option(
        help="examples: .jsonl/.json/.csv/.parquet, hf:ORG/NAME, or task:dialogsum / task:sentiment (the shared "
        "data); repeat to mix several, FILE:W takes its examples W times per epoch",
        default_factory=list,
    )
    split: str = option("train", "split of an hf: dataset")
    val_data: str | None = option(None, "validation examples (default: --val-fraction of the training examples)")
    val_fraction: float = option(0.05, "share of the examples held out for validation when --val-data is absent")
    format: str | None = option(None, f"{', '.join(FORMATS)} (default: detected from the first record)")
    template: str | None = option(None, "a prompt template: dialogsum, sentiment, or a file ('Q: {q}\\nA: {a}')")
    train_on_prompt: bool = option(False, "decoders: take the loss on the prompt's tokens too")
    packing: bool = option(False, "decoders: pack several examples per row (they do not attend to each other)")
    drop_long: bool = option(False, "drop examples longer than the context (default: cut the prompt's middle)")
    block_size: int | None = option(None, "context length of the rows (default and maximum: the model's)")
    eval_forgetting: str | None = option(
        None, "a text file (the pre-training validation text): its perplexity before and after fine-tuning"
    )
    forgetting_task: str | None = option(
        None, "a task fine-tuning did not train (sentiment, dialogsum, a .jsonl): its score before and after"
    )
    forgetting_limit: int = option(200, "examples of --forgetting-task scored")

    def validate(self) -> None:
        super().validate()
        if self.base is None:
            raise LlmlabError("no base model", "pass one: llmlab finetune BASE --data FILE --out DIR")
        if not self.data:
            raise LlmlabError("no --data", "pass examples: --data train.jsonl (or task:dialogsum)")
        if not 0.0 < self.val_fraction < 1.0:
            raise LlmlabError(f"--val-fraction must be in (0, 1), got {self.val_fraction}", "use e.g. 0.05")
        if self.format is not None and self.format not in FORMATS:
            raise LlmlabError(f"unknown --format {self.format!r}", f"use one of {', '.join(FORMATS)}")


@dataclass
class TaskOptions(Validated):
    """An encoder fine-tuned with a task head instead of instruction-tuned."""

    task: str | None = option(
        None, "encoders: classify (one label), multilabel, regress (a score) or tag (a label per word, BIO)"
    )
    text_field: str = option("text", "--task classify/multilabel/regress: the records' text field")
    label_field: str = option("label", "--task classify/multilabel/regress: the records' label field")
    labels: list[str] = option(
        help="the labels in order, comma-separated or repeated (default: those of the training data, sorted)",
        default_factory=list,
    )
    class_weights: str | None = option(None, "--task classify: 'balanced' (inverse frequency) or W1,W2,... per label")

    def validate(self) -> None:
        super().validate()
        if self.task is not None and self.task not in HEAD_TASKS:
            raise LlmlabError(f"unknown --task {self.task!r}", f"use one of {', '.join(HEAD_TASKS)}")
        if self.class_weights is not None and self.task != "classify":
            raise LlmlabError("--class-weights is for --task classify", "leave it out")

    def label_list(self) -> list[str]:
        return [label for item in self.labels for label in item.split(",") if label]


@dataclass
class LoraOptions(Validated):
    """LoRA's settings, shared by every recipe that can train an adapter."""

    lora_r: int = option(8, "LoRA rank")
    lora_alpha: float = option(16.0, "LoRA scale numerator: the update is scaled by alpha / r")
    lora_dropout: float = option(0.05, "dropout on the LoRA input")
    lora_targets: list[str] = option(
        help="attention, qv, mlp, all-linear, or layer names/patterns (attn.qkv, mlp.*); repeatable "
        "(default attention)",
        default_factory=list,
    )
    rslora: bool = option(False, "rank-stabilised scaling alpha / sqrt(r)")

    def lora_spec(self) -> LoraSpec:
        targets = tuple(t for item in self.lora_targets for t in item.split(",") if t) or ("attention",)
        return LoraSpec(self.lora_r, self.lora_alpha, self.lora_dropout, targets, self.rslora)


@dataclass
class MethodOptions(LoraOptions):
    """Full fine-tuning or an adapter, and the adapter's settings."""

    method: str = option("lora", "full, lora, qlora (LoRA on a frozen NF4 base), prompt-tuning (soft prompt) or "
                         "linear-probe (--task: the head alone on a frozen encoder)")  # fmt: skip
    merge: bool = option(False, "LoRA: also write the base with the adapter merged in, to OUT/merged")
    keep_sparsity: bool = option(False, "full: keep the zeros of a pruned base (recovery fine-tuning after "
                                 "`llmlab prune`; unstructured or 2:4)")  # fmt: skip
    prompt_tokens: int = option(20, "prompt tuning: trainable vectors in front of every input")
    prompt_init: str | None = option(
        None, "prompt tuning: a text whose token embeddings start the prompt (default: random vocabulary tokens)"
    )

    def validate(self) -> None:
        super().validate()
        if self.method not in METHODS:
            raise LlmlabError(f"unknown --method {self.method!r}", f"use one of {', '.join(METHODS)}")
        if self.method in ("lora", "qlora"):
            self.lora_spec().validate()
        if self.prompt_tokens < 1:
            raise LlmlabError(f"--prompt-tokens must be at least 1, got {self.prompt_tokens}", "use e.g. 20")
        if self.keep_sparsity and self.method != "full":
            raise LlmlabError(f"--keep-sparsity is for --method full, not {self.method}",
                              "a LoRA or other adapter update is dense once merged: use --method full")  # fmt: skip


@dataclass
class FinetuneConfig(TrainerConfig, MethodOptions, TaskOptions, FinetuneData):
    """Everything `llmlab finetune` takes. Fine-tuning defaults: a smaller learning rate and budget."""

    lr: float = option(2e-4, "peak learning rate (LoRA likes ~1e-4..1e-3, full fine-tuning ~1e-5..1e-4)")
    weight_decay: float = option(0.0, "AdamW weight decay on matrices")
    warmup_steps: int = option(10, "linear warmup steps")
    batch_size: int = option(8, "examples (rows) per micro-batch")
    eval_interval: int = option(50, "validate every N steps")
    eval_iters: int = option(5, "validation batches per evaluation")
    out: str = option("runs/finetune", "run folder: the adapter (LoRA) or the model (full), metrics.jsonl")

    def validate(self) -> None:
        super().validate()
        if self.task is not None and self.method not in TASK_METHODS:
            raise LlmlabError(f"--method {self.method} is not for --task {self.task}",
                              f"use one of {', '.join(TASK_METHODS)}")  # fmt: skip
        if self.task is None and self.method == "linear-probe":
            raise LlmlabError("--method linear-probe trains a task head", "add --task classify or --task tag")
        instruction = {"--format": self.format, "--template": self.template, "--train-on-prompt": self.train_on_prompt,
                       "--drop-long": self.drop_long}  # fmt: skip
        task_only = {"--text-field": self.text_field != "text", "--label-field": self.label_field != "label",
                     "--labels": self.labels, "--class-weights": self.class_weights}  # fmt: skip
        given = [flag for flag, value in (instruction if self.task else task_only).items() if value]
        if given:
            what = "instruction tuning" if self.task else "--task"
            raise LlmlabError(f"{given[0]} is for {what}", "leave it out")
