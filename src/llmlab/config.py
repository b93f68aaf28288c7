"""ModelConfig: the architecture as data, and named presets (a preset is a dict of fields)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmlab.errors import LlmlabError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")


@dataclass
class ModelConfig:
    """Architecture of a decoder-only transformer. `None` fields are derived in __post_init__."""

    vocab_size: int = 8192
    block_size: int = 256
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention when < n_head
    n_embd: int = 128
    intermediate_size: int | None = None  # 4*n_embd for GELU, ~8/3*n_embd for SwiGLU
    norm: str = "layernorm"
    mlp: str = "gelu"
    positions: str = "learned"
    bias: bool = True
    tie_embeddings: bool = True
    dropout: float = 0.0
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    family: str = "decoder"

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.intermediate_size is None:
            if self.mlp == "swiglu":
                hidden = int(8 * self.n_embd / 3)
                self.intermediate_size = 64 * ((hidden + 63) // 64)
            else:
                self.intermediate_size = 4 * self.n_embd
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        def bad(what: str) -> LlmlabError:
            return LlmlabError(f"invalid model config: {what}", "fix the option or the config.json")

        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if int(getattr(self, name)) <= 0:
                raise bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise bad(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise bad(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.positions == "rope" and self.head_dim % 2:
            raise bad(f"rotary positions need an even head dimension, got {self.head_dim}")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise bad(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        if self.family != "decoder":
            raise bad(f"family {self.family!r} is not supported yet (only 'decoder')")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LlmlabError(
                f"unknown model config fields: {', '.join(unknown)}",
                "the checkpoint was written by a newer llmlab or edited by hand",
            )
        return cls(**data)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise LlmlabError(f"unknown preset {name!r}", f"choose one of: {', '.join(PRESETS)}")
        fields = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**fields)


_GPT2 = dict(norm="layernorm", mlp="gelu", positions="learned", bias=True, tie_embeddings=True)
_LLAMA = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, tie_embeddings=True, norm_eps=1e-6)

# Sizes are quoted for an 8,192-token vocabulary; the real count is printed at the start of training.
PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-nano": dict(_GPT2, n_layer=4, n_head=4, n_embd=128),  # ~1.9M
    "gpt2-micro": dict(_GPT2, n_layer=6, n_head=6, n_embd=192),  # ~4.3M
    "gpt2-mini": dict(_GPT2, n_layer=6, n_head=6, n_embd=384),  # ~14M
    "gpt2-small": dict(_GPT2, n_layer=12, n_head=12, n_embd=768, block_size=1024),  # ~92M (124M at 50,257)
    "llama-nano": dict(_LLAMA, n_layer=4, n_head=4, n_kv_head=2, n_embd=128),  # ~1.8M
    "llama-micro": dict(_LLAMA, n_layer=6, n_head=6, n_kv_head=2, n_embd=192),  # ~3.9M
    "llama-mini": dict(_LLAMA, n_layer=8, n_head=8, n_kv_head=4, n_embd=384),  # ~16M
    "llama-small": dict(_LLAMA, n_layer=12, n_head=12, n_kv_head=4, n_embd=768, block_size=1024),  # ~82M
}
