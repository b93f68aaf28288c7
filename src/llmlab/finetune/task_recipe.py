"""`llmlab finetune BASE --task classify|multilabel|regress|tag`: an encoder with a task head, on the
training core. The head (model/heads.py) is added to the base encoder (its masked-LM head, if any, is
left behind); `--method full` trains everything, `lora` the adapters and the head (the head is new, so
it always trains, as PEFT's `modules_to_save` does), `linear-probe` the head alone on a frozen encoder.

Losses: cross-entropy (optionally class-weighted) for one label, binary cross-entropy per label for
several, mean squared error for a score, and token cross-entropy on each word's first sub-word for tags;
accuracy is logged beside the loss where it means something.
"""

from __future__ import annotations

import dataclasses
import functools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmlab.checkpoint.adapter import AdapterInfo, weights_fingerprint
from llmlab.checkpoint.folder import Checkpoint, read_quantization
from llmlab.checkpoint.lineage import DataSource, Stage
from llmlab.data.objectives import IGNORE, Batch
from llmlab.data.tagging import check_bio
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.finetune.config import FinetuneConfig
from llmlab.finetune.task_data import (
    TaskRow,
    label_names,
    tag_rows,
    tagged_examples,
    task_batches,
    text_examples,
    text_rows,
)
from llmlab.load import load_checkpoint
from llmlab.model.lora import LoraSpec, add_lora, trainable_counts
from llmlab.model.task_model import with_task_head
from llmlab.training.adapter_checkpointing import run_checkpointer
from llmlab.training.loop import Job
from llmlab.training.session import Session


def task_loss(model: nn.Module, batch: Batch, normalizer: float | None = None, *, task: str,
              class_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    """The task's loss (mean, or sum / normalizer across ranks) and its accuracy where it has one."""
    logits, labels = model(batch.inputs, batch.attention_mask).float(), batch.labels  # `_TaskForward`'s
    reduction = "mean" if normalizer is None else "sum"
    metrics: dict[str, float] = {}
    if task == "regress":
        loss = F.mse_loss(logits.squeeze(-1), labels, reduction=reduction)
    elif task == "multilabel":
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction=reduction)
        metrics["accuracy"] = float(((logits > 0) == (labels > 0.5)).float().mean())
    else:
        flat, target = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        weight = None if class_weights is None else class_weights.to(logits.device)
        loss = F.cross_entropy(flat, target, weight=weight, ignore_index=IGNORE, reduction=reduction)
        scored = target != IGNORE
        metrics["accuracy"] = float((flat.argmax(-1)[scored] == target[scored]).float().mean())
    return (loss if normalizer is None else loss / normalizer), metrics


def prepare_task_job(cfg: FinetuneConfig, session: Session, saved: dict[str, Any] | None) -> Job:
    """The base encoder with its new head, the task's rows, and the method's trainable parameters."""
    base = _load_encoder(cfg)
    block = min(cfg.block_size or base.model.config.block_size, base.model.config.block_size)
    train, val, labels = _rows(cfg, base, block, session.log)
    fingerprint = weights_fingerprint(base.model)
    torch.manual_seed(cfg.seed)
    model = with_task_head(base.model.float(), cfg.task, labels).train()
    _start_pooler(cfg, model, session.log)
    info = _method(cfg, model, fingerprint)
    model.to(session.device)
    forward = session.wrap(_TaskForward(model), cfg.fsdp_mixed_precision, f"{cfg.batch_size} rows per rank")
    pad = family_spec(model.config).pad_id(base.tokenizer)
    batches = task_batches(train, val, cfg.task, cfg.batch_size * session.world, cfg.grad_accum, cfg.seed, pad,
                           session.rows(cfg.batch_size))  # fmt: skip
    weights = _class_weights(cfg, train, labels, session.log)
    loss = functools.partial(task_loss, task=cfg.task, class_weights=weights)
    out = Path(cfg.out)
    checkpointer = run_checkpointer(out, base.tokenizer, base.generation, session, info)
    trainable, total = trainable_counts(model)
    description = (f"model: {cfg.base} ({model.config.family}) + a {cfg.task} head over {len(labels) or 1} output(s), "
                   f"method {cfg.method}: {trainable:,} of {total:,} parameters train "
                   f"({100 * trainable / total:.2f}%); context {block}")  # fmt: skip
    stage = Stage(kind="fine-tuning", method=f"{cfg.task} head, {cfg.method}", base=cfg.base,
                  data=[DataSource(", ".join(cfg.data), len(train) + len(val))])  # fmt: skip
    return Job(model=model, forward=forward, batches=batches, loss=loss, checkpointer=checkpointer,
               options=cfg.to_dict(), description=description, stage=stage)  # fmt: skip


