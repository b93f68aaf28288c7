"""ModelConfig: the architecture as data, and named presets (a preset is a dict of fields)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass
from typing import Any

from llmlab.errors import LlmlabError

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "gelu-erf", "relu", "swiglu", "geglu")  # gelu: tanh form (GPT-2); gelu-erf: exact (BERT)
POSITIONS = ("learned", "rope", "sinusoidal", "relative")  # relative: T5's bucketed bias
FAMILIES = ("decoder", "encoder", "encoder-decoder")
# Task heads: one label per text (softmax), any labels per text (sigmoids), a score, a label per token.
TASKS = ("classify", "multilabel", "regress", "tag")


FIX_CONFIG = "fix the option or the config.json"


def _alternatives(hint: Any) -> tuple[Any, ...]:
    """The types a hint allows: (int, NoneType) for `int | None`, (hint,) for a plain type."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a field's annotation. bool is not an int here, an int is a float."""
    if hint is Any:
        return True
    if len(_alternatives(hint)) > 1:
        return any(_fits(value, alternative) for alternative in _alternatives(hint))
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if origin is type(None):
        return value is None
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin in (list, tuple):
        items = args[:1] if origin is list or (len(args) == 2 and args[1] is Ellipsis) else args
        return isinstance(value, list | tuple) and _items_fit(list(value), items)
    if origin is dict:
        return isinstance(value, dict) and (not args or all(_fits(k, args[0]) for k in value))
    return isinstance(value, origin)


def _items_fit(values: list[Any], items: tuple[Any, ...]) -> bool:
    """list[X] and tuple[X, ...] give one item type for all; tuple[X, Y] one per position."""
    if len(items) == 1:
        return all(_fits(v, items[0]) for v in values)
    return not items or (len(values) == len(items) and all(map(_fits, values, items)))


def _coerced(value: Any, hint: Any) -> Any:
    """An int where only a float is allowed becomes a float; a JSON list for a tuple field a tuple."""
    allowed = [typing.get_origin(a) or a for a in _alternatives(hint)]
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed and int not in allowed:
        return float(value)
    if isinstance(value, list) and tuple in allowed and list not in allowed:
        return tuple(value)
    return value


