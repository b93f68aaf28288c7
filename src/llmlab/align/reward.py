"""`llmlab reward BASE --data prefs.jsonl --out RM`: a reward model trained on preference pairs with the
Bradley-Terry loss, -log sigmoid(r(x, y_w) - r(x, y_l)) (InstructGPT's reward model), optionally plus
a centring term c * (r_w + r_l)^2 that keeps rewards near zero (TRL's `center_rewards_coefficient`).

The model is the base with a one-score head (the encoder-tasks issue's `regress` head: BERT's pooler
over [CLS], or a decoder's `score` on its last token), so the result is an ordinary checkpoint: `llmlab
classify RM --text ...` prints its reward, and it exports to Hugging Face's sequence-classification
classes. Held-out pairwise accuracy is logged as `val_accuracy`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmlab.align.data import Pair, PairBatch, read_pairs
from llmlab.checkpoint.adapter import weights_fingerprint
from llmlab.checkpoint.lineage import DataSource, Stage
from llmlab.data.collate import pad_rows
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.finetune.config import LoraOptions
from llmlab.finetune.data import row_indices
from llmlab.finetune.task_data import text_ids
from llmlab.finetune.task_recipe import train_task_model
from llmlab.load import load_checkpoint
from llmlab.model.lora import trainable_counts
from llmlab.model.task_model import with_task_head
from llmlab.options import option
from llmlab.tokenizer import TextTokenizer
from llmlab.training.adapter_checkpointing import run_checkpointer
from llmlab.training.config import TrainerConfig, Validated
from llmlab.training.loop import Job, TrainResult
from llmlab.training.run import run
from llmlab.training.session import Session


@dataclass
class RewardOptions(Validated):
    base: str | None = option(None, "the model to turn into a reward model: an encoder or a decoder")
    data: list[str] = option(help="preference pairs (prompt, chosen, rejected); repeatable", default_factory=list)
    split: str = option("train", "split of an hf: dataset")
    val_data: str | None = option(None, "held-out pairs for the pairwise accuracy (default: --val-fraction)")
    val_fraction: float = option(0.1, "share of the pairs held out when --val-data is absent")
    block_size: int | None = option(None, "context of a prompt and its completion (default: the model's)")
    center: float = option(0.0, "reward centring: the weight of (r_chosen + r_rejected)^2 in the loss")
    tune: str = option("full", "what trains: full, or lora (the adapters and the new head)")

    def validate(self) -> None:
        super().validate()
        if self.base is None:
            raise LlmlabError("no base model", "pass one: llmlab reward BASE --data prefs.jsonl --out RM")
        if not self.data:
            raise LlmlabError("no --data", "pass preference pairs: --data prefs.jsonl")
        if self.center < 0:
            raise LlmlabError(f"--center must be >= 0, got {self.center}", "use e.g. 0.01")
        if self.tune not in ("full", "lora"):
            raise LlmlabError(f"unknown --tune {self.tune!r}", "use full or lora")
        if not 0.0 < self.val_fraction < 1.0:
            raise LlmlabError(f"--val-fraction must be in (0, 1), got {self.val_fraction}", "use e.g. 0.1")


@dataclass
class RewardConfig(TrainerConfig, LoraOptions, RewardOptions):
    """Everything `llmlab reward` takes."""

    lr: float = option(1e-5, "peak learning rate")
    weight_decay: float = option(0.0, "AdamW weight decay on matrices")
    warmup_steps: int = option(10, "linear warmup steps")
    batch_size: int = option(8, "pairs per micro-batch")
    eval_interval: int = option(50, "validate every N steps")
    eval_iters: int = option(5, "validation batches per evaluation")
    out: str = option("runs/reward", "run folder of the reward model")


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, center: float = 0.0) -> torch.Tensor:
    """Per-pair -log sigmoid(r_w - r_l), plus center * (r_w + r_l)^2."""
    return -F.logsigmoid(chosen - rejected) + center * (chosen + rejected) ** 2


def reward_loss(model: nn.Module, batch: PairBatch, normalizer: float | None = None, *,
                center: float) -> tuple[torch.Tensor, dict[str, float]]:  # fmt: skip
    rewards = model(batch.inputs, batch.attention_mask).float().squeeze(-1)
    chosen, rejected = rewards.chunk(2)
    losses = bradley_terry_loss(chosen, rejected, center)
    metrics = {"accuracy": float((chosen > rejected).float().mean()), "margin": float((chosen - rejected).mean()),
               "reward_mean": float(rewards.mean())}  # fmt: skip
    return (losses.mean() if normalizer is None else losses.sum() / normalizer), metrics


class _Scores(nn.Module):
    """What a step calls (and DDP wraps): the reward head's score for each row."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model.task_logits(inputs, mask)


