"""`llmlab align`'s options: the training core's, the preference data, the loss and what trains."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from llmlab.align.losses import METHODS
from llmlab.errors import LlmlabError
from llmlab.finetune.config import LoraOptions
from llmlab.options import option
from llmlab.training.config import TrainerConfig, Validated

ONLINE = ("ppo", "grpo")


@dataclass
class AlignOptions(Validated):
    base: str | None = option(None, "the model to align: a run folder, a Hugging Face folder or hub id")
    method: str = option("dpo", "dpo, ipo (reference-regularised), simpo, orpo (no reference model): offline on "
                         "--data; ppo or grpo: online, sampling --prompts and scoring with --reward")  # fmt: skip
    tune: str = option("lora", "what trains: lora (the reference is the base without the adapter) or full")
    data: list[str] = option(help="offline methods: preference pairs (prompt, chosen, rejected), .jsonl/.json/"
                             ".csv/.parquet or hf:ORG/NAME; repeatable", default_factory=list)  # fmt: skip
    split: str = option("train", "split of an hf: dataset")
    val_data: str | None = option(None, "validation pairs (default: --val-fraction of the pairs)")
    val_fraction: float = option(0.05, "share of the pairs (or prompts) held out for validation")
    block_size: int | None = option(None, "context of a prompt and its completion (default: the model's)")
    beta: float | None = option(None, "DPO/IPO/SimPO: the inverse temperature of the implicit reward; ORPO: lambda "
                                "(default 0.1)")  # fmt: skip
    label_smoothing: float | None = option(None, "DPO: the probability a preference label is flipped (default 0)")
    simpo_gamma: float | None = option(None, "SimPO: the target reward margin (default 0.5)")
    packing: bool = option(False, "offline methods: each pair as one segment (prompt, chosen, rejected) read "
                           "once, segments packed into rows without padding (decoders with RoPE or learned "
                           "positions)")  # fmt: skip

    def validate(self) -> None:
        super().validate()
        if self.base is None:
            raise LlmlabError("no base model", "pass one: llmlab align BASE --data prefs.jsonl --out DIR")
        if self.method not in (*METHODS, *ONLINE):
            raise LlmlabError(f"unknown --method {self.method!r}", f"use one of {', '.join((*METHODS, *ONLINE))}")
        if self.tune not in ("lora", "full"):
            raise LlmlabError(f"unknown --tune {self.tune!r}", "use lora or full")
        if not 0.0 < self.val_fraction < 1.0:
            raise LlmlabError(f"--val-fraction must be in (0, 1), got {self.val_fraction}", "use e.g. 0.05")
        _refuse_unused(self, self.method)
        if self.method in ONLINE:
            return
        if not self.data:
            raise LlmlabError("no --data", "pass preference pairs: --data prefs.jsonl")
        if self.beta is not None and self.beta <= 0:
            raise LlmlabError(f"--beta must be positive, got {self.beta}", "use e.g. --beta 0.1")
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 0.5:
            raise LlmlabError(f"--label-smoothing must be in [0, 0.5), got {self.label_smoothing}", "use e.g. 0.1")

    @property
    def beta_value(self) -> float:
        return 0.1 if self.beta is None else self.beta


@dataclass
class OnlineOptions(Validated):
    """PPO and GRPO: rollouts, the reward, the KL penalty and the update."""

    prompts: str | None = option(None, "online methods: prompts, a text file (one a line), records with a prompt, or "
                                 "task:sentiment / task:dialogsum (the task's training prompts)")  # fmt: skip
    val_prompts: str | None = option(None, "held-out prompts for validation (default: --val-fraction of --prompts)")
    reward: str | None = option(None, "online methods: a reward model or classifier checkpoint, module:function, "
                                "vader / toxicity / harmless, or task:NAME (right answer 1, else 0; ROUGE-L for "
                                "summaries) with --prompts task:NAME")  # fmt: skip
    reward_label: str | None = option(None, "with a classifier reward: the label whose probability is the reward")
    max_new_tokens: int = option(48, "tokens sampled per completion (temperature 1, no top-k/top-p: the policy's "
                                 "own distribution, which the KL penalty needs)")  # fmt: skip
    rollout_prompts: int = option(16, "prompts per rollout")
    group_size: int | None = option(None, "GRPO: completions per prompt, ranked against each other (default 4)")
    kl_coef: float | None = option(None, "PPO: the per-token KL penalty's coefficient (default 0.05); GRPO: the "
                                   "KL term's weight in the loss (default 0.04)")  # fmt: skip
    kl_target: float | None = option(None, "PPO: adapt the KL coefficient towards this KL per completion (Ziegler "
                                     "et al.); default: fixed")  # fmt: skip
    kl_horizon: int = option(10000, "PPO with --kl-target: the adaptive controller's horizon in completions")
    ppo_epochs: int = option(4, "passes over each rollout")
    clip: float = option(0.2, "the policy ratio's clip range")
    vf_coef: float = option(0.1, "PPO: weight of the value loss")
    vf_clip: float = option(0.2, "PPO: how far a value may move from the rollout's estimate")
    gamma: float = option(1.0, "PPO: discount")
    lam: float = option(0.95, "PPO: GAE's lambda")
    whiten_rewards: bool = option(False, "PPO: scale the per-token rewards of a rollout to unit variance")
    eos_penalty: float | None = option(None, "subtract this from the reward of a completion that does not end "
                                       "within --max-new-tokens")  # fmt: skip
    collapse_share: float = option(0.25, "report a collapse when this share of a rollout's completions or fewer differ")

    @property
    def completions_per_prompt(self) -> int:
        return (self.group_size or 4) if self.method == "grpo" else 1

    @property
    def kl_value(self) -> float:
        return self.kl_coef if self.kl_coef is not None else (0.05 if self.method == "ppo" else 0.04)

    def validate(self) -> None:
        super().validate()
        if self.method not in ONLINE:
            return
        if not self.prompts:
            raise LlmlabError(f"--method {self.method} samples prompts: no --prompts", "pass --prompts FILE")
        if not self.reward:
            raise LlmlabError(f"--method {self.method} needs a --reward", "pass a reward model, a classifier with "
                              "--reward-label, module:function, or vader / toxicity / harmless")  # fmt: skip
        if self.kl_target and self.kl_coef == 0:
            raise LlmlabError("--kl-target adapts the KL coefficient by multiplying it: it cannot start at 0",
                              "pass --kl-coef > 0 (e.g. 0.05) with --kl-target")  # fmt: skip
        checks = [("max-new-tokens", self.max_new_tokens >= 1), ("rollout-prompts", self.rollout_prompts >= 1),
                  ("ppo-epochs", self.ppo_epochs >= 1), ("kl-horizon", self.kl_horizon >= 1),
                  ("group-size", self.group_size is None or self.group_size >= 2),
                  ("kl-coef", self.kl_coef is None or self.kl_coef >= 0 and (self.kl_coef > 0 or not self.kl_target)),
                  ("clip", self.clip > 0), ("eos-penalty", self.eos_penalty is None or self.eos_penalty >= 0),
                  ("collapse-share", 0 <= self.collapse_share < 1),
                  ("vf-clip", self.vf_clip > 0), ("kl-target", self.kl_target is None or self.kl_target > 0),
                  ("gamma", 0 < self.gamma <= 1), ("lam", 0 <= self.lam <= 1)]  # fmt: skip
        bad = next((name for name, ok in checks if not ok), None)
        if bad:
            raise LlmlabError(f"--{bad} {getattr(self, bad.replace('-', '_'))} is out of range",
                              f"see llmlab align --help for --{bad}")  # fmt: skip


# options that only some methods read: giving one to another method is refused, not ignored
PPO_ONLY = ("ppo",)
ONLY_FOR = {
    "label_smoothing": ("dpo",), "simpo_gamma": ("simpo",), "beta": METHODS, "data": METHODS,
    "val_data": METHODS, "block_size": METHODS, "packing": METHODS, "prompts": ONLINE, "val_prompts": ONLINE,
    "reward": ONLINE, "reward_label": ONLINE, "max_new_tokens": ONLINE, "rollout_prompts": ONLINE, "ppo_epochs": ONLINE,
    "clip": ONLINE, "kl_coef": ONLINE, "eos_penalty": ONLINE, "collapse_share": ONLINE, "group_size": ("grpo",),
    "kl_target": PPO_ONLY, "kl_horizon": PPO_ONLY, "vf_coef": PPO_ONLY, "vf_clip": PPO_ONLY, "gamma": PPO_ONLY,
    "lam": PPO_ONLY, "whiten_rewards": PPO_ONLY,
}  # fmt: skip


def _refuse_unused(options: object, method: str) -> None:
    """An option set away from its default for a method that does not read it is an error, not ignored."""
    defaults = {f.name: f.default for f in dataclasses.fields(options) if f.default is not dataclasses.MISSING}
    for name, methods in ONLY_FOR.items():
        value = getattr(options, name, None)
        if value not in (None, [], False, defaults.get(name)) and method not in methods:
            flag = "--" + name.replace("_", "-")
            raise LlmlabError(f"{flag} does not apply to --method {method}", f"{flag} is read by {', '.join(methods)}")


@dataclass
class AlignConfig(TrainerConfig, LoraOptions, OnlineOptions, AlignOptions):
    """Everything `llmlab align` takes. Preference optimisation moves a model little: small steps."""

    lr: float = option(5e-5, "peak learning rate (LoRA ~5e-5; full fine-tuning ~5e-7..5e-6, as in the DPO paper)")
    weight_decay: float = option(0.0, "AdamW weight decay on matrices")
    warmup_steps: int = option(10, "linear warmup steps")
    batch_size: int = option(8, "pairs per micro-batch (online methods: completions per micro-batch)")
    eval_interval: int = option(50, "validate every N steps")
    eval_iters: int = option(5, "validation batches per evaluation")
    out: str = option("runs/align", "run folder: the adapter (LoRA) or the model (full), metrics.jsonl")

    def validate(self) -> None:
        super().validate()
        if self.tune == "lora":
            self.lora_spec().validate()
        if self.method in ONLINE:
            sequences = self.rollout_prompts * self.completions_per_prompt
            if sequences % (self.batch_size * self.grad_accum):
                raise LlmlabError(
                    f"a rollout of {sequences} completions does not split into micro-batches of "
                    f"--batch-size {self.batch_size} x --grad-accum {self.grad_accum}",
                    "make --rollout-prompts x completions per prompt a multiple of their product",
                )
