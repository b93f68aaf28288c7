"""GGUF, llama.cpp's single-file format, written natively with the `gguf` package: a decoder of Llama or
GPT-2 style with its byte-level BPE tokenizer, in f32, f16, q8_0 or q4_0.

The weights go through the Hugging Face map (`hf/maps.py`: our fused q|k|v and gate|up split into
their parts, under transformers' names), then through gguf's own name table (`blk.N.attn_q.weight`, ...),
with two changes of layout llama.cpp needs:

- Llama's q and k rows, head by head, from the rotate-half layout (dims i and i + d/2 rotate together,
  as in transformers and llmlab) to the interleaved one llama.cpp's `LLAMA` rotary uses (dims 2i and
  2i + 1): row 2i of a head is our row i, row 2i + 1 our row i + d/2. q·k is the same after it;
- GPT-2's Conv1D matrices, stored (in, out) by transformers, back to (out, in); GPT-2 keeps q|k|v fused.

The tokenizer goes in as llama.cpp's `gpt2` BPE model with the `gpt-2` pre-tokenizer (llmlab's byte-level
BPE splits text with GPT-2's regex): tokens, merges, types (special tokens are control tokens; rows of the
embedding beyond the tokenizer are unused `[PADn]` tokens) and the special tokens' ids. q8_0 quantizes every
matrix whose rows are a multiple of 32 (one fp16 scale per 32 weights); other matrices go f16, vectors
(norms, biases) stay f32 in every format, as llama.cpp's own converter does. q4_0 (4-bit codes, one fp16
scale per 32 weights) does the same except for the output projection (the embedding when tied), which goes
q8_0: the logits are the most sensitive to rounding, and `llama-quantize` too keeps that matrix at 6+ bits
(its q6_K, which the `gguf` package cannot write).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from llmlab.errors import LlmlabError
from llmlab.export.common import extras_of, write_atomically
from llmlab.hf.maps import Architecture, architecture_of, to_hf_state
from llmlab.model import LanguageModel
from llmlab.model.layers import rope_frequencies
from llmlab.tokenizer import TextTokenizer

QUANTS = ("f32", "f16", "q8_0", "q4_0")
FIX = "GGUF holds decoders of Llama or GPT-2 style with a byte-level BPE tokenizer; --to onnx or --to hf take others"


@dataclass(frozen=True)
class GgufExport:
    path: Path
    architecture: str  # llama.cpp's: llama or gpt2
    quant: str
    tensors: int
    bytes: int


def _gguf():
    try:
        import gguf
    except ImportError:
        raise LlmlabError("exporting to GGUF needs the gguf package", "pip install 'llmlab[export]'") from None
    return gguf


def gguf_architecture(model: LanguageModel, tokenizer: TextTokenizer) -> Architecture:
    """The Hugging Face architecture (llama or gpt2) the model is written as, or one error naming everything
    that keeps it out of GGUF."""
    c = model.config
    blocking = extras_of(model)
    arch = None
    if c.family == "encoder":
        blocking.insert(0, "an encoder (llama.cpp runs decoders)")
    elif c.family == "encoder-decoder":
        blocking.insert(0, "an encoder-decoder with T5 relative positions (llama.cpp runs decoders)")
    else:
        try:
            arch = architecture_of(c)
        except LlmlabError as e:
            blocking.insert(0, e.what.replace("model has no Hugging Face counterpart: ", ""))
    if arch is not None and arch.name == "gpt2" and c.mlp != "gelu":
        blocking.append(f"mlp={c.mlp!r} (llama.cpp's GPT-2 uses tanh GELU)")
    if c.attention_scale is not None and c.attention_scale != c.head_dim**-0.5:
        blocking.append(f"attention_scale={c.attention_scale}")
    blocking += _tokenizer_blockers(tokenizer, c.vocab_size)
    if blocking:
        raise LlmlabError(f"the model cannot be written as GGUF: {'; '.join(blocking)}", FIX)
    return arch


def _tokenizer_blockers(tokenizer: TextTokenizer, vocab_size: int) -> list[str]:
    spec = json.loads(tokenizer.to_json())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel":
        kind = model.get("type") if model.get("type") != "BPE" else f"BPE split by {pre.get('type')}"
        return [f"a {kind} tokenizer, not byte-level BPE"]
    blocking = []
    if not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        blocking.append("a byte-level pre-tokenizer other than GPT-2's (no regex, or a prefix space)")
    if spec.get("normalizer"):
        blocking.append(f"a tokenizer normalizer ({spec['normalizer'].get('type')})")
    if tokenizer.vocab_size > vocab_size:
        blocking.append(f"a tokenizer of {tokenizer.vocab_size} tokens for an embedding of {vocab_size}")
    if tokenizer.prefix_ids and tokenizer.prefix_ids != [tokenizer.bos_id]:
        blocking.append(f"a tokenizer that puts {tokenizer.prefix_ids} before a text")
    return blocking


# -- weights -----------------------------------------------------------------------------------------


def interleave_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """q or k rows per head from rotate-half order (i with i + d/2) to interleaved order (2i with 2i + 1)."""
    rows, *rest = weight.shape
    half = rows // heads // 2
    return weight.reshape(heads, 2, half, *rest).transpose(1, 2).reshape(weight.shape)


def gguf_tensors(model: LanguageModel) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's names and in its layouts (fp32), in the order they are written."""
    gguf = _gguf()
    c = model.config
    arch = architecture_of(c)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch.name == "llama" else gguf.MODEL_ARCH.GPT2,
                                     c.n_layer)  # fmt: skip
    tensors = {}
    for hf_name, tensor in to_hf_state(model).items():
        tensor = tensor.detach().float()
        if hf_name.endswith(arch.transposed):
            tensor = tensor.t()  # GPT-2's Conv1D (in, out) back to (out, in)
        elif hf_name.endswith("self_attn.q_proj.weight"):
            tensor = interleave_rotary(tensor, c.n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            tensor = interleave_rotary(tensor, c.n_kv_head)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise RuntimeError(f"gguf has no name for {hf_name}")
        tensors[name] = tensor.contiguous()
    if (c.rope_scaling or {}).get("rope_type") == "llama3":  # per-frequency divisors, as llama.cpp reads them
        plain = rope_frequencies(c.head_dim, c.rope_theta)
        tensors["rope_freqs.weight"] = plain / rope_frequencies(c.head_dim, c.rope_theta, c.rope_scaling)
    return tensors


def encode_tensor(tensor: torch.Tensor, quant: str) -> tuple[np.ndarray, object]:
    """(data, GGML type): vectors in f32; matrices in f16, q8_0 or q4_0 when asked (blocks where rows divide
    by 32, f16 otherwise)."""
    gguf = _gguf()
    types = gguf.GGMLQuantizationType
    data = tensor.numpy().astype(np.float32)
    if data.ndim < 2 or quant == "f32":
        return data, types.F32
    kind = {"q8_0": types.Q8_0, "q4_0": types.Q4_0}.get(quant)
    if kind is not None and data.shape[-1] % gguf.GGML_QUANT_SIZES[kind][0] == 0:
        return gguf.quants.quantize(data, kind), kind
    return data.astype(np.float16), types.F16


def output_matrix(tensors: dict[str, torch.Tensor]) -> str:
    """The matrix that makes the logits: `output.weight`, or the token embedding when they are tied."""
    return "output.weight" if "output.weight" in tensors else "token_embd.weight"


def encode_tensors(tensors: dict[str, torch.Tensor], quant: str) -> dict[str, tuple[np.ndarray, object]]:
    """Every tensor in `quant`, but the output matrix of a q4_0 file in q8_0 (see the module's docstring)."""
    keep = output_matrix(tensors) if quant == "q4_0" else None
    return {n: encode_tensor(t, "q8_0" if n == keep else quant) for n, t in tensors.items()}


# -- metadata ----------------------------------------------------------------------------------------


def _architecture_metadata(writer, c, arch: Architecture) -> None:
    writer.add_context_length(c.block_size)
    writer.add_embedding_length(c.n_embd)
    writer.add_block_count(c.n_layer)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.n_head)
    writer.add_vocab_size(c.vocab_size)
    if arch.name == "gpt2":
        writer.add_layer_norm_eps(c.norm_eps)
        return
    writer.add_head_count_kv(c.n_kv_head)
    writer.add_layer_norm_rms_eps(c.norm_eps)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_rope_dimension_count(c.head_dim)
    if c.head_dim * c.n_head != c.n_embd:
        writer.add_key_length(c.head_dim)
        writer.add_value_length(c.head_dim)
    scaling = c.rope_scaling or {}
    if scaling.get("rope_type") == "linear":
        writer.add_rope_scaling_type(_gguf().RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])


