"""The adapter folder: what parameter-efficient fine-tuning trained, without the base model's weights.

    adapter_config.json     {"format", "method": lora | qlora | prompt-tuning, "settings", "base": {source,
                            fingerprint, model config}}
    adapter.safetensors     <layer>.lora_A / <layer>.lora_B tensors, or soft_prompt
    tokenizer.json          the base's tokenizer (chat and generation read it from here)
    generation_config.json  decoding defaults
    trainer_state.json, optimizer.safetensors   (resumable runs)
    manifest.json           sha256 of every file

The base is named by where it was loaded from and identified by a fingerprint of its weights, so an
adapter put on another base (same shapes, other numbers) is refused rather than silently wrong.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from llmlab.checkpoint.folder import verify_manifest, write_folder
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.tokenizer import TextTokenizer

FORMAT = "llmlab-adapter-1"
CONFIG = "adapter_config.json"
WEIGHTS = "adapter.safetensors"


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over every tensor of the model's state (name, dtype, shape, bytes), in name order: the
    same weights give the same fingerprint whatever folder or format they were read from."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass
class AdapterInfo:
    """adapter_config.json, read."""

    method: str  # lora, qlora or prompt-tuning
    settings: dict[str, Any]  # LoraSpec's fields, or {"tokens": N} for a soft prompt
    base_source: str
    base_fingerprint: str
    base_config: ModelConfig
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "method": self.method, "settings": self.settings,
                "base": {"source": self.base_source, "fingerprint": self.base_fingerprint,
                         "config": self.base_config.to_dict()}}  # fmt: skip


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / CONFIG).is_file()


def save_adapter(
    out: str | Path,
    info: AdapterInfo,
    tensors: dict[str, torch.Tensor],
    tokenizer: TextTokenizer,
    generation: GenerationConfig,
    trainer_state: dict[str, Any] | None = None,
    optimizer_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the adapter folder atomically, like a checkpoint folder."""

    def write(tmp: Path) -> None:
        config = {**info.to_dict(), **({"tokenizer_roles": tokenizer.roles} if tokenizer.roles else {})}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp / WEIGHTS)
        tokenizer.save(tmp / "tokenizer.json")
        (tmp / "generation_config.json").write_text(json.dumps(generation.to_dict(), indent=2))
        if trainer_state is not None:
            (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
        if optimizer_tensors is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in optimizer_tensors.items()},
                      tmp / "optimizer.safetensors")  # fmt: skip

    return write_folder(out, write)


def read_adapter(path: str | Path) -> AdapterInfo:
    """adapter_config.json of a verified adapter folder; a bad one is one error naming the file."""
    path = Path(path)
    if not is_adapter(path):
        raise LlmlabError(f"{path} is not an adapter folder (no {CONFIG})", "pass a folder written by llmlab finetune")
    verify_manifest(path)
    file = path / CONFIG
    try:
        data = json.loads(file.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        base = data["base"]
        return AdapterInfo(data["method"], data["settings"], base["source"], base["fingerprint"],
                           ModelConfig.from_dict(base["config"]), path)  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, LlmlabError) as exc:
        raise LlmlabError(f"{file} is not a valid llmlab adapter config ({exc})", "re-copy the adapter") from None


def read_adapter_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    file = Path(path) / WEIGHTS
    try:
        return load_file(file)
    except (SafetensorError, OSError) as exc:
        raise LlmlabError(
            f"cannot read {file}: {exc}", "the file is truncated or not safetensors; re-copy it"
        ) from None


def adapter_tokenizer(path: str | Path) -> TextTokenizer:
    """The base's tokenizer as saved with the adapter, with its special-token roles."""
    roles = json.loads((Path(path) / CONFIG).read_text()).get("tokenizer_roles")
    return TextTokenizer.load(Path(path) / "tokenizer.json", roles)


def adapter_generation(path: str | Path) -> GenerationConfig:
    file = Path(path) / "generation_config.json"
    return GenerationConfig.from_dict(json.loads(file.read_text())) if file.is_file() else GenerationConfig()


def require_base(info: AdapterInfo, fingerprint: str, source: str) -> None:
    """The adapter was trained on exactly these weights, or a one-line refusal."""
    if fingerprint != info.base_fingerprint:
        raise LlmlabError(
            f"adapter {info.path} was trained on another base ({info.base_source}, weights "
            f"{info.base_fingerprint[:12]}), not on {source} (weights {fingerprint[:12]})",
            f"pass the base it was trained on: {info.base_source}",
        )
