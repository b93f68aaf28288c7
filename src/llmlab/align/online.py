"""`llmlab align BASE --method ppo|grpo --reward R --prompts FILE`: online RLHF on the training core.

One optimizer step is one micro-batch group of a rollout's sequences; a rollout (`--rollout-prompts`
prompts x their completions) is sampled from the policy every `--ppo-epochs` passes over it. The batch
source is still a function of the step: rollout k is sampled by the weights at its first step with a
seed of its own, and a checkpoint taken inside a rollout keeps the rollout (and the value head and the
KL coefficient) beside the optimizer state, so `--resume` continues exactly. The reference is the base
with the adapter switched off (LoRA) or a frozen copy (full training)."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from llmlab.align.config import AlignConfig
from llmlab.align.data import read_prompts
from llmlab.align.rewards import load_reward
from llmlab.align.rl_losses import KLController, clipped_policy_loss, clipped_value_loss, grpo_loss
from llmlab.align.rollout import ActorCritic, RolloutBatch, RolloutSettings, collect, padded, score_tokens
from llmlab.checkpoint.folder import Checkpoint
from llmlab.checkpoint.lineage import DataSource, Stage
from llmlab.device import autocast
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.model.lora import lora_disabled
from llmlab.model.surgery import disable_dropout
from llmlab.training.checkpointing import Checkpointer
from llmlab.training.loop import Job
from llmlab.training.session import Session

VALIDATION = 2**31  # the core asks for validation batches from this step on


def ppo_loss(actor: nn.Module, batch: RolloutBatch, normalizer: float | None = None, *, clip: float,
             vf_clip: float, vf_coef: float) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """The clipped surrogate plus vf_coef times the clipped value loss, and the rollout's statistics."""
    logps, values = actor(batch.inputs, batch.labels)
    mask = batch.mask.float()
    logps, values = padded(logps, batch.mask), padded(values, batch.mask)
    policy, stats = clipped_policy_loss(logps, batch.old_logps, batch.advantages, mask, clip)
    value = clipped_value_loss(values, batch.old_values, batch.returns, mask, vf_clip)
    metrics = {**stats, "policy_loss": float(policy.detach()), "value_loss": float(value.detach()), **batch.stats}
    return policy + vf_coef * value, metrics


def grpo_step_loss(actor: nn.Module, batch: RolloutBatch, normalizer: float | None = None, *, clip: float,
                   beta: float) -> tuple[torch.Tensor, dict]:  # fmt: skip
    logps, _ = actor(batch.inputs, batch.labels)
    logps = padded(logps, batch.mask)
    loss, stats = grpo_loss(logps, batch.old_logps, batch.ref_logps, batch.advantages, batch.mask.float(), clip, beta)
    return loss, {**stats, **batch.stats}


