"""Hugging Face interop by explicit weight maps: `{our_name: their_name(s)}` per architecture, in one place.

Four architectures map onto llmlab's families: GPT-2 and Llama (decoder), T5 (encoder-decoder,
v1.0 and v1.1/FLAN-T5) and BERT (encoder). For each there is one name map, one translation of
their config.json to a ModelConfig and back, and the list of our options that have no counterpart.

A map entry is one of their names, or a tuple of names whose tensors are concatenated along the
output dimension into one of ours (our attention keeps q, k, v in one `qkv` matrix, cross-attention
k and v in one `kv`, a gated MLP its gate and up in one `up`). GPT-2's Conv1D layers store weights
as (in, out), so they are transposed on the way.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model import LanguageModel, build_model
from llmlab.model.heads import SEQUENCE_TASKS

Names = dict[str, tuple[str, ...]]


def _stack(ours: str, theirs: str, layers: int, entries: dict[str, str | tuple[str, ...]]) -> Names:
    """Expand per-block entries `{our_suffix: their_suffix(es)}` for blocks 0..layers-1."""
    names: Names = {}
    for i in range(layers):
        for our_suffix, their in entries.items():
            their = (their,) if isinstance(their, str) else their
            names[f"{ours}.blocks.{i}.{our_suffix}"] = tuple(f"{theirs}.{i}.{t}" for t in their)
    return names


def _single(entries: dict[str, str]) -> Names:
    return {ours: (theirs,) for ours, theirs in entries.items()}


# -- GPT-2 -------------------------------------------------------------------------------------------


def gpt2_names(c: ModelConfig) -> Names:
    block = {
        f"{ours}.{p}": f"{theirs}.{p}"
        for ours, theirs in (
            ("norm1", "ln_1"),
            ("attn.qkv", "attn.c_attn"),
            ("attn.proj", "attn.c_proj"),
            ("norm2", "ln_2"),
            ("mlp.up", "mlp.c_fc"),
            ("mlp.down", "mlp.c_proj"),
        )
        for p in ("weight", "bias")
    }
    names = {
        **_single(
            {
                "embed.weight": "transformer.wte.weight",
                "decoder.pos_embed.weight": "transformer.wpe.weight",
                "decoder.norm.weight": "transformer.ln_f.weight",
                "decoder.norm.bias": "transformer.ln_f.bias",
            }
        ),
        **_stack("decoder", "transformer.h", c.n_layer, block),
    }
    return task_names(c, names)


def gpt2_config(hf: dict[str, Any]) -> ModelConfig:
    return ModelConfig(
        family="decoder",
        vocab_size=hf["vocab_size"],
        block_size=hf.get("n_positions", 1024),
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=hf["n_embd"],
        intermediate_size=hf.get("n_inner") or 4 * hf["n_embd"],
        norm="layernorm",
        mlp=_activation(hf.get("activation_function", "gelu_new")),
        positions="learned",
        bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        **_task_fields(hf),
    )


def gpt2_hf_config(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size,
        n_positions=c.block_size,
        n_embd=c.n_embd,
        n_layer=c.n_layer,
        n_head=c.n_head,
        n_inner=c.intermediate_size,
        layer_norm_epsilon=c.norm_eps,
        activation_function="gelu_new" if c.mlp == "gelu" else "gelu",
        resid_pdrop=c.dropout,
        embd_pdrop=c.dropout,
        attn_pdrop=c.dropout,
        tie_word_embeddings=True,
        **task_hf_config(c),
    )


# -- Llama -------------------------------------------------------------------------------------------


def llama_names(c: ModelConfig) -> Names:
    attention = "self_attn.{}_proj.weight"
    names = {
        **_single({"embed.weight": "model.embed_tokens.weight", "decoder.norm.weight": "model.norm.weight"}),
        **_stack(
            "decoder",
            "model.layers",
            c.n_layer,
            {
                "norm1.weight": "input_layernorm.weight",
                "attn.qkv.weight": tuple(attention.format(x) for x in "qkv"),
                "attn.proj.weight": attention.format("o"),
                "norm2.weight": "post_attention_layernorm.weight",
                "mlp.up.weight": ("mlp.gate_proj.weight", "mlp.up_proj.weight"),
                "mlp.down.weight": "mlp.down_proj.weight",
            },
        ),
    }
    if not c.tie_embeddings:
        names["lm_head.weight"] = ("lm_head.weight",)
    return task_names(c, names)


def llama_config(hf: dict[str, Any]) -> ModelConfig:
    rope = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise LlmlabError("Llama checkpoints with attention or MLP biases are not supported", "use one without")
    head_dim = hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"]
    return ModelConfig(
        family="decoder",
        vocab_size=hf["vocab_size"],
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
        n_embd=hf["hidden_size"],
        head_size=head_dim if head_dim * hf["num_attention_heads"] != hf["hidden_size"] else None,
        intermediate_size=hf["intermediate_size"],
        norm="rmsnorm",
        mlp="swiglu",
        positions="rope",
        bias=False,
        tie_embeddings=hf.get("tie_word_embeddings", False),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        rope_scaling=dict(scaling) if scaling else None,
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        **_task_fields(hf),
    )


def llama_hf_config(c: ModelConfig) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": c.rope_theta, **(c.rope_scaling or {})}
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        num_key_value_heads=c.n_kv_head,
        head_dim=c.head_dim,
        max_position_embeddings=c.block_size,
        rms_norm_eps=c.norm_eps,
        rope_parameters=rope,
        attention_dropout=c.dropout,
        tie_word_embeddings=c.tie_embeddings,
        **task_hf_config(c),
    )


# -- T5 ----------------------------------------------------------------------------------------------


def t5_names(c: ModelConfig) -> Names:
    attention = {
        "attn.qkv.weight": ("SelfAttention.q.weight", "SelfAttention.k.weight", "SelfAttention.v.weight"),
        "attn.proj.weight": "SelfAttention.o.weight",
    }

    def feed_forward(layer: int) -> dict[str, str | tuple[str, ...]]:
        up = ("DenseReluDense.wi_0.weight", "DenseReluDense.wi_1.weight") if c.gated_mlp else "DenseReluDense.wi.weight"
        return {
            "norm2.weight": f"layer.{layer}.layer_norm.weight",
            "mlp.up.weight": tuple(f"layer.{layer}.{u}" for u in ((up,) if isinstance(up, str) else up)),
            "mlp.down.weight": f"layer.{layer}.DenseReluDense.wo.weight",
        }

    def self_attention() -> dict[str, str | tuple[str, ...]]:
        return {
            "norm1.weight": "layer.0.layer_norm.weight",
            **{k: tuple(f"layer.0.{x}" for x in ((v,) if isinstance(v, str) else v)) for k, v in attention.items()},
        }

    cross = {
        "norm_cross.weight": "layer.1.layer_norm.weight",
        "cross.q.weight": "layer.1.EncDecAttention.q.weight",
        "cross.kv.weight": ("layer.1.EncDecAttention.k.weight", "layer.1.EncDecAttention.v.weight"),
        "cross.proj.weight": "layer.1.EncDecAttention.o.weight",
    }
    bias = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    names = {
        **_single(
            {
                "embed.weight": "shared.weight",
                "encoder.rel_bias.bias.weight": f"encoder.{bias}",
                "decoder.rel_bias.bias.weight": f"decoder.{bias}",
                "encoder.norm.weight": "encoder.final_layer_norm.weight",
                "decoder.norm.weight": "decoder.final_layer_norm.weight",
            }
        ),
        **_stack("encoder", "encoder.block", c.n_layer, {**self_attention(), **feed_forward(1)}),
        **_stack("decoder", "decoder.block", c.n_decoder_layer, {**self_attention(), **cross, **feed_forward(2)}),
    }
    if not c.tie_embeddings:
        names["lm_head.weight"] = ("lm_head.weight",)
    return task_names(c, names)


def t5_config(hf: dict[str, Any]) -> ModelConfig:
    projection = hf.get("feed_forward_proj", "relu")
    mlp = {"relu": "relu", "gated-gelu": "geglu", "gated-silu": "swiglu"}.get(projection)
    if mlp is None:
        raise LlmlabError(f"T5 feed-forward {projection!r} is not supported", "relu, gated-gelu or gated-silu")
    d_model, heads, d_kv = hf["d_model"], hf["num_heads"], hf["d_kv"]
    # T5 v1.0 ties its head and scales the decoder output by 1/sqrt(d); v1.1 (FLAN-T5) does neither.
    # transformers 5 always ties and records the scaling apart, as scale_decoder_outputs.
    tied = hf.get("tie_word_embeddings", True)
    scaled = hf.get("scale_decoder_outputs", tied)
    return ModelConfig(
        family="encoder-decoder",
        vocab_size=hf["vocab_size"],
        block_size=hf.get("n_positions", 512),
        n_layer=hf["num_layers"],
        n_decoder_layer=hf.get("num_decoder_layers") or hf["num_layers"],
        n_head=heads,
        n_embd=d_model,
        head_size=d_kv if d_kv * heads != d_model else None,
        intermediate_size=hf["d_ff"],
        norm="rmsnorm",
        mlp=mlp,
        positions="relative",
        bias=False,
        tie_embeddings=tied,
        scale_decoder_outputs=None if scaled == tied else scaled,
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        decoder_start_token_id=hf.get("decoder_start_token_id", 0),
        attention_scale=1.0,
    )


def t5_hf_config(c: ModelConfig) -> dict[str, Any]:
    projection = {"relu": "relu", "geglu": "gated-gelu", "swiglu": "gated-silu"}[c.mlp]
    return dict(
        vocab_size=c.vocab_size,
        d_model=c.n_embd,
        d_kv=c.head_dim,
        d_ff=c.intermediate_size,
        num_layers=c.n_layer,
        num_decoder_layers=c.n_decoder_layer,
        num_heads=c.n_head,
        relative_attention_num_buckets=c.relative_buckets,
        relative_attention_max_distance=c.relative_max_distance,
        layer_norm_epsilon=c.norm_eps,
        feed_forward_proj=projection,
        # in transformers 5 this flag only says whether the decoder output is scaled (the head is always tied)
        tie_word_embeddings=c.tie_embeddings if c.scale_decoder_outputs is None else c.scale_decoder_outputs,
        dropout_rate=c.dropout,
        decoder_start_token_id=c.decoder_start_token_id or 0,
        n_positions=c.block_size,
    )


# -- BERT --------------------------------------------------------------------------------------------


def bert_names(c: ModelConfig) -> Names:
    pairs = (
        ("attn.proj", "attention.output.dense"),
        ("norm1", "attention.output.LayerNorm"),
        ("mlp.up", "intermediate.dense"),
        ("mlp.down", "output.dense"),
        ("norm2", "output.LayerNorm"),
    )
    block: dict[str, str | tuple[str, ...]] = {f"{o}.{p}": f"{t}.{p}" for o, t in pairs for p in ("weight", "bias")}
    for p in ("weight", "bias"):
        block[f"attn.qkv.{p}"] = tuple(f"attention.self.{x}.{p}" for x in ("query", "key", "value"))
    names = {
        **_single(
            {
                "embed.weight": "bert.embeddings.word_embeddings.weight",
                "encoder.pos_embed.weight": "bert.embeddings.position_embeddings.weight",
                "encoder.embed_norm.weight": "bert.embeddings.LayerNorm.weight",
                "encoder.embed_norm.bias": "bert.embeddings.LayerNorm.bias",
            }
        ),
        **_stack("encoder", "bert.encoder.layer", c.n_layer, block),
    }
    if c.type_vocab_size:
        names["type_embed.weight"] = ("bert.embeddings.token_type_embeddings.weight",)
    names = task_names(c, names)
    if c.mlm_head and c.task is None:
        names.update(
            _single(
                {
                    "mlm_head.dense.weight": "cls.predictions.transform.dense.weight",
                    "mlm_head.dense.bias": "cls.predictions.transform.dense.bias",
                    "mlm_head.norm.weight": "cls.predictions.transform.LayerNorm.weight",
                    "mlm_head.norm.bias": "cls.predictions.transform.LayerNorm.bias",
                    "mlm_head.bias": "cls.predictions.bias",
                }
            )
        )
    return names


# transformers' head classes and problem types <-> our task heads
TASK_CLASS_SUFFIXES = {"ForSequenceClassification": "classify", "ForTokenClassification": "tag"}
PROBLEM_TYPES = {"multi_label_classification": "multilabel", "regression": "regress"}
CLASS_PREFIXES = {"bert": "Bert", "gpt2": "GPT2", "llama": "Llama"}


def hf_task(hf: dict[str, Any]) -> tuple[str | None, list[str]]:
    """The task head a config.json describes and its labels (id2label in id order), or (None, [])."""
    task = next((t for a in hf.get("architectures") or [] for suffix, t in TASK_CLASS_SUFFIXES.items()
                 if a.endswith(suffix)), None)  # fmt: skip
    if task is None:
        return None, []
    if task == "classify":
        task = PROBLEM_TYPES.get(hf.get("problem_type") or "", "classify")
    id2label = hf.get("id2label") or {}
    count = hf.get("num_labels", len(id2label) or 2)
    labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(count)]
    return task, ([] if task == "regress" and len(labels) == 1 else labels)


def _task_fields(hf: dict[str, Any]) -> dict[str, Any]:
    task, labels = hf_task(hf)
    return {"task": task, "labels": labels} if task else {}


def task_names(c: ModelConfig, names: Names) -> Names:
    """A task head's tensors under transformers' names: BERT's pooler and classifier, a decoder's score."""
    if c.task is None:
        return names
    if c.family == "decoder":
        head = {"task_head.score.weight": "score.weight"}
        names.pop("lm_head.weight", None)  # a sequence classifier has no language-model head
    else:
        head = {"task_head.classifier.weight": "classifier.weight", "task_head.classifier.bias": "classifier.bias"}
        if c.task in SEQUENCE_TASKS:
            head.update({"task_head.pooler.weight": "bert.pooler.dense.weight",
                         "task_head.pooler.bias": "bert.pooler.dense.bias"})  # fmt: skip
    return {**names, **_single(head)}


def bert_config(hf: dict[str, Any]) -> ModelConfig:
    architectures = hf.get("architectures") or ["BertForMaskedLM"]
    return ModelConfig(
        family="encoder",
        vocab_size=hf["vocab_size"],
        block_size=hf.get("max_position_embeddings", 512),
        n_layer=hf["num_hidden_layers"],
        n_head=hf["num_attention_heads"],
        n_embd=hf["hidden_size"],
        intermediate_size=hf["intermediate_size"],
        norm="layernorm",
        mlp=_activation(hf.get("hidden_act", "gelu")),
        positions="learned",
        bias=True,
        tie_embeddings=True,
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        norm_position="post",
        embed_norm=True,
        type_vocab_size=hf.get("type_vocab_size", 2),
        mlm_head=any(a in ("BertForMaskedLM", "BertForPreTraining") for a in architectures),
        dropout=float(hf.get("hidden_dropout_prob", 0.0)),  # what fine-tuning trains with (BERT: 0.1)
        **_task_fields(hf),
    )


def bert_hf_config(c: ModelConfig) -> dict[str, Any]:
    return dict(
        vocab_size=c.vocab_size,
        hidden_size=c.n_embd,
        num_hidden_layers=c.n_layer,
        num_attention_heads=c.n_head,
        intermediate_size=c.intermediate_size,
        hidden_act="gelu" if c.mlp == "gelu-erf" else "gelu_new",
        max_position_embeddings=c.block_size,
        type_vocab_size=c.type_vocab_size,
        layer_norm_eps=c.norm_eps,
        hidden_dropout_prob=c.dropout,
        attention_probs_dropout_prob=c.dropout,
        **task_hf_config(c),
    )


def task_hf_config(c: ModelConfig) -> dict[str, Any]:
    """id2label, label2id, num_labels and problem_type for a task head; nothing without one."""
    if c.task is None:
        return {}
    labels = c.labels or ["score"]
    problem = {"multilabel": "multi_label_classification", "regress": "regression"}.get(
        c.task, "single_label_classification"
    )
    fields: dict[str, Any] = dict(id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    return fields | ({"problem_type": problem} if c.task != "tag" else {})


def hf_class(arch: Architecture, config: ModelConfig) -> str:
    """The transformers class an export of `config` loads as: the architecture's, or a task head's."""
    if config.task is None:
        return arch.hf_class
    return CLASS_PREFIXES[arch.name] + ("ForTokenClassification" if config.task == "tag" else
                                        "ForSequenceClassification")  # fmt: skip


def _activation(name: str) -> str:
    known = {"gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu-erf", "relu": "relu"}
    if name not in known:
        raise LlmlabError(f"activation {name!r} is not supported", f"supported: {', '.join(known)}")
    return known[name]


# -- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Architecture:
    name: str  # their model_type
    hf_class: str  # the transformers class an export loads as
    names: Callable[[ModelConfig], Names]
    to_config: Callable[[dict[str, Any]], ModelConfig]
    hf_config: Callable[[ModelConfig], dict[str, Any]]
    required: dict[str, Any]  # our options that must have these values to have a counterpart
    transposed: tuple[str, ...] = ()  # suffixes of their names stored as (in, out)


ARCHITECTURES = {
    "gpt2": Architecture(
        "gpt2",
        "GPT2LMHeadModel",
        gpt2_names,
        gpt2_config,
        gpt2_hf_config,
        dict(
            family="decoder",
            norm="layernorm",
            positions="learned",
            bias=True,
            tie_embeddings=True,
            norm_position="pre",
            embed_norm=False,
            head_size=None,
        ),
        transposed=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
    ),  # fmt: skip
    "llama": Architecture(
        "llama",
        "LlamaForCausalLM",
        llama_names,
        llama_config,
        llama_hf_config,
        dict(
            family="decoder",
            norm="rmsnorm",
            mlp="swiglu",
            positions="rope",
            bias=False,
            norm_position="pre",
            embed_norm=False,
        ),
    ),  # fmt: skip
    "t5": Architecture(
        "t5",
        "T5ForConditionalGeneration",
        t5_names,
        t5_config,
        t5_hf_config,
        dict(
            family="encoder-decoder",
            norm="rmsnorm",
            positions="relative",
            bias=False,
            norm_position="pre",
            embed_norm=False,
            attention_scale=1.0,
        ),
    ),  # fmt: skip
    "bert": Architecture(
        "bert",
        "BertForMaskedLM",
        bert_names,
        bert_config,
        bert_hf_config,
        dict(
            family="encoder",
            norm="layernorm",
            positions="learned",
            bias=True,
            norm_position="post",
            embed_norm=True,
            mlm_head=True,
            head_size=None,
        ),
    ),  # fmt: skip
}
MLPS = {
    "gpt2": ("gelu", "gelu-erf"),
    "llama": ("swiglu",),
    "t5": ("relu", "geglu", "swiglu"),
    "bert": ("gelu-erf", "gelu"),
}


def architecture_of(config: ModelConfig) -> Architecture:
    """The Hugging Face architecture this config is, or an error naming the options that prevent it."""
    candidates = [a for a in ARCHITECTURES.values() if a.required["family"] == config.family]
    best, best_blocking = None, None
    for arch in candidates:
        blocking = [
            f"{k}={getattr(config, k)!r}"
            for k, v in arch.required.items()
            if getattr(config, k) != v and not (k == "mlm_head" and config.task is not None)
        ]  # a task head replaces the MLM head
        if config.mlp not in MLPS[arch.name]:
            blocking.append(f"mlp={config.mlp!r}")
        if arch.name in ("gpt2", "bert") and config.n_kv_head != config.n_head:
            blocking.append(f"n_kv_head={config.n_kv_head}")
        if not blocking:
            return arch
        if best_blocking is None or len(blocking) < len(best_blocking):
            best, best_blocking = arch, blocking
    raise LlmlabError(
        f"model has no Hugging Face counterpart: as {best.name} it would need to change {', '.join(best_blocking)}",
        f"train with a preset of that style ({best.name}-like settings) to export",
    )


def to_hf_state(model: LanguageModel) -> dict[str, torch.Tensor]:
    """Our weights under their names and layouts."""
    arch = architecture_of(model.config)
    ours = model.state_dict()
    theirs: dict[str, torch.Tensor] = {}
    for our_name, their_names in arch.names(model.config).items():
        tensor = ours[our_name]
        parts = tensor.split(split_sizes(model.config, our_name)) if len(their_names) > 1 else [tensor]
        for their_name, part in zip(their_names, parts):
            theirs[their_name] = part.t().contiguous() if their_name.endswith(arch.transposed) else part.clone()
    return theirs


def from_hf_state(
    state: dict[str, torch.Tensor], config: ModelConfig, arch: Architecture | None = None
) -> LanguageModel:
    """Our model from their state dict; names the first missing or mis-shaped tensor."""
    arch = arch or architecture_of(config)
    model = build_model(config)
    expected = model.state_dict()
    ours, used = {}, set()
    for our_name, their_names in arch.names(config).items():
        missing = [n for n in their_names if n not in state]
        if missing:
            raise LlmlabError(
                f"{arch.name} weights lack {missing[0]} (for {our_name}, shape {tuple(expected[our_name].shape)})",
                "pass a complete checkpoint of this architecture",
            )
        parts = [state[n].t() if n.endswith(arch.transposed) else state[n] for n in their_names]
        tensor = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if tensor.shape != expected[our_name].shape:
            raise LlmlabError(
                f"{their_names[0]} has shape {tuple(parts[0].shape)} but config.json implies "
                f"{tuple(expected[our_name].shape)} for {our_name}",
                "the weights do not belong to this config.json",
            )
        ours[our_name] = tensor.to(expected[our_name].dtype)
        used.update(their_names)
    ignored = [n for n in state if n not in used and not _harmless(n)]
    if ignored:
        warnings.warn(
            f"{len(ignored)} tensors of the checkpoint are not used by llmlab, e.g. {ignored[0]}", stacklevel=2
        )
    model.load_state_dict(ours, strict=False)
    return model.eval()


def _harmless(name: str) -> bool:
    """Their tensors we knowingly drop: buffers, poolers, heads tied to the embedding."""
    return name.endswith(("attn.bias", "attn.masked_bias", "position_ids", "rotary_emb.inv_freq")) or name.startswith(
        ("bert.pooler.", "cls.seq_relationship.", "cls.predictions.decoder.", "encoder.embed_tokens.",
         "decoder.embed_tokens.", "lm_head.")
    )  # fmt: skip


def split_sizes(config: ModelConfig, our_name: str) -> list[int]:
    """Output rows of each of their tensors inside one of our fused ones."""
    q, kv = config.n_head * config.head_dim, config.n_kv_head * config.head_dim
    if ".attn.qkv." in our_name:
        return [q, kv, kv]
    if ".cross.kv." in our_name:
        return [kv, kv]
    if ".mlp.up." in our_name:
        return [config.intermediate_size, config.intermediate_size]
    raise ValueError(f"{our_name} is not a fused tensor")
