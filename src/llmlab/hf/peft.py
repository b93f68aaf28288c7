"""LoRA adapters in PEFT's format (`adapter_config.json` + `adapter_model.safetensors`), both ways.

PEFT puts one adapter on each of their linear layers; ours has one per layer of ours, and some of ours
are several of theirs fused (q|k|v, gate|up, cross-attention's k|v). Out: each part gets the same A
and its rows of B (s B A restricted to those rows is exactly that part's update). In: the parts' A
matrices are stacked and their B matrices placed block-diagonally, a rank-(parts x r) adapter of ours
with the same update; a part PEFT left out contributes zeros.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from llmlab.checkpoint.folder import require_new_folder
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.hf.maps import architecture_of, split_sizes
from llmlab.model.lora import LoraSpec, lora_layers

PREFIX = "base_model.model."
TASK_TYPES = {"decoder": "CAUSAL_LM", "encoder-decoder": "SEQ_2_SEQ_LM", "encoder": "FEATURE_EXTRACTION"}


def is_peft_adapter(path: str | Path) -> bool:
    file = Path(path) / "adapter_config.json"
    return file.is_file() and "peft_type" in json.loads(file.read_text())


def _parts(config: ModelConfig, layer: str) -> tuple[tuple[str, ...], list[int]]:
    """Their module names for one layer of ours, and each one's rows of our output."""
    theirs = architecture_of(config).names(config).get(f"{layer}.weight")
    if theirs is None:
        raise LlmlabError(f"layer {layer} has no Hugging Face counterpart", "train the adapter on other layers")
    sizes = split_sizes(config, f"{layer}.weight") if len(theirs) > 1 else [-1]
    return tuple(name.removesuffix(".weight") for name in theirs), sizes


def export_peft(model: torch.nn.Module, spec: LoraSpec, out: str | Path, base_name: str) -> Path:
    """Write the model's adapters as a PEFT LoRA folder for the exported Hugging Face base."""
    out = require_new_folder(out)
    config: ModelConfig = model.config
    tensors, modules = {}, []
    if any(lora.r != spec.r for lora in lora_layers(model).values()):
        raise LlmlabError("the adapter's ranks differ from its config (it was imported from PEFT)",
                          "export an adapter trained by llmlab finetune")  # fmt: skip
    for layer, lora in lora_layers(model).items():
        names, sizes = _parts(config, layer)
        rows = lora.lora_B.split(sizes) if len(names) > 1 else [lora.lora_B]
        for name, b in zip(names, rows):
            tensors[f"{PREFIX}{name}.lora_A.weight"] = lora.lora_A.detach().float().clone()
            tensors[f"{PREFIX}{name}.lora_B.weight"] = b.detach().float().contiguous()
            modules.append(name)
    arch = architecture_of(config)
    peft_config = {
        "peft_type": "LORA", "task_type": TASK_TYPES[config.family], "base_model_name_or_path": base_name,
        "r": spec.r, "lora_alpha": spec.alpha, "lora_dropout": spec.dropout, "use_rslora": spec.rslora,
        "target_modules": sorted(modules), "bias": "none", "inference_mode": True,
        "fan_in_fan_out": arch.name == "gpt2",  # GPT-2's Conv1D layers store (in, out)
    }  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))  # renamed into place when whole
    try:
        (tmp / "adapter_config.json").write_text(json.dumps(peft_config, indent=2))
        save_file(tensors, tmp / "adapter_model.safetensors")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def import_peft(path: str | Path, config: ModelConfig) -> tuple[LoraSpec, dict[str, torch.Tensor]]:
    """A PEFT LoRA folder as our spec (targets: the layers of ours it touches) and adapter tensors."""
    path = Path(path)
    peft = json.loads((path / "adapter_config.json").read_text())
    if peft.get("peft_type") != "LORA":
        raise LlmlabError(f"{path} is a PEFT {peft.get('peft_type')} adapter", "only LoRA adapters are imported")
    if peft.get("bias", "none") != "none" or peft.get("rank_pattern") or peft.get("alpha_pattern"):
        raise LlmlabError(f"{path}: LoRA with trained biases or per-layer ranks is not supported",
                          "train the adapter with bias='none' and one rank")  # fmt: skip
    theirs = {
        k.removeprefix(PREFIX).replace(".default", ""): v
        for k, v in load_file(path / "adapter_model.safetensors").items()
    }
    tensors: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for name in architecture_of(config).names(config):
        layer = name.removesuffix(".weight")
        try:
            parts, sizes = _parts(config, layer)
        except LlmlabError:
            continue
        found = [(theirs.get(f"{p}.lora_A.weight"), theirs.get(f"{p}.lora_B.weight")) for p in parts]
        if all(a is None for a, _ in found):
            continue
        _check_shapes(found, sizes, config, layer, path)
        tensors[f"{layer}.lora_A"], tensors[f"{layer}.lora_B"] = _fused(found, sizes, config, layer)
        used.update(f"{p}.lora_{x}.weight" for p in parts for x in "AB")
    if not tensors:
        raise LlmlabError(f"no tensor of {path} fits this base's layers", "pass the adapter of this architecture")
    left = sorted(set(theirs) - used)
    if left:
        raise LlmlabError(f"{path} adapts layers llmlab does not adapt ({left[0]}{' ...' if len(left) > 1 else ''})",
                          "use a LoRA adapter on the attention and MLP projections")  # fmt: skip
    r = int(peft["r"])
    layers = tuple(sorted({k.rsplit(".", 1)[0] for k in tensors}))
    alpha, dropout = float(peft["lora_alpha"]), float(peft.get("lora_dropout", 0.0))
    spec = LoraSpec(r, alpha, dropout, layers, bool(peft.get("use_rslora", False)))
    return spec, tensors


def _check_shapes(found, sizes: list[int], config: ModelConfig, layer: str, path: Path) -> None:
    """Each part's B writes that part's rows and every part reads one width with one rank (the width itself
    is checked against the layer when the tensors are loaded): else the adapter is for another base."""
    present = [(a, b, rows) for (a, b), rows in zip(found, sizes) if a is not None and b is not None]
    shapes = {(a.shape[0], a.shape[1], b.shape[1]) for a, b, _ in present}
    wrong_rows = any(rows != -1 and b.shape[0] != rows for _, b, rows in present)
    if len(shapes) > 1 or wrong_rows or any(r != r_b for r, _, r_b in shapes):
        shown = ", ".join(f"{tuple(b.shape)} x {tuple(a.shape)}" for a, b, _ in present)
        raise LlmlabError(f"{path}: the adapter's parts of {layer} do not fit this base ({shown})",
                          "put the adapter on the base it was trained for")  # fmt: skip


def _fused(found, sizes: list[int], config: ModelConfig, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Stacked A, block-diagonal B for the parts of one fused layer of ours."""
    if len(found) == 1:
        return found[0][0].float(), found[0][1].float()
    r = next(a.shape[0] for a, _ in found if a is not None)
    width = next(a.shape[1] for a, _ in found if a is not None)
    a_parts, b = [], torch.zeros(sum(sizes), r * len(found))
    start = 0
    for k, ((a, b_part), rows) in enumerate(zip(found, sizes)):
        a_parts.append(a.float() if a is not None else torch.zeros(r, width))
        if b_part is not None:
            b[start : start + rows, k * r : (k + 1) * r] = b_part.float()
        start += rows
    return torch.cat(a_parts), b
