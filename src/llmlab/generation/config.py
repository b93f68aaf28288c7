"""How to decode: the settings a checkpoint stores as its defaults and a Generator takes.

Kept apart from the generator so the checkpoint format can read and write them without importing
decoding code (layers point down: checkpoint -> generation.config, never -> generation.generator).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.options import option


@dataclass
class GenerationConfig:
    """How to decode. temperature 0 (or greedy=True) means greedy; top_k 0 and top_p 1 mean off."""

    max_new_tokens: int = option(128, "tokens to generate per sample")
    min_new_tokens: int = option(0, "suppress end-of-sequence before this many tokens")
    temperature: float = option(1.0, "divide logits by this (0 = greedy)")
    top_k: int = option(0, "keep the k most likely tokens (0 = off)")
    top_p: float = option(1.0, "keep the smallest set of tokens whose probability reaches p (1 = off)")
    greedy: bool = option(False, "always take the most likely token")
    stop: list[str] = option(
        help="stop a sample when it produces this text (repeatable; \\n for a newline)", default_factory=list
    )
    seed: int | None = option(None, "seed for sampling")
    num_samples: int = option(1, "samples per prompt")
    truncate_prompt: bool = option(
        False, "keep the last tokens of a prompt too long for the context window (default: refuse)"
    )

    @property
    def do_sample(self) -> bool:
        return not self.greedy and self.temperature > 0

    def validate(self) -> None:
        def bad(what: str, fix: str) -> LlmlabError:
            return LlmlabError(what, fix)

        if self.max_new_tokens < 0:
            raise bad(f"max-new-tokens must be >= 0, got {self.max_new_tokens}", "pass a count such as 128")
        if not 0 <= self.min_new_tokens <= max(self.max_new_tokens, 0):
            raise bad(f"min-new-tokens must be in [0, max-new-tokens], got {self.min_new_tokens}", "lower it")
        if self.temperature < 0:
            raise bad(f"temperature must be >= 0, got {self.temperature}", "use 0 for greedy or e.g. 0.8")
        if self.top_k < 0:
            raise bad(f"top-k must be >= 0, got {self.top_k}", "use 0 to disable it or e.g. 50")
        if not 0.0 < self.top_p <= 1.0:
            raise bad(f"top-p must be in (0, 1], got {self.top_p}", "use 1 to disable it or e.g. 0.95")
        if self.num_samples < 1:
            raise bad(f"num-samples must be >= 1, got {self.num_samples}", "pass 1 or more")
        if any(not s for s in self.stop):
            raise bad("a stop string is empty", "remove it or give it text")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# Whether to compile the decoding step (generation/decode_step.py): kept here, free of torch, for the CLI.
COMPILE_CHOICES = ("auto", "on", "off")
# With "auto" a generator compiles once it has this many tokens (rows x steps) to decode in all: a cold
# compile costs ~20-30 s and saves ~1-3 ms a step on 2 cores; a warm one (the disk cache) ~4 s.
AUTO_COMPILE_TOKENS = 4096


def compile_choice(requested: str = "auto") -> str:
    """`auto` unless the caller or $LLMLAB_COMPILE says otherwise (the caller wins)."""
    if requested not in COMPILE_CHOICES:
        raise LlmlabError(f"compile={requested!r} is not a choice", f"use one of {', '.join(COMPILE_CHOICES)}")
    if requested != "auto":
        return requested
    env = os.environ.get("LLMLAB_COMPILE", "auto")
    if env not in COMPILE_CHOICES:
        raise LlmlabError(f"$LLMLAB_COMPILE is {env!r}", f"set it to one of {', '.join(COMPILE_CHOICES)} or unset it")
    return env
