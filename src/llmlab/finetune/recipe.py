"""Instruction fine-tuning, a recipe on the training core: the next-token loss on the response tokens
of instruction, prompt/completion or chat examples, training the whole model (full), low-rank
adapters on a frozen base (LoRA) or adapters on a frozen 4-bit NF4 base (QLoRA).

    llmlab finetune runs/t5 --data task:dialogsum --method lora --out runs/t5-sum --max-time 600
    llmlab.finetune(llmlab.FinetuneConfig(base="runs/t5", data=["train.jsonl"], out="runs/ft"))

A full fine-tune's run folder is a checkpoint; an adapter run's folder is an adapter folder (the
adapter, the base's name and fingerprint, the optimizer state for --resume) that every command takes
where it takes a checkpoint.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from llmlab.checkpoint.adapter import AdapterInfo, weights_fingerprint
from llmlab.checkpoint.card import record_derived
from llmlab.checkpoint.folder import Checkpoint, read_quantization, save_checkpoint
from llmlab.checkpoint.lineage import Stage
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.finetune.config import FinetuneConfig
from llmlab.finetune.data import SftBatch, packed_attention_mask
from llmlab.finetune.forgetting import ForgettingProbe, forgetting_table
from llmlab.finetune.rows import TrainingRows, training_rows
from llmlab.load import load_checkpoint, merged_with_adapter, quantize_nf4_base
from llmlab.model.lora import add_lora, trainable_counts
from llmlab.model.soft_prompt import add_soft_prompt
from llmlab.plan.adapter_peak import AdapterShape, adapter_step_peak
from llmlab.plan.peak import ModelShape, StepPeak, training_step_peak
from llmlab.progress import MetricsLog
from llmlab.prune.keep import keeper_for_run
from llmlab.training.adapter_checkpointing import run_checkpointer
from llmlab.training.loop import Job, TrainResult
from llmlab.training.losses import lm_loss, token_loss
from llmlab.training.run import run
from llmlab.training.session import Session


def finetune(
    cfg: FinetuneConfig,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fine-tune `cfg.base` on `cfg.data` as `cfg` says; returns the losses and where the result is.
    With `merge`, the base with the adapter merged in is written to OUT/merged as well."""
    if cfg.task is not None:  # an encoder with a task head: its own job on the same core
        from llmlab.finetune.task_recipe import prepare_task_job

        return run(cfg, prepare_task_job, on_step, log)
    say = log or print
    probe = ForgettingProbe(cfg.eval_forgetting, cfg.forgetting_task, cfg.forgetting_limit)
    text = probe.read_text()  # a missing file stops the run before it trains
    before = probe.measure(load_checkpoint(cfg.base), text) if probe.text_file or probe.task else None
    result = run(cfg, prepare_job, on_step, log)
    if before is not None:
        after = probe.measure(load_checkpoint(result.out), text)
        for line in forgetting_table(before, after):
            say(line)
        MetricsLog(result.out / "metrics.jsonl", resume_step=result.step).write(
            step=result.step, **{f"forgetting_before_{k}": v for k, v in before.items()},
            **{f"forgetting_after_{k}": v for k, v in after.items()},
        )  # fmt: skip
    if cfg.merge and cfg.method in ("lora", "qlora") and not result.interrupted:
        merged = merged_with_adapter(result.out)
        save_checkpoint(result.out / "merged", merged.model, merged.tokenizer, merged.generation)
        record_derived(result.out / "merged", result.out, "merge", "the adapter added into its base's weights")
        say(f"merged: the base with the adapter added in, {result.out / 'merged'}")
    return result


def sft_loss(model: nn.Module, batch: SftBatch, normalizer: float | None = None) -> torch.Tensor:
    """The language-model loss on the labelled (response) tokens; packed rows attend within each example."""
    if batch.segments is None:
        return lm_loss(model, batch, normalizer)
    logits = model(batch.inputs, batch.positions, mask=packed_attention_mask(batch.segments))
    return token_loss(logits, batch.labels, normalizer)