def _describe(hint: Any) -> str:
    """A field's type in the words of JSON, which is where a wrong value comes from."""
    words = {type(None): "null", int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    words.update({list: "a list", tuple: "a list", dict: "an object"})
    return " or ".join(
        "anything" if a is Any else words.get(typing.get_origin(a) or a, getattr(a, "__name__", str(a)))
        for a in _alternatives(hint)
    )


def _shown(value: Any) -> str:
    """A value as it reads in config.json, cut short if long."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class ModelConfig:
    """Architecture of a transformer of any family. `None` fields are derived in __post_init__.

    For encoder-decoder models `n_layer` counts encoder blocks and `n_decoder_layer` decoder blocks;
    `block_size` is the longest sequence either stack takes.
    """

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
    n_decoder_layer: int | None = None  # encoder-decoder only; default n_layer
    relative_buckets: int = 32  # T5 relative position bias: buckets ...
    relative_max_distance: int = 128  # ... and the distance beyond which all share the last bucket
    decoder_start_token_id: int | None = None  # encoder-decoder: the first decoder input (T5: pad)
    head_size: int | None = None  # per-head width when not n_embd / n_head (T5 v1.1 small: 6 x 64 in 512)
    attention_scale: float | None = None  # None: 1/sqrt(head_dim); T5 uses 1 (folded into its init)
    norm_position: str = "pre"  # pre: x + f(norm(x)) (GPT-2, Llama, T5); post: norm(x + f(x)) (BERT)
    embed_norm: bool = False  # a norm over the summed embeddings (BERT)
    type_vocab_size: int = 0  # BERT's token-type (segment) embeddings; 0 = none
    mlm_head: bool = True  # encoder: the masked-LM head (False for a bare BertModel, e.g. sentence encoders)
    scale_decoder_outputs: bool | None = None  # encoder-decoder: x / sqrt(d) before the head; None = iff tied (T5)
    rope_scaling: dict[str, Any] | None = None  # Llama 3 style or linear frequency scaling, as in HF configs
    task: str | None = None  # a task head, one of TASKS (encoders: all; decoders: all but tag)
    labels: list[str] = dataclasses.field(default_factory=list)  # the task head's outputs, in order

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.n_decoder_layer is None and self.family == "encoder-decoder":
            self.n_decoder_layer = self.n_layer
        if self.intermediate_size is None:
            if self.gated_mlp:
                hidden = int(8 * self.n_embd / 3)
                self.intermediate_size = 64 * ((hidden + 63) // 64)
            else:
                self.intermediate_size = 4 * self.n_embd
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.head_size or self.n_embd // self.n_head

    @property
    def attention_width(self) -> int:
        """Width of the concatenated heads (n_embd unless head_size says otherwise)."""
        return self.n_head * self.head_dim

    @property
    def gated_mlp(self) -> bool:
        return self.mlp in ("swiglu", "geglu")

    @property
    def softmax_scale(self) -> float:
        return self.attention_scale if self.attention_scale is not None else self.head_dim**-0.5

    def validate(self) -> None:
        def bad(what: str) -> LlmlabError:
            return LlmlabError(f"invalid model config: {what}", "fix the option or the config.json")

        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "relative_buckets"):
            if int(getattr(self, name)) <= 0:
                raise bad(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("n_kv_head", "intermediate_size", "head_size"):  # optional, but 0 would divide by zero
            if getattr(self, name) is not None and int(getattr(self, name)) <= 0:
                raise bad(f"{name} must be positive, got {getattr(self, name)}")
        if self.type_vocab_size < 0:
            raise bad(f"type_vocab_size must be 0 or more, got {self.type_vocab_size}")
        if self.head_size is None and self.n_embd % self.n_head:
            raise bad(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_kv_head:
            raise bad(f"n_head {self.n_head} is not divisible by n_kv_head {self.n_kv_head}")
        if self.positions == "rope" and self.head_dim % 2:
            raise bad(f"rotary positions need an even head dimension, got {self.head_dim}")
        for name, allowed in (("norm", NORMS), ("mlp", MLPS), ("positions", POSITIONS), ("family", FAMILIES)):
            if getattr(self, name) not in allowed:
                raise bad(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise bad(f"dropout must be in [0, 1), got {self.dropout}")
        if self.norm_position not in ("pre", "post"):
            raise bad(f"norm_position must be pre or post, got {self.norm_position!r}")
        if self.rope_scaling is not None and self.rope_scaling.get("rope_type", "default") not in (
            "default",
            "linear",
            "llama3",
        ):
            raise bad(f"rope scaling {self.rope_scaling.get('rope_type')!r} is not supported (default, linear, llama3)")
        if self.positions == "sinusoidal" and self.n_embd % 2:
            raise bad(f"sinusoidal positions need an even width, got {self.n_embd}")
        if self.family == "encoder-decoder" and int(self.n_decoder_layer or 0) <= 0:
            raise bad(f"n_decoder_layer must be positive, got {self.n_decoder_layer}")
        if self.family != "encoder-decoder" and self.n_decoder_layer is not None:
            raise bad(f"n_decoder_layer is for encoder-decoder models, not family {self.family!r}")
        self._validate_task(bad)

    def _validate_task(self, bad) -> None:
        if self.task is None:
            return
        if self.task not in TASKS:
            raise bad(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.family == "encoder-decoder" or (self.family == "decoder" and self.task == "tag"):
            raise bad(f"a {self.task} head is for encoders{'' if self.task == 'tag' else ' and decoders'}, "
                      f"not family {self.family!r}")  # fmt: skip
        if self.task != "regress" and len(self.labels) < 2:
            raise bad(f"a {self.task} head needs at least two labels, got {len(self.labels)}")
        if len(set(self.labels)) != len(self.labels):
            raise bad("the task head's labels repeat a name")

    @property
    def num_labels(self) -> int:
        """Outputs of the task head: one per label, or one score."""
        return 1 if self.task == "regress" and not self.labels else len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Fields from JSON, each checked against its annotation first: a hand-edited "n_layer": "x"
        is one clear error, not a traceback from deep inside model building."""
        if not isinstance(data, dict):
            raise LlmlabError(f"the model config is {_shown(data)}, not an object of fields", FIX_CONFIG)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LlmlabError(
                f"unknown model config fields: {', '.join(unknown)}",
                "the checkpoint was written by a newer llmlab or edited by hand",
            )
        hints = typing.get_type_hints(cls)
        wrong = [
            f"{name} is {_shown(value)}, expected {_describe(hints[name])}"
            for name, value in data.items()
            if not _fits(value, hints[name])
        ]
        if wrong:
            raise LlmlabError(f"invalid model config: {'; '.join(wrong)}", FIX_CONFIG)
        return cls(**{name: _coerced(value, hints[name]) for name, value in data.items()})

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise LlmlabError(f"unknown preset {name!r}", f"choose one of: {', '.join(PRESETS)}")
        fields = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
        return cls(**fields)


_GPT2 = dict(norm="layernorm", mlp="gelu", positions="learned", bias=True, tie_embeddings=True)
_LLAMA = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False, tie_embeddings=True, norm_eps=1e-6)
# BERT: post-norm blocks, a norm over the summed embeddings, token-type embeddings, exact GELU.
_BERT = dict(
    _GPT2, family="encoder", block_size=128, mlp="gelu-erf", norm_position="post", embed_norm=True,
    type_vocab_size=2, norm_eps=1e-12,
)  # fmt: skip
# T5 v1.1 blocks (gated GELU, RMSNorm, no biases, relative positions, unscaled attention) with the tied,
# scaled head of T5 v1.0, which suits small models.
_T5 = dict(
    family="encoder-decoder", norm="rmsnorm", mlp="geglu", positions="relative", bias=False, norm_eps=1e-6,
    block_size=128, attention_scale=1.0,
)  # fmt: skip

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
    "bert-nano": dict(_BERT, n_layer=4, n_head=4, n_embd=128),  # ~1.9M
    "bert-micro": dict(_BERT, n_layer=6, n_head=6, n_embd=192),  # ~4.3M
    "bert-mini": dict(_BERT, n_layer=6, n_head=6, n_embd=384),  # ~14M
    "bert-base": dict(_BERT, n_layer=12, n_head=12, n_embd=768, block_size=512),  # ~92M (110M at 30,522)
    "t5-nano": dict(_T5, n_layer=3, n_decoder_layer=3, n_head=4, n_embd=128),  # ~2.5M
    "t5-micro": dict(_T5, n_layer=4, n_decoder_layer=4, n_head=6, n_embd=192),  # ~5.7M
    "t5-mini": dict(_T5, n_layer=4, n_decoder_layer=4, n_head=6, n_embd=384),  # ~20M
    "t5-small": dict(_T5, n_layer=6, n_decoder_layer=6, n_head=8, n_embd=512, block_size=512),  # ~49M
    # The original Transformer (Vaswani et al. 2017) base model, pre-norm: sinusoidal positions, ReLU MLP.
    "transformer-base": dict(
        family="encoder-decoder",
        norm="layernorm",
        mlp="relu",
        positions="sinusoidal",
        bias=True,
        n_layer=6,
        n_decoder_layer=6,
        n_head=8,
        n_embd=512,
        intermediate_size=2048,
        block_size=512,
    ),  # ~48M at 8,192 (63M at the paper's 37,000)
}
