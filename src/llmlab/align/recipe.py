"""`llmlab align BASE --method dpo|ipo|simpo|orpo --data prefs.jsonl`: offline preference optimisation on
the training core (PPO and GRPO, online, are in `online.py`).

The reference log-probabilities (DPO, IPO) are computed once, before training, with
the base as loaded: that is the reference a LoRA run would get by disabling its adapter, and no second
copy of the model is held while training."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from llmlab.align.config import ONLINE, AlignConfig
from llmlab.align.data import Pair, PairBatch, PairRows, collate_pairs, pair_batches, pair_rows, read_pairs
from llmlab.align.losses import NEEDS_REFERENCE, PairLogps, preference_loss, preference_metrics
from llmlab.align.packing import PackedPairBatch, collate_packed_pairs, packed_pair_logps
from llmlab.checkpoint.adapter import AdapterInfo, weights_fingerprint
from llmlab.checkpoint.lineage import DataSource, Stage
from llmlab.data.objectives import IGNORE
from llmlab.device import autocast
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.load import load_checkpoint
from llmlab.model.lora import add_lora, trainable_counts
from llmlab.model.surgery import disable_dropout
from llmlab.training.adapter_checkpointing import run_checkpointer
from llmlab.training.loop import Job, TrainResult
from llmlab.training.run import run
from llmlab.training.session import Session


def align(cfg: AlignConfig, on_step: Callable[[int, float], None] | None = None,
          log: Callable[[str], None] | None = None) -> TrainResult:  # fmt: skip
    """Align `cfg.base` with the preference pairs of `cfg.data` as `cfg` says."""
    return run(cfg, prepare_align_job, on_step, log)


def labelled_logps(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of the labelled tokens' log-probabilities, their count) per row of a right-padded causal batch.
    The head runs only at labelled positions, and log p = logit - logsumexp: no full log-softmax is kept."""
    scored = labels != IGNORE
    logits = model(inputs, select=scored).float()
    targets = labels[scored]
    token_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    rows = torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels)[scored]
    sums = torch.zeros(labels.shape[0], device=token_logps.device, dtype=token_logps.dtype)
    return sums.index_add(0, rows, token_logps), scored.sum(dim=1)


def pair_logps(model: nn.Module, batch: PairBatch) -> PairLogps:
    """Summed completion log-probabilities of a batch's chosen and rejected completions (stacked right-padded
    rows, or packed segments)."""
    if isinstance(batch, PackedPairBatch):
        sums, counts = packed_pair_logps(model, batch)
    else:
        sums, counts = labelled_logps(model, batch.inputs, batch.labels)
    half = sums.shape[0] // 2
    return PairLogps(sums[:half], sums[half:], counts[:half], counts[half:])


def align_loss(
    model: nn.Module, batch: PairBatch, normalizer: float | None = None, *, method: str, beta: float,
    label_smoothing: float, gamma: float, reference: PairLogps | None,
) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """The preference loss of a batch (mean over pairs, or sum / normalizer across ranks) and TRL's metrics,
    plus the mean log-ratio of the chosen completions to the reference (how far the policy has moved)."""
    policy = pair_logps(model, batch)
    ref = None
    if reference is not None:
        i = batch.index.to(reference.chosen.device)
        ref = PairLogps(reference.chosen[i], reference.rejected[i], policy.chosen_tokens, policy.rejected_tokens)
        ref = PairLogps(*(t.to(policy.chosen.device) for t in vars(ref).values()))
    result = preference_loss(method, policy, ref, beta, label_smoothing, gamma)
    metrics = preference_metrics(result)
    if ref is not None:
        metrics["chosen_logratio"] = float((policy.chosen.detach() - ref.chosen).mean())
    loss = result.losses.mean() if normalizer is None else result.losses.sum() / normalizer
    return loss, metrics


@torch.no_grad()
def reference_logps(model: nn.Module, rows: list[PairRows], pad_id: int, device: torch.device,
                    batch_size: int = 16, collate: Callable = collate_pairs) -> PairLogps:  # fmt: skip
    """Every pair's summed log-probabilities under `model` (the reference), training pairs then validation,
    read as the policy reads them (`collate`)."""
    was_training = model.training
    model.eval()
    parts: list[PairLogps] = []
    for part in rows:
        for first in range(0, len(part.chosen), batch_size):
            picked = list(range(first, min(first + batch_size, len(part.chosen))))
            parts.append(pair_logps(model, collate(part, picked, pad_id).to(device)))
    model.train(was_training)
    return PairLogps(*(torch.cat([getattr(p, f) for p in parts]) for f in ("chosen", "rejected", "chosen_tokens",
                                                                           "rejected_tokens")))  # fmt: skip


