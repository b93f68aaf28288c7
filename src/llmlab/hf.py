"""Hugging Face interop by explicit weight maps: `{their_name: our_name}` per family.

GPT-2 is the first family: its Conv1D layers store weights as (in, out), so they are transposed.
"""

from __future__ import annotations

import torch

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.model import DecoderLM

# Per-layer names; {i} is the block index. Conv1D weights (transposed) are listed in GPT2_TRANSPOSED.
GPT2_LAYER_MAP = {
    "transformer.h.{i}.ln_1.weight": "blocks.{i}.norm1.weight",
    "transformer.h.{i}.ln_1.bias": "blocks.{i}.norm1.bias",
    "transformer.h.{i}.attn.c_attn.weight": "blocks.{i}.attn.qkv.weight",
    "transformer.h.{i}.attn.c_attn.bias": "blocks.{i}.attn.qkv.bias",
    "transformer.h.{i}.attn.c_proj.weight": "blocks.{i}.attn.proj.weight",
    "transformer.h.{i}.attn.c_proj.bias": "blocks.{i}.attn.proj.bias",
    "transformer.h.{i}.ln_2.weight": "blocks.{i}.norm2.weight",
    "transformer.h.{i}.ln_2.bias": "blocks.{i}.norm2.bias",
    "transformer.h.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.up.weight",
    "transformer.h.{i}.mlp.c_fc.bias": "blocks.{i}.mlp.up.bias",
    "transformer.h.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.down.weight",
    "transformer.h.{i}.mlp.c_proj.bias": "blocks.{i}.mlp.down.bias",
}
GPT2_GLOBAL_MAP = {
    "transformer.wte.weight": "embed.weight",
    "transformer.wpe.weight": "pos_embed.weight",
    "transformer.ln_f.weight": "norm.weight",
    "transformer.ln_f.bias": "norm.bias",
}
GPT2_TRANSPOSED = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_name_map(n_layer: int) -> dict[str, str]:
    names = dict(GPT2_GLOBAL_MAP)
    for i in range(n_layer):
        names.update({k.format(i=i): v.format(i=i) for k, v in GPT2_LAYER_MAP.items()})
    return names


def check_gpt2_compatible(config: ModelConfig) -> None:
    wanted = dict(norm="layernorm", mlp="gelu", positions="learned", bias=True, tie_embeddings=True)
    blocking = [f"{k}={getattr(config, k)!r} (GPT-2 needs {v!r})" for k, v in wanted.items() if getattr(config, k) != v]
    if config.n_kv_head != config.n_head:
        blocking.append(f"n_kv_head={config.n_kv_head} (GPT-2 has no grouped-query attention)")
    if config.intermediate_size != 4 * config.n_embd:
        blocking.append(f"intermediate_size={config.intermediate_size} (GPT-2 needs 4*n_embd)")
    if blocking:
        raise LlmlabError(f"model has no GPT-2 counterpart: {'; '.join(blocking)}", "use a gpt2-* preset")


def to_gpt2(model: DecoderLM):
    """An HF `GPT2LMHeadModel` holding exactly this model's weights."""
    from transformers import GPT2Config, GPT2LMHeadModel

    c = model.config
    check_gpt2_compatible(c)
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
    ours = model.state_dict()
    theirs = {}
    for their_name, our_name in gpt2_name_map(c.n_layer).items():
        tensor = ours[our_name]
        theirs[their_name] = tensor.t().contiguous() if their_name.endswith(GPT2_TRANSPOSED) else tensor
    missing, unexpected = hf.load_state_dict(theirs, strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise RuntimeError(f"GPT-2 weight map is incomplete: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def from_gpt2_state(state: dict[str, torch.Tensor], config: ModelConfig) -> DecoderLM:
    """Our model from a GPT-2 state dict (as `GPT2LMHeadModel.state_dict()` or its safetensors file)."""
    check_gpt2_compatible(config)
    model = DecoderLM(config)
    ours = {}
    for their_name, our_name in gpt2_name_map(config.n_layer).items():
        if their_name not in state:
            raise LlmlabError(f"GPT-2 weights lack {their_name}", "pass a complete GPT-2 checkpoint")
        tensor = state[their_name]
        ours[our_name] = tensor.t().contiguous() if their_name.endswith(GPT2_TRANSPOSED) else tensor
    model.load_state_dict(ours, strict=False)
    return model.eval()
