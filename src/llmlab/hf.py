"""Hugging Face interop by explicit weight maps: `{our_name: their_name(s)}` per family, in one place.

A map entry is one of their names, or a tuple of names whose tensors are concatenated along the
output dimension into one of ours (our attention keeps q, k, v in one `qkv` matrix and our SwiGLU
keeps gate and up in one `up` matrix). GPT-2's Conv1D layers store weights as (in, out), so they
are transposed on the way. `{i}` stands for the block index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model import DecoderLM

Names = str | tuple[str, ...]


@dataclass(frozen=True)
class Family:
    name: str
    global_map: dict[str, Names]
    layer_map: dict[str, Names]
    transposed: tuple[str, ...] = ()  # suffixes of their names stored as (in, out)


GPT2 = Family(
    name="gpt2",
    global_map={
        "embed.weight": "transformer.wte.weight",
        "decoder.pos_embed.weight": "transformer.wpe.weight",
        "decoder.norm.weight": "transformer.ln_f.weight",
        "decoder.norm.bias": "transformer.ln_f.bias",
    },
    layer_map={
        "decoder.blocks.{i}.norm1.weight": "transformer.h.{i}.ln_1.weight",
        "decoder.blocks.{i}.norm1.bias": "transformer.h.{i}.ln_1.bias",
        "decoder.blocks.{i}.attn.qkv.weight": "transformer.h.{i}.attn.c_attn.weight",
        "decoder.blocks.{i}.attn.qkv.bias": "transformer.h.{i}.attn.c_attn.bias",
        "decoder.blocks.{i}.attn.proj.weight": "transformer.h.{i}.attn.c_proj.weight",
        "decoder.blocks.{i}.attn.proj.bias": "transformer.h.{i}.attn.c_proj.bias",
        "decoder.blocks.{i}.norm2.weight": "transformer.h.{i}.ln_2.weight",
        "decoder.blocks.{i}.norm2.bias": "transformer.h.{i}.ln_2.bias",
        "decoder.blocks.{i}.mlp.up.weight": "transformer.h.{i}.mlp.c_fc.weight",
        "decoder.blocks.{i}.mlp.up.bias": "transformer.h.{i}.mlp.c_fc.bias",
        "decoder.blocks.{i}.mlp.down.weight": "transformer.h.{i}.mlp.c_proj.weight",
        "decoder.blocks.{i}.mlp.down.bias": "transformer.h.{i}.mlp.c_proj.bias",
    },
    transposed=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
)

LLAMA = Family(
    name="llama",
    global_map={
        "embed.weight": "model.embed_tokens.weight",
        "decoder.norm.weight": "model.norm.weight",
        "lm_head.weight": "lm_head.weight",  # dropped when the embeddings are tied
    },
    layer_map={
        "decoder.blocks.{i}.norm1.weight": "model.layers.{i}.input_layernorm.weight",
        "decoder.blocks.{i}.attn.qkv.weight": (
            "model.layers.{i}.self_attn.q_proj.weight",
            "model.layers.{i}.self_attn.k_proj.weight",
            "model.layers.{i}.self_attn.v_proj.weight",
        ),
        "decoder.blocks.{i}.attn.proj.weight": "model.layers.{i}.self_attn.o_proj.weight",
        "decoder.blocks.{i}.norm2.weight": "model.layers.{i}.post_attention_layernorm.weight",
        "decoder.blocks.{i}.mlp.up.weight": (
            "model.layers.{i}.mlp.gate_proj.weight",
            "model.layers.{i}.mlp.up_proj.weight",
        ),
        "decoder.blocks.{i}.mlp.down.weight": "model.layers.{i}.mlp.down_proj.weight",
    },
)


def name_map(family: Family, config: ModelConfig) -> dict[str, tuple[str, ...]]:
    """Every one of our tensor names with the tuple of their names it is made of."""

    def as_tuple(theirs: Names, i: int | None = None) -> tuple[str, ...]:
        names = (theirs,) if isinstance(theirs, str) else theirs
        return tuple(n.format(i=i) for n in names) if i is not None else names

    names = {ours: as_tuple(theirs) for ours, theirs in family.global_map.items()}
    for i in range(config.n_layer):
        names.update({ours.format(i=i): as_tuple(theirs, i) for ours, theirs in family.layer_map.items()})
    if config.tie_embeddings:
        names.pop("lm_head.weight", None)
    return names


def family_of(config: ModelConfig) -> Family:
    """The Hugging Face architecture this config is, or an error naming the options that prevent it."""
    if config.family != "decoder":
        raise LlmlabError(
            f"Hugging Face export of {config.family} models is not supported yet",
            "export a decoder-only (gpt2-* or llama-* style) checkpoint",
        )
    gpt2 = dict(norm="layernorm", mlp="gelu", positions="learned", bias=True, tie_embeddings=True)
    llama = dict(norm="rmsnorm", mlp="swiglu", positions="rope", bias=False)
    for family, wanted in ((GPT2, gpt2), (LLAMA, llama)):
        blocking = [f"{k}={getattr(config, k)!r}" for k, v in wanted.items() if getattr(config, k) != v]
        if family is GPT2:
            if config.n_kv_head != config.n_head:
                blocking.append(f"n_kv_head={config.n_kv_head}")
            if config.intermediate_size != 4 * config.n_embd:
                blocking.append(f"intermediate_size={config.intermediate_size}")
        if not blocking:
            return family
        if (family is GPT2 and config.positions == "learned") or (family is LLAMA and config.positions == "rope"):
            raise LlmlabError(
                f"model has no {family.name} counterpart: {', '.join(blocking)}",
                f"use a {family.name}-* preset's settings for these options",
            )
    raise LlmlabError(f"positions={config.positions!r} has no Hugging Face counterpart", "use learned or rope")


def to_hf_state(model: DecoderLM) -> dict[str, torch.Tensor]:
    """Our weights under their names and layouts."""
    family = family_of(model.config)
    ours = model.state_dict()
    theirs: dict[str, torch.Tensor] = {}
    for our_name, their_names in name_map(family, model.config).items():
        tensor = ours[our_name]
        parts = tensor.split([_their_rows(model.config, n) for n in their_names]) if len(their_names) > 1 else [tensor]
        for their_name, part in zip(their_names, parts):
            theirs[their_name] = part.t().contiguous() if their_name.endswith(family.transposed) else part.clone()
    return theirs


def from_hf_state(state: dict[str, torch.Tensor], config: ModelConfig) -> DecoderLM:
    """Our model from their state dict (as `model.state_dict()` or their safetensors file holds it)."""
    family = family_of(config)
    model = DecoderLM(config)
    ours = {}
    for our_name, their_names in name_map(family, config).items():
        missing = [n for n in their_names if n not in state]
        if missing:
            raise LlmlabError(f"{family.name} weights lack {missing[0]}", "pass a complete checkpoint")
        parts = [state[n].t() if n.endswith(family.transposed) else state[n] for n in their_names]
        ours[our_name] = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
    model.load_state_dict(ours, strict=False)
    return model.eval()


def _their_rows(config: ModelConfig, their_name: str) -> int:
    """Output rows of one of their tensors inside one of our fused ones."""
    hd = config.head_dim
    for suffix, rows in (
        ("q_proj.weight", config.n_head * hd),
        ("k_proj.weight", config.n_kv_head * hd),
        ("v_proj.weight", config.n_kv_head * hd),
        ("gate_proj.weight", config.intermediate_size),
        ("up_proj.weight", config.intermediate_size),
    ):
        if their_name.endswith(suffix):
            return rows
    raise ValueError(f"{their_name} is not part of a fused tensor")


def to_transformers(model: DecoderLM):
    """A `transformers` model (GPT2LMHeadModel or LlamaForCausalLM) holding exactly this model's weights."""
    c = model.config
    family = family_of(c)
    if family is GPT2:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_config = GPT2Config(
            vocab_size=c.vocab_size,
            n_positions=c.block_size,
            n_embd=c.n_embd,
            n_layer=c.n_layer,
            n_head=c.n_head,
            layer_norm_epsilon=c.norm_eps,
            activation_function="gelu_new",
            resid_pdrop=c.dropout,
            embd_pdrop=c.dropout,
            attn_pdrop=c.dropout,
            bos_token_id=0,
            eos_token_id=0,
            tie_word_embeddings=True,
        )
        hf = GPT2LMHeadModel(hf_config)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        hf_config = LlamaConfig(
            vocab_size=c.vocab_size,
            hidden_size=c.n_embd,
            intermediate_size=c.intermediate_size,
            num_hidden_layers=c.n_layer,
            num_attention_heads=c.n_head,
            num_key_value_heads=c.n_kv_head,
            head_dim=c.head_dim,
            max_position_embeddings=c.block_size,
            rms_norm_eps=c.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
            attention_dropout=c.dropout,
            tie_word_embeddings=c.tie_embeddings,
            bos_token_id=0,
            eos_token_id=0,
            pad_token_id=0,
        )
        hf = LlamaForCausalLM(hf_config)
    missing, unexpected = hf.load_state_dict(to_hf_state(model), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"{family.name} weight map is incomplete: missing {missing}, unexpected {unexpected}")
    if c.tie_embeddings:
        hf.tie_weights()
    return hf.eval()


def export_hf(checkpoint, out) -> None:
    """Write an llmlab checkpoint as a Hugging Face folder (config, safetensors weights, tokenizer)
    that `AutoModelForCausalLM` and `AutoTokenizer` load; written to a temporary folder, then renamed."""
    import os
    import shutil
    import tempfile
    from pathlib import Path

    from llmlab.checkpoint import load_checkpoint, read_quantization
    from llmlab.tokenizer import EOS

    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise LlmlabError("exporting to Hugging Face needs transformers", "pip install transformers") from None
    out = Path(out)
    if out.exists():
        raise LlmlabError(f"{out} already exists", "choose another output folder or remove it")
    ckpt = load_checkpoint(checkpoint)
    if read_quantization(ckpt.path):
        raise LlmlabError(f"{checkpoint} is quantized", "export the full-precision checkpoint")
    hf = to_transformers(ckpt.model)
    hf.generation_config.eos_token_id = ckpt.tokenizer.eos_id
    hf.generation_config.pad_token_id = ckpt.tokenizer.eos_id
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        hf.save_pretrained(tmp)
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=ckpt.tokenizer.inner, eos_token=EOS, pad_token=EOS)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