def prepare_align_job(cfg: AlignConfig, session: Session, saved: dict[str, Any] | None) -> Job:
    base = load_checkpoint(cfg.base)
    config = base.model.config
    if family_spec(config).name != "decoder":
        raise LlmlabError(f"llmlab align trains decoders; {cfg.base} is a {config.family}",
                          "align a decoder (GPT-2 or Llama style)")  # fmt: skip
    if cfg.method in ONLINE:
        return _online_job(cfg, session, base)
    block = min(cfg.block_size or config.block_size, config.block_size)
    train, val = _split(cfg)
    tok, source = base.tokenizer, ",".join(cfg.data)
    train_rows, val_rows = pair_rows(train, tok, block, source), pair_rows(val, tok, block, cfg.val_data or source)
    session.log(f"data: {len(train):,} training, {len(val):,} validation pairs; {train_rows.cut + val_rows.cut:,} "
                f"completions cut to the context of {block}")  # fmt: skip
    model = base.model.float().to(session.device)
    disable_dropout(model)  # the policy's log-probabilities are compared with the reference's: no noise in them
    pad = family_spec(config).pad_id(tok)
    collate = _collate(cfg, config, block)
    reference = None
    if cfg.method in NEEDS_REFERENCE:
        with autocast(session.device, session.dtype):  # the precision the policy trains in: r = 0 at step 0
            reference = reference_logps(model, [train_rows, val_rows], pad, session.device, collate=collate)
        session.log(f"reference: log-probabilities of {len(train) + len(val):,} pairs under the base, computed once")
    torch.manual_seed(cfg.seed)  # the adapter's initial A: the same in a run and its restarts
    info = _tune(cfg, model)
    model.train()
    loss = functools.partial(
        align_loss,
        method=cfg.method,
        beta=cfg.beta_value,
        label_smoothing=cfg.label_smoothing or 0.0,
        gamma=0.5 if cfg.simpo_gamma is None else cfg.simpo_gamma,
        reference=reference,
    )
    batches = pair_batches(train_rows, val_rows, cfg.batch_size * session.world, cfg.grad_accum, cfg.seed, pad,
                           len(train), session.rows(cfg.batch_size), collate)  # fmt: skip
    out = Path(cfg.out)
    checkpointer = run_checkpointer(out, tok, base.generation, session, info)
    trainable, total = trainable_counts(model)
    description = (f"model: {cfg.base}, {cfg.method} (beta {cfg.beta_value}), {cfg.tune}: {trainable:,} of {total:,} "
                   f"parameters train ({100 * trainable / total:.2f}%); context {block}")  # fmt: skip
    stage = Stage(kind="alignment", method=f"{cfg.method} beta={cfg.beta_value:g} ({cfg.tune})", base=cfg.base,
                  data=[DataSource(", ".join(cfg.data), len(train) + len(val))])  # fmt: skip
    return Job(model=model, forward=session.wrap(model), batches=batches, loss=loss, checkpointer=checkpointer,
               options=cfg.to_dict(), description=description, stage=stage)  # fmt: skip


PACKED_ROW_TOKENS = 512


def _collate(cfg: AlignConfig, config, block: int) -> Callable:
    """How picked pairs become a batch: stacked rows, or with --packing segments in rows of 512 tokens (or the
    context, if longer)."""
    if not cfg.packing:
        return collate_pairs
    if config.positions == "relative":  # its bias reads distances between row slots, which packing moves
        raise LlmlabError("--packing needs positions the model reads per token (RoPE or learned); this model "
                          "has a relative position bias", "leave out --packing")  # fmt: skip
    # rows longer than the context: each row's leftover room is padding, and at this length attention's share
    # of a step is small (the positions restart in every segment, so none exceeds the context)
    return functools.partial(collate_packed_pairs, row_tokens=max(block, PACKED_ROW_TOKENS))


def _online_job(cfg: AlignConfig, session: Session, base) -> Job:
    """PPO / GRPO: the policy (LoRA or whole) and its rollouts (align/online.py)."""
    from llmlab.align.online import prepare_online_job

    base.model = base.model.float().to(session.device)
    torch.manual_seed(cfg.seed)
    info = _tune(cfg, base.model)
    checkpointer = run_checkpointer(Path(cfg.out), base.tokenizer, base.generation, session, info)
    job = prepare_online_job(cfg, session, base, info is not None, checkpointer)
    trainable, total = trainable_counts(job.model)
    job.description = (
        f"model: {cfg.base}, {cfg.method} (KL coefficient {cfg.kl_value:g}), {cfg.tune}: "
        f"{trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%)"
    )
    return job


def _split(cfg: AlignConfig) -> tuple[list[Pair], list[Pair]]:
    pairs = [p for source in cfg.data for p in read_pairs(source, cfg.split)]
    if cfg.val_data:
        return pairs, read_pairs(cfg.val_data, cfg.split)
    order = np.random.default_rng([cfg.seed, 3]).permutation(len(pairs))
    n_val = max(1, int(len(pairs) * cfg.val_fraction))
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def _tune(cfg: AlignConfig, model: nn.Module) -> AdapterInfo | None:
    """LoRA on the frozen base (the adapter folder names and fingerprints it), or nothing: full training."""
    if cfg.tune == "full":
        return None
    source = str(Path(cfg.base).resolve()) if Path(cfg.base).exists() else cfg.base
    fingerprint = weights_fingerprint(model)
    spec = cfg.lora_spec()
    add_lora(model, spec)
    return AdapterInfo("lora", {**spec.to_dict(), "align": cfg.method}, source, fingerprint, model.config, Path())