class RolloutSource:
    """The batch source of an online run: (validation?, step, micro) -> a slice of the step's rollout."""

    def __init__(self, sample: Callable[[list[str], int], RolloutBatch], train: list[str], val: list[str],
                 cfg: AlignConfig, kl: KLController, log: Callable[[str], None]) -> None:  # fmt: skip
        self.sample, self.train, self.val, self.cfg, self.kl, self.log = sample, train, val, cfg, kl, log
        self.group = cfg.completions_per_prompt
        self.sequences = cfg.rollout_prompts * self.group
        self.micro_per_pass = self.sequences // cfg.batch_size
        self.steps_per_rollout = cfg.ppo_epochs * self.micro_per_pass // cfg.grad_accum
        self.phase, self.rollout = -1, None
        self.validation: RolloutBatch | None = None  # this evaluation's rollout, served in --batch-size slices

    def __call__(self, validation: bool, step: int, micro: int) -> RolloutBatch:
        if validation:
            return self._validation(step - VALIDATION)
        phase, within = divmod(step, self.steps_per_rollout)
        if phase != self.phase:
            self._collect(phase)
        k = within * self.cfg.grad_accum + micro  # the micro-batch within the rollout's passes
        epoch, part = divmod(k, self.micro_per_pass)
        order = torch.from_numpy(np.random.default_rng([self.cfg.seed, 11, phase, epoch]).permutation(self.sequences))
        size = self.cfg.batch_size
        return self.rollout.rows(order[part * size : (part + 1) * size])

    def _prompts(self, phase: int) -> list[str]:
        """Consecutive slots of an epoch-by-epoch shuffled walk over the training prompts."""
        n, k = len(self.train), self.cfg.rollout_prompts
        picked = []
        for slot in range(phase * k, (phase + 1) * k):
            order = np.random.default_rng([self.cfg.seed, 7, slot // n]).permutation(n)
            picked.append(self.train[int(order[slot % n])])
        return picked

    def _collect(self, phase: int) -> None:
        self.rollout = self.sample(self._prompts(phase), self.cfg.seed * 1_000_003 + phase)
        self.phase = phase
        s = self.rollout.stats
        collapsed = s["distinct"] <= self.cfg.collapse_share
        if collapsed or (phase * self.steps_per_rollout) % self.cfg.log_interval < self.steps_per_rollout:
            self.log(f"rollout {phase + 1}: reward {s['score']:.4f}, KL {s['kl']:.3f} (coefficient "
                     f"{s['kl_coef']:.4g}), {s['length']:.1f} tokens, {100 * s['ended']:.0f}% ended, "
                     f"{100 * s['distinct']:.0f}% distinct")  # fmt: skip
        if collapsed:
            self.log(f"warning: collapse at rollout {phase + 1}: only {100 * s['distinct']:.0f}% of "
                     f"{self.sequences} completions differ (distinct-2 {s['distinct_2']:.2f}); lower --lr or raise "
                     "--kl-coef")  # fmt: skip
        self.kl.update(s["kl"], self.sequences)

    def _validation(self, i: int) -> RolloutBatch:
        """Slice i of one rollout of the held-out prompts, sampled at the start of each evaluation with the
        same prompts and seed every time: its reward and KL move only with the weights."""
        size = self.cfg.batch_size
        if i == 0:
            prompts = [self.val[j % len(self.val)] for j in range(self.cfg.eval_iters * size // self.group)]
            self.validation = self.sample(prompts or self.val[:1], self.cfg.seed * 1_000_003 - 1)
        rows = self.validation.inputs.shape[0]
        return self.validation.rows(torch.arange(i * size, (i + 1) * size) % rows)

    # what a checkpoint keeps beside the optimizer: the rollout being trained on and the KL coefficient
    def kept_tensors(self) -> dict[str, torch.Tensor]:
        kept = {"phase": torch.tensor(self.phase), "kl_coef": torch.tensor(self.kl.value, dtype=torch.float64)}
        if self.rollout is not None:
            kept.update({f"rollout.{k}": v for k, v in self.rollout.tensors().items()})
            kept.update({f"stat.{k}": torch.tensor(v, dtype=torch.float64) for k, v in self.rollout.stats.items()})
        return kept

    def load_kept(self, kept: dict[str, torch.Tensor]) -> None:
        self.kl.value = float(kept["kl_coef"])
        if "rollout.inputs" in kept:
            tensors = {k[len("rollout.") :]: v for k, v in kept.items() if k.startswith("rollout.")}
            stats = {k[len("stat.") :]: float(v) for k, v in kept.items() if k.startswith("stat.")}
            self.rollout = RolloutBatch(**tensors, stats=stats)
            self.phase = int(kept["phase"])


class OnlineState:
    """What `Job.kept` saves and restores: the value head's weights and the rollout source's state."""

    def __init__(self, actor: ActorCritic, source: RolloutSource) -> None:
        self.actor, self.source = actor, source

    def tensors(self) -> dict[str, torch.Tensor]:
        head = self.actor.value_head
        values = {f"value_head.{k}": v.detach() for k, v in head.state_dict().items()} if head is not None else {}
        return {**values, **self.source.kept_tensors()}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        head = {k[len("value_head.") :]: v for k, v in tensors.items() if k.startswith("value_head.")}
        if self.actor.value_head is not None:
            self.actor.value_head.load_state_dict(head)
        self.source.load_kept({k: v for k, v in tensors.items() if not k.startswith("value_head.")})


def reference_fn(policy: nn.Module, tuned: bool, session: Session, chunk: int) -> Callable[..., torch.Tensor]:
    """Per-token log-probabilities under the reference: the base without its adapter, or a frozen copy."""
    frozen = None if tuned else copy.deepcopy(policy).eval().requires_grad_(False)

    def reference(inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        model = frozen if frozen is not None else policy
        with lora_disabled(model), autocast(session.device, session.dtype):
            logps, _ = score_tokens(ActorCritic(model, False), inputs, labels, mask, chunk, session.device)
        return logps

    return reference


def prepare_online_job(cfg: AlignConfig, session: Session, base: Checkpoint, tuned: bool,
                       checkpointer: Checkpointer) -> Job:  # fmt: skip
    """The PPO / GRPO job on `base` (loaded; LoRA added when `tuned`, else trained whole)."""
    if session.ctx is not None:
        raise LlmlabError(f"--method {cfg.method} runs in one process", "run it without torchrun")
    policy = base.model
    disable_dropout(policy)
    prompts = read_prompts(cfg.prompts, cfg.split)
    train, val = _split_prompts(cfg, prompts)
    generator = Generator(policy, base.tokenizer)
    for p in train + val:  # a prompt too long for the context is refused now, not at rollout 37
        generator.encode_prompt(p, GenerationConfig(max_new_tokens=cfg.max_new_tokens))
    reward = load_reward(cfg.reward, cfg.reward_label)
    reward(train[:2], [" ", "a"][: len(train[:2])])  # a reward that fails (NaN, wrong shape) fails before training
    actor = ActorCritic(policy, with_value=cfg.method == "ppo")
    settings = RolloutSettings(cfg.method, cfg.max_new_tokens, cfg.completions_per_prompt, cfg.gamma, cfg.lam,
                               cfg.whiten_rewards, cfg.eos_penalty, cfg.kl_value, max(cfg.batch_size, 8))  # fmt: skip
    reference = reference_fn(policy, tuned, session, settings.chunk)
    pad = family_spec(policy.config).pad_id(base.tokenizer)
    kl = KLController(cfg.kl_value, cfg.kl_target, cfg.kl_horizon)

    def sample(batch_prompts: list[str], seed: int) -> RolloutBatch:
        # the precision the policy trains in, so the first pass's ratio is 1 (to the last bit on CPU fp32; within
        # ~1e-3 where batch shapes change the kernels, as on CUDA bf16)
        with autocast(session.device, session.dtype):
            return collect(actor, generator, batch_prompts, reward, settings, reference, kl, seed, pad, session.device)

    source = RolloutSource(sample, train, val, cfg, kl, session.log)
    if cfg.method == "ppo":
        loss = functools.partial(ppo_loss, clip=cfg.clip, vf_clip=cfg.vf_clip, vf_coef=cfg.vf_coef)
    else:
        loss = functools.partial(grpo_step_loss, clip=cfg.clip, beta=cfg.kl_value)
    session.log(f"data: {len(train):,} training, {len(val):,} validation prompts; a rollout is {cfg.rollout_prompts} "
                f"prompts x {cfg.completions_per_prompt} completions of up to {cfg.max_new_tokens} tokens, "
                f"{source.steps_per_rollout} optimizer steps each; dropout off")  # fmt: skip
    stage = Stage(kind="alignment", method=f"{cfg.method}, KL coefficient {cfg.kl_value:g}, reward {cfg.reward}",
                  base=cfg.base, data=[DataSource(str(cfg.prompts), len(train) + len(val))])  # fmt: skip
    return Job(model=actor, forward=actor, batches=source, loss=loss, checkpointer=checkpointer, options=cfg.to_dict(),
               saves=policy, kept=OnlineState(actor, source), stage=stage, evaluate_first=True)  # fmt: skip


def _split_prompts(cfg: AlignConfig, prompts: list[str]) -> tuple[list[str], list[str]]:
    if cfg.val_prompts:
        return prompts, read_prompts(cfg.val_prompts, cfg.split)
    order = np.random.default_rng([cfg.seed, 3]).permutation(len(prompts))
    n_val = max(1, int(len(prompts) * cfg.val_fraction))
    if len(prompts) - n_val < 1:
        raise LlmlabError(f"{len(prompts)} prompt(s): none left for training after validation",
                          "pass more prompts or --val-prompts")  # fmt: skip
    return [prompts[i] for i in order[n_val:]], [prompts[i] for i in order[:n_val]]
