"""Hugging Face model folders and hub ids into llmlab: config, weights, tokenizer and generation defaults.

Weights come from `model.safetensors` (or its shards, through the index) or, failing that, from
`pytorch_model.bin` loaded with `weights_only=True`, which refuses anything but tensors. Tokenizers
come from `tokenizer.json`, else BERT's `vocab.txt`, else SentencePiece's `spiece.model` (through
transformers); the roles of special tokens from the folder's `special_tokens_map.json` or
`tokenizer_config.json`.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from tokenizers import Tokenizer

from llmlab.checkpoint.card import record_derived
from llmlab.checkpoint.folder import Checkpoint, require_new_folder, save_checkpoint
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.hf.maps import ARCHITECTURES, Architecture, from_hf_state
from llmlab.tokenizer import ROLES, TextTokenizer

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
DOWNLOAD = ["*.json", "*.safetensors", "spiece.model", "tokenizer.model", "vocab.txt"]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LlmlabError(f"cannot read {path}: {exc}", "re-download the model folder") from None
    if not isinstance(data, dict):
        raise LlmlabError(f"{path} is not a JSON object", "re-download the model folder")
    return data


def is_hf_source(source: str | Path) -> bool:
    """A folder with a Hugging Face config.json, or an `org/name` hub id that is not a local path."""
    path = Path(source)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            return False
        try:
            data = json.loads(config.read_text())
        except (OSError, json.JSONDecodeError):
            return False
        return isinstance(data, dict) and "format" not in data and "model_type" in data
    if Path(str(source).split("/")[0]).is_dir():  # runs/typo: a local path that is missing, not a hub id
        return False
    return not path.exists() and HUB_ID.fullmatch(str(source)) is not None


def resolve_folder(source: str | Path) -> Path:
    """The local folder of a model: the path itself, or the hub snapshot downloaded into HF's cache."""
    path = Path(source)
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise LlmlabError(
            f"{source} is not a local folder, and downloading hub ids needs huggingface_hub",
            "pip install huggingface_hub, or pass a downloaded model folder",
        ) from None
    try:
        folder = Path(snapshot_download(str(source), allow_patterns=DOWNLOAD))
        if not list(folder.glob("*.safetensors")):  # an older repository: pickled weights only
            folder = Path(snapshot_download(str(source), allow_patterns=[*DOWNLOAD, "pytorch_model*.bin"]))
    except Exception as exc:  # offline, unknown id, gated repository: all end the same way
        raise LlmlabError(
            f"{source} is not a local folder, and downloading it from the Hugging Face hub failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
            "check the path, or the id and the network connection",
        ) from None
    return folder


def read_hf_config(folder: Path) -> tuple[Architecture, ModelConfig]:
    data = _read_json(folder / "config.json")
    model_type = data.get("model_type")
    if model_type not in ARCHITECTURES:
        raise LlmlabError(
            f"{folder}: architecture {model_type!r} ({', '.join(data.get('architectures') or [])}) is not supported",
            f"llmlab imports {', '.join(ARCHITECTURES)}",
        )
    arch = ARCHITECTURES[model_type]
    try:
        return arch, arch.to_config(data)
    except KeyError as exc:
        raise LlmlabError(f"{folder / 'config.json'} lacks {exc}", "re-download the model folder") from None


def read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of the folder, from safetensors (single or sharded) or weights-only torch files."""
    for index_name, single in (("model.safetensors.index.json", "model.safetensors"),
                               ("pytorch_model.bin.index.json", "pytorch_model.bin")):  # fmt: skip
        index = folder / index_name
        files = sorted(set(_read_json(index)["weight_map"].values())) if index.is_file() else [single]
        if all((folder / f).is_file() for f in files):
            state: dict[str, torch.Tensor] = {}
            for f in files:
                state.update(_read_tensors(folder / f))
            return state
    raise LlmlabError(
        f"{folder} has no weights (model.safetensors, its shards, or pytorch_model.bin)",
        "download the complete model folder",
    )


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    if file.suffix == ".safetensors":
        try:
            return load_file(file)
        except (SafetensorError, OSError) as exc:
            raise LlmlabError(f"cannot read {file}: {exc}", "the file is truncated; download it again") from None
    try:  # weights_only: tensors and plain containers only, never arbitrary objects or code
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise LlmlabError(
            f"{file} is not a plain tensor file ({str(exc).splitlines()[0][:120]}); llmlab does not unpickle objects",
            "convert it to safetensors with its own tools, or use a repository that has model.safetensors",
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LlmlabError(f"{file} does not hold a state dict of tensors", "use a model.safetensors file")
    return state


def _normalise(arch: Architecture, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Bare-model checkpoints (GPT2Model, LlamaModel, BertModel) lack the head class's prefix; T5 may
    store its shared embedding only under the stacks' names."""
    prefix = {"gpt2": "transformer.", "llama": "model.", "bert": "bert."}.get(arch.name)
    if prefix and not any(k.startswith(prefix) for k in state):
        state = {(k if k.startswith(("lm_head.", "cls.")) else prefix + k): v for k, v in state.items()}
    if arch.name == "t5" and "shared.weight" not in state and "encoder.embed_tokens.weight" in state:
        state["shared.weight"] = state["encoder.embed_tokens.weight"]
    if arch.name == "bert" and "cls.predictions.bias" not in state and "cls.predictions.decoder.bias" in state:
        state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"]
    return state