def scored_rows(pairs: list[Pair], tok: TextTokenizer, family: str, block: int) -> tuple[list, list]:
    """(chosen rows, rejected rows): the prompt and the completion read as one text, cut to `block`."""
    sides = []
    for side in ("chosen", "rejected"):
        texts = [p.prompt + getattr(p, side) for p in pairs]
        sides.append([text_ids(tok, family, ids, block) for ids in tok.encode_batch(texts)])
    return sides[0], sides[1]


def reward_batches(train: tuple[list, list], val: tuple[list, list], batch_size: int, grad_accum: int, seed: int,
                   pad_id: int, share: slice | None = None) -> Callable[[bool, int, int], PairBatch]:  # fmt: skip
    rows = share or slice(None)

    def collate(side: tuple[list, list], picked: list[int]) -> PairBatch:
        inputs, mask = pad_rows([side[0][i] for i in picked] + [side[1][i] for i in picked], pad_id)
        return PairBatch(inputs, torch.zeros(len(picked)), mask, None, torch.tensor(picked))

    def draw(validation: bool, step: int, micro: int) -> PairBatch:
        if validation:
            first = (step - 2**31) * batch_size
            return collate(val, [(first + k) % len(val[0]) for k in range(batch_size)][rows])
        return collate(train, row_indices(len(train[0]), batch_size, grad_accum, seed, step, micro)[rows])

    return draw


def train_reward(cfg: RewardConfig, on_step: Callable[[int, float], None] | None = None,
                 log: Callable[[str], None] | None = None) -> TrainResult:  # fmt: skip
    return run(cfg, prepare_reward_job, on_step, log)


def prepare_reward_job(cfg: RewardConfig, session: Session, saved: dict[str, Any] | None) -> Job:
    base = load_checkpoint(cfg.base)
    config, tok = base.model.config, base.tokenizer
    if config.family == "encoder-decoder":
        raise LlmlabError(f"a reward model is an encoder or a decoder with a score head; {cfg.base} is an "
                          "encoder-decoder", "use a BERT-like encoder or a decoder")  # fmt: skip
    block = min(cfg.block_size or config.block_size, config.block_size)
    pairs = [p for source in cfg.data for p in read_pairs(source, cfg.split)]
    if cfg.val_data:
        train, val = pairs, read_pairs(cfg.val_data, cfg.split)
    else:
        order = np.random.default_rng([cfg.seed, 3]).permutation(len(pairs))
        n_val = max(1, int(len(pairs) * cfg.val_fraction))
        train, val = [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]
    if not train:
        raise LlmlabError("no training pair is left", "use more pairs or pass --val-data")
    session.log(f"data: {len(train):,} training, {len(val):,} held-out pairs; context {block}")
    fingerprint = weights_fingerprint(base.model)
    torch.manual_seed(cfg.seed)
    model = with_task_head(base.model.float(), "regress", []).train()
    info = train_task_model(cfg.tune, cfg.lora_spec(), model, cfg.base, fingerprint)
    model.to(session.device)
    pad = family_spec(config).pad_id(tok)
    batches = reward_batches(scored_rows(train, tok, config.family, block), scored_rows(val, tok, config.family, block),
                             cfg.batch_size * session.world, cfg.grad_accum, cfg.seed, pad,
                             session.rows(cfg.batch_size))  # fmt: skip
    out = Path(cfg.out)
    checkpointer = run_checkpointer(out, tok, base.generation, session, info)
    trainable, total = trainable_counts(model)
    description = (f"reward model: {cfg.base} ({config.family}) + a score head, {cfg.tune}: {trainable:,} of "
                   f"{total:,} parameters train; Bradley-Terry loss, centring {cfg.center}")  # fmt: skip
    return Job(model=model, forward=session.wrap(_Scores(model)), batches=batches,
               loss=functools.partial(reward_loss, center=cfg.center), checkpointer=checkpointer,
               options=cfg.to_dict(), description=description,
               stage=Stage(kind="reward model", method=f"Bradley-Terry ({cfg.tune}{', centred' if cfg.center else ''})",
                           base=cfg.base, data=[DataSource(", ".join(cfg.data), len(train) + len(val))]))  # fmt: skip
