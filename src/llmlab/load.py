"""Load any model source: an llmlab checkpoint folder, a Hugging Face folder or an `org/name` hub id.

Above both the folder format (`checkpoint.folder`) and the Hugging Face importer (`hf.importer`), so
neither has to know the other: every command that takes a checkpoint takes any of the three.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from llmlab.checkpoint.adapter import (
    adapter_generation,
    is_adapter,
    read_adapter,
    read_adapter_tensors,
    require_base,
    weights_fingerprint,
)
from llmlab.checkpoint.folder import Checkpoint, load_folder, read_model_config, read_quantization, verify_checkpoint
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.hf.importer import is_hf_source, load_hf, read_hf_config, resolve_folder
from llmlab.hf.peft import is_peft_adapter as is_peft_source


def load_checkpoint(
    source: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    adapter: str | Path | None = None,
) -> Checkpoint:
    """Model (on `device`, eval mode), tokenizer and generation defaults from any source; a Hugging Face
    model (GPT-2, Llama, T5, BERT) is converted in memory (`llmlab import` converts one once).

    `adapter` (or an adapter folder given as `source`, which names its base) is put on the base after
    checking it was trained on these very weights; a LoRA adapter on a full-precision base is merged
    into it (exact, and no cost at inference), a QLoRA one runs on the NF4 base it was trained with."""
    if adapter is None and is_adapter(source) and not is_peft_source(source):
        adapter, source = source, read_adapter(source).base_source
    ckpt = load_hf(source) if is_hf_source(source) else load_folder(source)
    if adapter is not None:
        ckpt = _with_adapter(ckpt, str(source), adapter)
    ckpt.model.to(device=device, dtype=dtype).eval()
    return ckpt


def merged_with_adapter(adapter: str | Path, base: str | Path | None = None) -> Checkpoint:
    """The full-precision base with the adapter added into its weights: a plain checkpoint to save or
    export. A QLoRA adapter is added to the original base, not to its NF4 rounding."""
    info = read_adapter(adapter)
    if info.method == "prompt-tuning":
        raise LlmlabError(f"{adapter} is a soft prompt: it is read before the input, not added to weights",
                          "use it as it is: llmlab generate BASE --adapter DIR")  # fmt: skip
    source = base if base is not None else info.base_source
    ckpt = load_hf(source) if is_hf_source(source) else load_folder(source)
    return _with_adapter(ckpt, str(source), adapter, quantize_base=False)


def _with_adapter(
    ckpt: Checkpoint, source: str, adapter: str | Path, quantize_base: bool = True, merge: bool = True
) -> Checkpoint:
    """The base with the adapter on it: an llmlab adapter after its base fingerprint is checked, or a
    PEFT LoRA folder (which records no fingerprint: the base is taken on trust)."""
    from llmlab.hf.peft import import_peft, is_peft_adapter
    from llmlab.model.adapters import load_adapter_state
    from llmlab.model.lora import LoraSpec, add_lora, merge_lora
    from llmlab.model.soft_prompt import add_soft_prompt

    if (ckpt.path / "config.json").is_file() and read_quantization(ckpt.path):
        raise LlmlabError(f"{source} is quantized", "put the adapter on the full-precision base it was trained on")
    generation, qlora = ckpt.generation, False
    if is_peft_adapter(adapter):
        spec, tensors = import_peft(adapter, ckpt.model.config)
    else:
        info = read_adapter(adapter)
        require_base(info, weights_fingerprint(ckpt.model), source)
        tensors, generation = read_adapter_tensors(adapter), adapter_generation(adapter)
        if info.method == "prompt-tuning":
            add_soft_prompt(ckpt.model, int(info.settings["tokens"]))
            load_adapter_state(ckpt.model, tensors)
            return Checkpoint(ckpt.model, ckpt.tokenizer, generation, ckpt.path)
        spec, qlora = LoraSpec.from_dict(info.settings), info.method == "qlora" and quantize_base
        if info.settings.get("task"):  # a task head trained with the adapter: the head goes on first
            from llmlab.model.task_model import with_task_head

            model = with_task_head(ckpt.model, info.settings["task"], info.settings.get("labels", []))
            ckpt = Checkpoint(model, ckpt.tokenizer, ckpt.generation, ckpt.path)
    add_lora(ckpt.model, spec)
    if qlora:
        quantize_nf4_base(ckpt.model)
    load_adapter_state(ckpt.model, tensors)
    if merge and not qlora:
        merge_lora(ckpt.model)
    return Checkpoint(ckpt.model, ckpt.tokenizer, generation, ckpt.path)


def load_with_lora(adapter: str | Path) -> tuple[Checkpoint, dict]:
    """An llmlab adapter on its full-precision base, not merged (to export the adapter itself), and its
    adapter_config.json's LoRA settings."""
    info = read_adapter(adapter)
    ckpt = load_hf(info.base_source) if is_hf_source(info.base_source) else load_folder(info.base_source)
    if info.method == "prompt-tuning":
        raise LlmlabError(f"{adapter} is a soft prompt, not a LoRA adapter", "only LoRA adapters export to PEFT")
    return _with_adapter(ckpt, info.base_source, adapter, quantize_base=False, merge=False), info.settings


def quantize_nf4_base(model: torch.nn.Module) -> None:
    """QLoRA's base: the blocks' linear layers (inside the adapters too) in NF4, adapters kept in fp32."""
    from llmlab.model.lora import lora_layers
    from llmlab.model.quantize import QuantizationSpec, quantize_model

    with warnings.catch_warnings():  # smaller blocks for narrow layers: chosen again, the same, at every load
        warnings.simplefilter("ignore")
        quantize_model(model, QuantizationSpec("nf4"))
    for layer in lora_layers(model).values():
        layer.lora_A.data, layer.lora_B.data = layer.lora_A.data.float(), layer.lora_B.data.float()


def load_config(source: str | Path) -> ModelConfig:
    """The architecture of any source, from its config.json alone (no weights are read)."""
    if is_adapter(source):
        return read_adapter(source).base_config
    if is_hf_source(source):
        return read_hf_config(resolve_folder(source))[1]
    return read_model_config(verify_checkpoint(source))