def tokenizer_metadata(tokenizer: TextTokenizer, vocab_size: int) -> dict:
    """llama.cpp's view of the tokenizer: tokens by id (padded to the embedding's rows), their types,
    merges and the special tokens' ids."""
    types = _gguf().TokenType
    by_id = {i: t for t, i in tokenizer.inner.get_vocab(with_added_tokens=True).items()}
    added = tokenizer.inner.get_added_tokens_decoder()
    tokens, kinds = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            kinds.append(types.UNUSED)
        else:
            tokens.append(by_id[i])
            kinds.append(types.NORMAL if i not in added else types.CONTROL if added[i].special else types.USER_DEFINED)
    merges = json.loads(tokenizer.to_json())["model"].get("merges") or []
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    eos = tokenizer.separator_id
    ids = {"bos": tokenizer.bos_id if tokenizer.bos_id is not None else eos, "eos": eos,
           "unk": tokenizer.unk_id, "pad": tokenizer.pad_id}  # fmt: skip
    return {"tokens": tokens, "types": kinds, "merges": merges, "ids": ids, "add_bos": bool(tokenizer.prefix_ids)}


def _tokenizer_metadata(writer, tokenizer: TextTokenizer, vocab_size: int) -> None:
    meta = tokenizer_metadata(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    for role, i in meta["ids"].items():
        if i is not None:
            getattr(writer, f"add_{role}_token_id")(i)
    writer.add_add_bos_token(meta["add_bos"])
    writer.add_add_eos_token(False)


FILE_TYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "q8_0": "MOSTLY_Q8_0", "q4_0": "MOSTLY_Q4_0"}


def export_gguf(
    model: LanguageModel, tokenizer: TextTokenizer, out: str | Path, quant: str = "f32", name: str = "llmlab"
) -> GgufExport:
    """Write the model and tokenizer as one GGUF file llama.cpp loads (to a temporary file, then renamed).
    Refuses, with one error naming every reason, a model GGUF cannot hold."""
    if quant not in QUANTS:
        raise LlmlabError(f"unknown GGUF type {quant!r}", f"choose one of: {', '.join(QUANTS)}")
    gguf = _gguf()
    arch = gguf_architecture(model, tokenizer)
    tensors = gguf_tensors(model)
    encoded = encode_tensors(tensors, quant)

    def write(path: Path) -> None:
        writer = gguf.GGUFWriter(str(path), arch.name)
        writer.add_name(name)
        writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[quant]))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        _architecture_metadata(writer, model.config, arch)
        _tokenizer_metadata(writer, tokenizer, model.config.vocab_size)
        for tensor_name, (data, kind) in encoded.items():
            writer.add_tensor(tensor_name, data, raw_dtype=kind)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    path = write_atomically(out, write)
    return GgufExport(path, arch.name, quant, len(encoded), path.stat().st_size)
