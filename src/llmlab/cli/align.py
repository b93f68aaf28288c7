"""`llmlab reward` (a Bradley-Terry reward model), `llmlab align` (preference optimisation: DPO, IPO,
SimPO, ORPO offline; PPO, GRPO online), their options generated from RewardConfig and AlignConfig;
`best-of-n` and `preferences` (sampling against a reward)."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

from llmlab.cli.common import ADAPTER_HELP, CHECKPOINT_HELP, add_dataclass_options, exit_status, print_table, unescape
from llmlab.errors import LlmlabError


def cmd_align(args: argparse.Namespace) -> int:
    """Align with the options given; with --resume, the options not given again are the original run's."""
    from llmlab.align.config import AlignConfig
    from llmlab.align.recipe import align
    from llmlab.training.checkpointing import with_saved_options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    return exit_status(align(with_saved_options(AlignConfig, given)))


def cmd_reward(args: argparse.Namespace) -> int:
    from llmlab.align.reward import RewardConfig, train_reward
    from llmlab.training.checkpointing import with_saved_options

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None}
    return exit_status(train_reward(with_saved_options(RewardConfig, given)))


def read_prompts(given: list[str], file: str | None) -> list[str]:
    """--prompt texts, then --prompts: a text file (one a line) or records with a `prompt` field."""
    from llmlab.align.data import read_prompts as read_prompt_file

    prompts = [unescape(p) for p in given] + (read_prompt_file(file) if file else [])
    if not prompts:
        raise LlmlabError("no prompts", "pass --prompt TEXT (repeatable) or --prompts FILE")
    return prompts


def _scored(args: argparse.Namespace):
    """Load the policy and the reward, sample --n completions per prompt and score them."""
    import dataclasses

    from llmlab.align.rewards import load_reward
    from llmlab.align.sampling import sample_and_score
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.load import load_checkpoint

    prompts = read_prompts(args.prompt or [], args.prompts)
    reward = load_reward(args.reward, args.reward_label)
    ckpt = load_checkpoint(args.checkpoint, adapter=args.adapter)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationConfig) if hasattr(args, f.name)}
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), **options})
    return sample_and_score(Generator(ckpt.model, ckpt.tokenizer), prompts, reward, args.n, config)


def cmd_best_of_n(args: argparse.Namespace) -> None:
    scored = _scored(args)
    if args.json:
        for s in scored:
            print(json.dumps({"prompt": s.prompt, "best": s.completions[s.best], "reward": s.rewards[s.best],
                              "rewards": s.rewards}))  # fmt: skip
        return
    rows = [[s.prompt[:30], s.completions[s.best][:50], f"{s.rewards[s.best]:.4f}",
             f"{sum(s.rewards) / len(s.rewards):.4f}"] for s in scored]  # fmt: skip
    print_table(rows, ["prompt", f"best of {args.n}", "reward", "mean reward of the samples"], right=False)


def cmd_preferences(args: argparse.Namespace) -> None:
    from llmlab.align.sampling import preference_pairs

    out = Path(args.out)
    if out.exists():
        raise LlmlabError(f"{out} exists", "choose a new --out file (nothing is overwritten)")
    if not math.isfinite(args.min_margin) or args.min_margin < 0:
        raise LlmlabError(f"--min-margin must be a number >= 0, got {args.min_margin}", "use e.g. --min-margin 0.5")
    pairs, skipped = preference_pairs(_scored(args), args.min_margin)
    if not pairs:
        raise LlmlabError(f"no prompt's best sample beat its worst by {args.min_margin} or more: no preference pair",
                          "raise --n or the temperature, or lower --min-margin")  # fmt: skip
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(p) + "\n" for p in pairs), encoding="utf-8")
    os.replace(tmp, out)
    within = f", or within {args.min_margin}" if args.min_margin else ""
    print(f"{out}: {len(pairs)} pairs (best against worst of {args.n} samples per prompt); {skipped} prompts "
          f"skipped (their samples scored the same{within})")  # fmt: skip


def _sampling_parser(subparsers: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    from llmlab.generation.config import GenerationConfig

    p = subparsers.add_parser(name, help=help_text)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--adapter", help=ADAPTER_HELP)
    p.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    p.add_argument("--prompts", help="a text file (one prompt a line) or records with a prompt field")
    p.add_argument("--reward", required=True, help="a reward model or classifier checkpoint, module:function, "
                   "or vader / toxicity / harmless")  # fmt: skip
    p.add_argument("--reward-label", help="with a classifier: the label whose probability is the reward")
    p.add_argument("--n", type=int, default=4, help="samples per prompt")
    add_dataclass_options(p, GenerationConfig, skip=("num_samples",))
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmlab.align.config import AlignConfig
    from llmlab.align.reward import RewardConfig

    b = _sampling_parser(subparsers, "best-of-n", "sample n completions per prompt and keep the best by a reward")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.set_defaults(func=cmd_best_of_n)
    pr = _sampling_parser(subparsers, "preferences", "write preference pairs: the best and worst of n samples")
    pr.add_argument("--out", required=True, help="the .jsonl file of pairs to write")
    pr.add_argument("--min-margin", type=float, default=0.0,
                    help="skip a prompt whose best sample's reward beats its worst's by less than this (pairs decided "
                         "by the reward's noise teach DPO nothing but to lower both)")  # fmt: skip
    pr.set_defaults(func=cmd_preferences)

    r = subparsers.add_parser("reward", help="train a reward model on preference pairs (Bradley-Terry)")
    r.add_argument("base", nargs="?", default=None, help=CHECKPOINT_HELP + " (not needed with --resume)")
    add_dataclass_options(r, RewardConfig, skip=("base",))
    r.set_defaults(func=cmd_reward)

    a = subparsers.add_parser(
        "align", help="align a decoder: DPO, IPO, SimPO, ORPO on pairs; PPO, GRPO online against a reward"
    )
    a.add_argument("base", nargs="?", default=None, help=CHECKPOINT_HELP + " (not needed with --resume)")
    add_dataclass_options(a, AlignConfig, skip=("base",))
    a.set_defaults(func=cmd_align)