def _special_tokens(folder: Path) -> dict[str, str]:
    """Role -> token text from special_tokens_map.json, then tokenizer_config.json."""
    roles: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):  # the latter wins
        file = folder / name
        if file.is_file():
            for role in ROLES:
                value = _read_json(file).get(f"{role}_token")
                if isinstance(value, dict):
                    value = value.get("content")
                if isinstance(value, str):
                    roles[role] = value
    return roles


def read_hf_tokenizer(folder: Path) -> TextTokenizer:
    roles = _special_tokens(folder)
    if (folder / "tokenizer.json").is_file():
        return TextTokenizer.load(folder / "tokenizer.json", roles)
    if (folder / "vocab.txt").is_file():  # BERT's WordPiece vocabulary
        from tokenizers.implementations import BertWordPieceTokenizer

        config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
        wordpiece = BertWordPieceTokenizer(str(folder / "vocab.txt"), lowercase=config.get("do_lower_case", True))
        return TextTokenizer(Tokenizer.from_str(wordpiece._tokenizer.to_str()), roles)
    if (folder / "spiece.model").is_file() or (folder / "tokenizer.model").is_file():  # SentencePiece
        try:
            from transformers import AutoTokenizer

            fast = AutoTokenizer.from_pretrained(str(folder))
        except Exception as exc:
            raise LlmlabError(
                f"cannot convert the SentencePiece tokenizer in {folder} ({type(exc).__name__}: {exc})",
                "pip install transformers sentencepiece protobuf",
            ) from None
        return TextTokenizer(Tokenizer.from_str(fast.backend_tokenizer.to_str()), roles)
    raise LlmlabError(f"{folder} has no tokenizer (tokenizer.json, vocab.txt or spiece.model)", "download it too")


def read_hf_generation(folder: Path) -> GenerationConfig:
    """Decoding defaults from generation_config.json; like transformers, greedy unless it samples."""
    data = _read_json(folder / "generation_config.json") if (folder / "generation_config.json").is_file() else {}
    config = GenerationConfig(greedy=not data.get("do_sample", False))
    if data.get("do_sample"):
        config.temperature = float(data.get("temperature", 1.0))
        config.top_k = int(data.get("top_k", 50))  # transformers' default when sampling
        config.top_p = float(data.get("top_p", 1.0))
    if data.get("max_new_tokens"):
        config.max_new_tokens = int(data["max_new_tokens"])
    return config


def load_hf(source: str | Path) -> Checkpoint:
    """A Hugging Face model as an llmlab Checkpoint (model in fp32, eval mode)."""
    folder = resolve_folder(source)
    arch, config = read_hf_config(folder)
    tokenizer = read_hf_tokenizer(folder)
    if tokenizer.vocab_size > config.vocab_size:
        raise LlmlabError(
            f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens, the model only {config.vocab_size}",
            "the tokenizer does not belong to this model",
        )
    model = from_hf_state(_normalise(arch, read_hf_weights(folder)), config, arch).float()
    return Checkpoint(model=model, tokenizer=tokenizer, generation=read_hf_generation(folder), path=folder)


def import_hf(source: str | Path, out: str | Path) -> Checkpoint:
    """Convert once: a Hugging Face folder or hub id -> an llmlab checkpoint folder at `out`."""
    out = require_new_folder(out)
    ckpt = load_hf(source)
    save_checkpoint(out, ckpt.model, ckpt.tokenizer, ckpt.generation)
    record_derived(out, source, "imported", "Hugging Face model converted by llmlab import")
    return ckpt


def hf_bert_pooler(source: str | Path) -> dict[str, torch.Tensor] | None:
    """A Hugging Face BERT checkpoint's pretrained pooler (dense layer over [CLS]), which llmlab's encoder
    does not keep but a sequence-classification head starts from, as `BertForSequenceClassification`
    does; None for other sources or a checkpoint without one."""
    if not is_hf_source(source):
        return None
    folder = resolve_folder(source)
    arch, _ = read_hf_config(folder)
    if arch.name != "bert":
        return None
    state = _normalise(arch, read_hf_weights(folder))
    names = {"weight": "bert.pooler.dense.weight", "bias": "bert.pooler.dense.bias"}
    return {k: state[v].float() for k, v in names.items()} if all(v in state for v in names.values()) else None