class _TaskForward(nn.Module):
    """What DDP wraps: a call that returns the task head's logits (DDP hooks run on `forward`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model.task_logits(inputs, mask)


def _start_pooler(cfg: FinetuneConfig, model: nn.Module, log) -> None:
    """A sequence head's pooler starts from the base's pretrained one where a Hugging Face BERT has it."""
    from llmlab.hf.importer import hf_bert_pooler
    from llmlab.model.heads import SEQUENCE_TASKS

    if cfg.task not in SEQUENCE_TASKS or model.config.family != "encoder":
        return
    pooler = hf_bert_pooler(cfg.base)
    if pooler is not None:
        model.task_head.pooler.load_state_dict(pooler)
    log(f"head: {'the checkpoint' if pooler is not None else 'a new'} pooler, a new classifier over "
        f"{model.config.num_labels} output(s)")  # fmt: skip


def _load_encoder(cfg: FinetuneConfig) -> Checkpoint:
    base = load_checkpoint(cfg.base)
    if (base.path / "config.json").is_file() and read_quantization(base.path):
        raise LlmlabError(f"{cfg.base} is quantized", "fine-tune the full-precision checkpoint")
    family = base.model.config.family
    if family == "encoder-decoder" or (family == "decoder" and cfg.task == "tag"):
        where = "an encoder" if cfg.task == "tag" else "an encoder or a decoder"
        raise LlmlabError(f"--task {cfg.task} puts a head on {where}; {cfg.base} is a {family}",
                          "use a BERT-like encoder (from llmlab pretrain --family encoder, or a BERT)")  # fmt: skip
    if cfg.eval_forgetting or cfg.forgetting_task or cfg.packing or cfg.merge:
        raise LlmlabError("--eval-forgetting, --forgetting-task, --packing and --merge are for instruction tuning",
                          "leave them out with --task")  # fmt: skip
    return base


def _rows(cfg: FinetuneConfig, base: Checkpoint, block: int, log) -> tuple[list[TaskRow], list[TaskRow], list[str]]:
    """Training and validation rows (validation: --val-data, else --val-fraction held out) and the labels."""
    tok, source = base.tokenizer, ",".join(cfg.data)
    if cfg.task == "tag":
        read = lambda s: [x for name in s for x in tagged_examples(name, cfg.split)]  # noqa: E731
    else:
        fields = (cfg.text_field, cfg.label_field, cfg.split)
        read = lambda s: [x for name in s for x in text_examples(name, *fields)]  # noqa: E731
    examples = read(cfg.data)
    if cfg.task == "tag":  # every sentence's tags, before any is set aside for validation
        check_bio(examples, source)
    if cfg.val_data:
        train, val = examples, read([cfg.val_data])
    else:
        order = np.random.default_rng([cfg.seed, 3]).permutation(len(examples))
        n_val = max(1, int(len(examples) * cfg.val_fraction))
        train, val = [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]
    # held out from the same data, validation may hold a rare label's only examples: the head needs it too
    labels = label_names(cfg.task, train if cfg.val_data else train + val, cfg.label_list(), source)
    if cfg.task == "tag":
        train_rows, cut = tag_rows(train, labels, tok, block, source)
        val_rows, val_cut = tag_rows(val, labels, tok, block, cfg.val_data or source)
        log(f"data: {len(train_rows):,} training, {len(val_rows):,} validation sentences; {len(labels)} tags; "
            f"{cut + val_cut:,} longer than the context cut")  # fmt: skip
        return train_rows, val_rows, labels
    family = base.model.config.family
    train_rows = text_rows(train, cfg.task, labels, tok, family, block, source)
    val_rows = text_rows(val, cfg.task, labels, tok, family, block, cfg.val_data or source)
    long = sum(len(ids) + 2 > block for ids in tok.encode_batch([e.text for e in train + val]))  # [CLS] .. [SEP]
    log(f"data: {len(train_rows):,} training, {len(val_rows):,} validation texts; labels "
        f"{', '.join(labels) or 'none (a score)'}; {long:,} cut to the context of {block}")  # fmt: skip
    return train_rows, val_rows, labels


def _method(cfg: FinetuneConfig, model: nn.Module, fingerprint: str) -> AdapterInfo | None:
    return train_task_model(cfg.method, cfg.lora_spec(), model, cfg.base, fingerprint)


def train_task_model(method: str, spec: LoraSpec, model: nn.Module, base: str, fingerprint: str) -> AdapterInfo | None:
    """Freeze what `method` (full, linear-probe, lora) does not train; LoRA trains its adapters and the new
    head, and its adapter folder records the task and the labels so loading can rebuild the head."""
    if method == "full":
        return None
    if method == "linear-probe":
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("task_head."))
        return None
    add_lora(model, spec)
    for p in model.task_head.parameters():
        p.requires_grad_(True)
    source = str(Path(base).resolve()) if Path(base).exists() else base
    settings = {**spec.to_dict(), "task": model.config.task, "labels": list(model.config.labels)}
    base_config = dataclasses.replace(model.config, task=None, labels=[])
    return AdapterInfo("lora", settings, source, fingerprint, base_config, Path())


def _class_weights(cfg: FinetuneConfig, train: list[TaskRow], labels: list[str], log) -> torch.Tensor | None:
    """--class-weights balanced: n / (classes x count) per class (scikit-learn's); or the given list."""
    if cfg.class_weights is None:
        return None
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise LlmlabError("--class-weights is not supported with several processes (a weighted mean would need "
                          "the global weight sum)", "train in one process, or leave out --class-weights")  # fmt: skip
    if cfg.class_weights == "balanced":
        counts = Counter(int(r.label) for r in train)  # type: ignore[arg-type]
        weights = [len(train) / (len(labels) * max(1, counts.get(i, 0))) for i in range(len(labels))]
    else:
        try:
            weights = [float(w) for w in cfg.class_weights.split(",")]
        except ValueError:
            weights = []
        if len(weights) != len(labels) or any(w <= 0 for w in weights):
            raise LlmlabError(f"--class-weights {cfg.class_weights} is not {len(labels)} positive numbers",
                              f"give one per label ({', '.join(labels)}) or 'balanced'")  # fmt: skip
    log("class weights: " + ", ".join(f"{n} {w:.3g}" for n, w in zip(labels, weights)))
    return torch.tensor(weights)
