"""Export: an llmlab model as the matching `transformers` model, and a checkpoint as a Hugging Face folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from llmlab.checkpoint.folder import Checkpoint, read_quantization, require_new_folder
from llmlab.errors import LlmlabError
from llmlab.hf.maps import architecture_of, hf_class, to_hf_state
from llmlab.model import LanguageModel


def to_transformers(model: LanguageModel):
    """A `transformers` model of the matching class holding exactly this model's weights."""
    import transformers

    arch = architecture_of(model.config)
    hf_config = transformers.AutoConfig.for_model(arch.name, **arch.hf_config(model.config))
    for token in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(hf_config, token, None) is not None and getattr(hf_config, token) >= model.config.vocab_size:
            setattr(hf_config, token, 0)  # GPT-2's config keeps 50256 even for a small vocabulary
    hf = getattr(transformers, hf_class(arch, model.config))(hf_config)
    state = to_hf_state(model)
    missing, unexpected = hf.load_state_dict(state, strict=False)
    tied = {
        "lm_head.weight",
        "encoder.embed_tokens.weight",
        "decoder.embed_tokens.weight",
        "cls.predictions.decoder.weight",
        "cls.predictions.decoder.bias",
    }
    if unexpected or [m for m in missing if m not in tied]:
        raise RuntimeError(f"{arch.name} weight map is incomplete: missing {missing}, unexpected {unexpected}")
    hf.tie_weights()
    return hf.eval()


def export_hf(ckpt: Checkpoint, out: str | Path) -> str:
    """Write a loaded checkpoint as a Hugging Face folder (config, safetensors weights, tokenizer) that
    transformers' Auto classes load; written to a temporary folder, then renamed. Returns the class."""
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:
        raise LlmlabError("exporting to Hugging Face needs transformers", "pip install transformers") from None
    out = require_new_folder(out)
    if read_quantization(ckpt.path):
        raise LlmlabError(f"{ckpt.path} is quantized", "export the full-precision checkpoint")
    hf = to_transformers(ckpt.model)
    tok = ckpt.tokenizer
    pad = tok.pad_id if tok.pad_id is not None else tok.eos_id
    generation = getattr(hf, "generation_config", None)  # encoders do not generate
    if generation is not None and tok.eos_id is not None:
        generation.eos_token_id = tok.eos_id
    bos = tok.bos_id if tok.bos_id is not None else tok.eos_id  # GPT-2 and Llama tokenizers without <s> reuse EOS
    for attr, value in (("eos_token_id", tok.eos_id), ("bos_token_id", bos)):
        if value is not None and getattr(hf.config, attr, None) is not None:
            setattr(hf.config, attr, value)  # the tokenizer's ids, not the architecture's defaults (or 0)
    if pad is not None:
        hf.config.pad_token_id = pad
        if generation is not None:
            generation.pad_token_id = pad
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        hf.save_pretrained(tmp)
        specials = {
            f"{role}_token": tok.inner.id_to_token(i)
            for role, i in (("eos", tok.eos_id), ("pad", pad), ("mask", tok.mask_id), ("cls", tok.cls_id),
                            ("sep", tok.sep_id), ("bos", tok.bos_id), ("unk", tok.unk_id))
            if i is not None
        }  # fmt: skip
        PreTrainedTokenizerFast(tokenizer_object=tok.inner, **specials).save_pretrained(tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return type(hf).__name__
