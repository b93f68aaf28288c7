"""Load any model source: an llmlab checkpoint folder, a Hugging Face folder or an `org/name` hub id.

Above both the folder format (`checkpoint.folder`) and the Hugging Face importer (`hf.importer`), so
neither has to know the other: every command that takes a checkpoint takes any of the three.
"""

from __future__ import annotations

from pathlib import Path

import torch

from llmlab.checkpoint.folder import Checkpoint, load_folder, read_model_config, verify_checkpoint
from llmlab.config import ModelConfig
from llmlab.hf.importer import is_hf_source, load_hf, read_hf_config, resolve_folder


def load_checkpoint(
    source: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Checkpoint:
    """Model (on `device`, eval mode), tokenizer and generation defaults from any source; a Hugging Face
    model (GPT-2, Llama, T5, BERT) is converted in memory (`llmlab import` converts one once)."""
    if is_hf_source(source):
        ckpt = load_hf(source)
        ckpt.model.to(device=device, dtype=dtype).eval()
        return ckpt
    return load_folder(source, device, dtype)


def load_config(source: str | Path) -> ModelConfig:
    """The architecture of any source, from its config.json alone (no weights are read)."""
    if is_hf_source(source):
        return read_hf_config(resolve_folder(source))[1]
    return read_model_config(verify_checkpoint(source))