def prepare_job(cfg: FinetuneConfig, session: Session, saved: dict[str, Any] | None) -> Job:
    """The base, the rows and the method's model for the trainer."""
    base = _load_base(cfg)
    spec = family_spec(base.model.config)
    torch.manual_seed(cfg.seed)
    rows = training_rows(cfg, base, session.world, session.rows(cfg.batch_size), session.log)
    model, info = _method_model(cfg, base)
    model.to(session.device)
    if cfg.method == "qlora" and session.ctx is not None and session.ctx.strategy == "fsdp":
        raise LlmlabError("--method qlora cannot shard its 4-bit base with FSDP", "use --strategy ddp or none")
    keeper = keeper_for_run(cfg.keep_sparsity, model, session, resuming=saved is not None)
    forward = session.wrap(model, cfg.fsdp_mixed_precision, f"{cfg.batch_size} rows per rank")
    out = Path(cfg.out)
    checkpointer = run_checkpointer(out, base.tokenizer, base.generation, session, info)
    ddp = session.ctx is not None and session.ctx.strategy == "ddp"
    planned = functools.partial(_planned_step_peak, model, cfg, session.device, session.dtype, ddp)
    return Job(model=model, forward=forward, batches=rows.batches, loss=sft_loss, checkpointer=checkpointer,
               options=cfg.to_dict(), description=_describe(cfg, model, spec.name, rows, session),
               planned_peak=planned, on_start=keeper.record if keeper else None,
               after_update=keeper.restore if keeper else None, stage=_stage(cfg, rows))  # fmt: skip


def _stage(cfg: FinetuneConfig, rows: TrainingRows) -> Stage:
    """This run for the model card: the method with its adapter settings, and the instruction data."""
    method = cfg.method
    if cfg.method in ("lora", "qlora"):
        method += f" r={cfg.lora_r}, alpha={cfg.lora_alpha:g}"
    elif cfg.method == "prompt-tuning":
        method += f" ({cfg.prompt_tokens} virtual tokens)"
    settings = {
        "lr": cfg.lr,
        "batch size": cfg.batch_size,
        "context": rows.block_size,
        "packing": cfg.packing or None,
        "loss on prompt": cfg.train_on_prompt or None,
    }
    return Stage(kind="fine-tuning", method=method, base=cfg.base, data=rows.sources, settings=settings)  # fmt: skip


def _planned_step_peak(model: nn.Module, cfg: FinetuneConfig, device: torch.device, dtype: torch.dtype, ddp: bool,
                       batch: SftBatch) -> StepPeak | None:  # fmt: skip
    """`plan memory --method` for a step on this batch's shapes, where it models the run (CUDA or CPU,
    AdamW, eager, one micro-batch, rows without packing, full fine-tuning or LoRA/QLoRA); None elsewhere."""
    modelled = cfg.method in ("full", "lora", "qlora") and cfg.optimizer == "adamw" and not cfg.compile
    if not modelled or device.type not in ("cuda", "cpu") or batch.segments is not None or cfg.grad_accum > 1:
        return None
    rows, length, target = batch.dims
    precision = "fp32" if dtype == torch.float32 else "autocast"
    config = model.config
    if cfg.method == "full":
        return training_step_peak(config, ModelShape.of(model), rows, length, device.type, precision, 1, target, ddp)
    spec = cfg.lora_spec()
    shape = AdapterShape.of(config, cfg.method, spec.r, spec.targets, spec.dropout)
    return adapter_step_peak(config, shape, rows, length, device.type, precision, target, ddp)


def _load_base(cfg: FinetuneConfig) -> Checkpoint:
    base = load_checkpoint(cfg.base)
    if (base.path / "config.json").is_file() and read_quantization(base.path):
        raise LlmlabError(f"{cfg.base} is quantized", "fine-tune the full-precision checkpoint (--method qlora "
                          "quantizes the frozen base itself)")  # fmt: skip
    family_spec(base.model.config).require_generates(
        "encoder-only models are not instruction-tuned", "fine-tune a decoder or encoder-decoder model"
    )
    return base


def _method_model(cfg: FinetuneConfig, base: Checkpoint) -> tuple[nn.Module, AdapterInfo | None]:
    """The model to train and, for adapters, what the adapter folder says about its base."""
    model = base.model.float().train()
    if cfg.method == "full":
        return model, None
    source = str(Path(cfg.base).resolve()) if Path(cfg.base).exists() else cfg.base
    fingerprint = weights_fingerprint(model)
    if cfg.method == "prompt-tuning":
        init = base.tokenizer.encode(cfg.prompt_init) if cfg.prompt_init else None
        add_soft_prompt(model, cfg.prompt_tokens, init, cfg.seed)
        return model, AdapterInfo(cfg.method, {"tokens": cfg.prompt_tokens}, source, fingerprint, model.config, Path())
    info = AdapterInfo(cfg.method, cfg.lora_spec().to_dict(), source, fingerprint, model.config, Path())
    add_lora(model, cfg.lora_spec())
    if cfg.method == "qlora":
        quantize_nf4_base(model)
    return model, info


def _describe(cfg: FinetuneConfig, model: nn.Module, family: str, rows: TrainingRows, session: Session) -> str:
    trainable, total = trainable_counts(model)
    return (
        f"model: {cfg.base} ({family}), method {cfg.method}: {trainable:,} of {total:,} parameters train "
        f"({100 * trainable / total:.2f}%); context {rows.block_size}; device {session.device}, "
        f"{str(session.dtype).replace('torch.', '')}"
    )
