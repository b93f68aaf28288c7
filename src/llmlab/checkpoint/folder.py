"""The checkpoint folder every later stage takes as its only input. safetensors + JSON, no pickles.

    config.json             {"format": ..., "model": ModelConfig fields}
    model.safetensors       weights (a tied output head is stored once, as the embedding)
    tokenizer.json          the tokenizer the model was trained with
    generation_config.json  decoding defaults
    trainer_state.json      (resumable runs) step, schedule, data position, optimizer hyper-parameters
    optimizer.safetensors   (resumable runs) AdamW moments and the random number generators' states
    manifest.json           sha256 of every file above, so a truncated or altered file is refused

A folder is written under a temporary name and renamed into place, so a crash never leaves half of one;
other files of a run folder (metrics.jsonl, loss.png) are carried over into the new folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.model import LanguageModel, build_model
from llmlab.tokenizer import TextTokenizer

FORMAT = "llmlab-checkpoint-1"
REQUIRED = ("config.json", "model.safetensors", "tokenizer.json")


@dataclass
class Checkpoint:
    model: LanguageModel
    tokenizer: TextTokenizer
    generation: GenerationConfig
    path: Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_state(model: LanguageModel) -> dict[str, torch.Tensor]:
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:  # the head is the embedding: store it once
        state = {k: v for k, v in state.items() if not k.startswith("lm_head.")}
    return state


def save_checkpoint(
    out: str | Path,
    model: LanguageModel,
    tokenizer: TextTokenizer,
    generation: GenerationConfig | None = None,
    trainer_state: dict[str, Any] | None = None,
    optimizer_tensors: dict[str, torch.Tensor] | None = None,
    quantization: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint folder atomically (temporary folder, then rename). A write that fails
    (a full disk above all) is one error; the temporary folder goes and the previous checkpoint stays."""
    config = {"format": FORMAT, "model": model.config.to_dict()}
    if quantization is not None:
        config["quantization"] = quantization
    if tokenizer.roles:  # special tokens not found by their usual names (imported tokenizers)
        config["tokenizer_roles"] = tokenizer.roles
    return write_folder(
        out, lambda tmp: _write_files(tmp, config, model, tokenizer, generation, trainer_state, optimizer_tensors)
    )


def write_folder(out: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(tmp)` fills a temporary folder beside `out`; a manifest of sha256 sums is added and the
    folder renamed into place (carrying over the run's other files). Any write error is one line and
    leaves the previous folder as it was."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as exc:
        raise _write_error(out, exc) from None
    try:
        write(tmp)
        files = sorted(p.name for p in tmp.iterdir())
        (tmp / "manifest.json").write_text(json.dumps({f: _sha256(tmp / f) for f in files}, indent=2))
        _move_into_place(tmp, out, written=set(files) | {"manifest.json"})
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError | SafetensorError):
            raise _write_error(out, exc) from None
        raise
    return out


def _write_files(
    tmp: Path,
    config: dict[str, Any],
    model: LanguageModel,
    tokenizer: TextTokenizer,
    generation: GenerationConfig | None,
    trainer_state: dict[str, Any] | None,
    optimizer_tensors: dict[str, torch.Tensor] | None,
) -> None:
    """Every file of the folder but the manifest, into the temporary folder."""
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    save_file({k: v.cpu() for k, v in model_state(model).items()}, tmp / "model.safetensors")
    tokenizer.save(tmp / "tokenizer.json")
    (tmp / "generation_config.json").write_text(json.dumps((generation or GenerationConfig()).to_dict(), indent=2))
    if trainer_state is not None:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2))
    if optimizer_tensors is not None:
        tensors = {k: v.detach().cpu().contiguous() for k, v in optimizer_tensors.items()}
        save_file(tensors, tmp / "optimizer.safetensors")


def _write_error(out: Path, exc: BaseException) -> LlmlabError:
    """One line for a failed write: the OS's reason (No space left on device), not a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror  # its file name would be the temporary folder's, gone by now
    else:
        reason = " ".join(str(exc).split()) or type(exc).__name__
    return LlmlabError(f"cannot write checkpoint {out}: {reason}", "free space on the disk or choose another --out")


def _move_into_place(tmp: Path, out: Path, written: set[str]) -> None:
    """Rename the finished folder to `out`, keeping what else an existing run folder holds."""
    if out.exists():
        _carry_over(out, tmp, written)
    swap_folder(tmp, out)


def swap_folder(tmp: Path, out: Path) -> None:
    """Put the finished folder `tmp` at `out` (checkpoints, indexes): an existing `out` is renamed aside first,
    put back if the second rename fails, and removed after; a crash between the two leaves it beside."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _carry_over(old: Path, new: Path, written: set[str]) -> None:
    """Keep what else the run folder holds (metrics, plots) by hard-linking it into the new folder."""
    for entry in old.iterdir():
        if entry.name in written or entry.name in REQUIRED or entry.name.startswith("."):
            continue
        if entry.is_dir():  # tracker logs: files a writer still holds open keep landing in the new folder
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=_link_or_copy)
            continue
        _link_or_copy(entry, new / entry.name)


def _link_or_copy(source: str | Path, target: str | Path) -> None:
    """A hard link (same inode: appends to metrics.jsonl keep landing in it), a copy across file systems."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def require_new_folder(out: str | Path) -> Path:
    """Conversions (import, export) write a new folder and never replace one."""
    out = Path(out)
    if out.exists():
        raise LlmlabError(f"{out} already exists", "choose another output folder or remove it")
    return out


def verify_checkpoint(path: str | Path) -> Path:
    """Refuse a folder that is not a complete, unaltered checkpoint, saying which file is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise LlmlabError(f"checkpoint {path} does not exist or is not a folder", "pass a run folder from pretrain")
    missing = [f for f in REQUIRED if not (path / f).is_file()]
    if missing:
        raise LlmlabError(f"checkpoint {path} is missing {', '.join(missing)}", "re-copy the folder or re-train")
    return verify_manifest(path)


def verify_manifest(path: Path) -> Path:
    """Every file the folder's manifest lists is there with its recorded sha256."""
    manifest = path / "manifest.json"
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
        except json.JSONDecodeError:
            raise LlmlabError(f"{manifest} is not valid JSON", "re-copy the checkpoint") from None
        for name, digest in recorded.items():
            file = path / name
            if not file.is_file():
                raise LlmlabError(f"checkpoint {path} is missing {name}", "re-copy the folder or re-train")
            if _sha256(file) != digest:
                raise LlmlabError(
                    f"{file} does not match its recorded checksum (truncated or altered)",
                    "re-copy the checkpoint; never edit its files by hand",
                )
    return path


def read_model_config(path: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint; any bad field is one error naming the file (hand-edited configs)."""
    file = Path(path) / "config.json"
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LlmlabError(f"cannot read {file}: {exc}", "re-copy the checkpoint") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "model" not in data:
        raise LlmlabError(f"{file} is not an llmlab checkpoint config", "pass a folder written by llmlab pretrain")
    try:
        return ModelConfig.from_dict(data["model"])
    except LlmlabError as exc:
        raise LlmlabError(f"{file}: {exc.what}", exc.fix or "re-copy the checkpoint") from None
    except (TypeError, ValueError, ArithmeticError) as exc:  # a value no check foresaw: still one line
        raise LlmlabError(
            f"{file}: invalid model config ({exc})", "fix the config.json or re-copy the checkpoint"
        ) from None


def load_tokenizer(path: str | Path) -> TextTokenizer:
    """The checkpoint's tokenizer, with the special-token roles its config.json records (imported ones)."""
    roles = json.loads((Path(path) / "config.json").read_text()).get("tokenizer_roles")
    return TextTokenizer.load(Path(path) / "tokenizer.json", roles)


def read_quantization(path: str | Path) -> dict[str, Any] | None:
    """The quantization section of a checkpoint's config.json, or None for full precision."""
    return json.loads((Path(path) / "config.json").read_text()).get("quantization")


def load_folder(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> Checkpoint:
    """Load an llmlab checkpoint folder: model (on `device`, eval mode), tokenizer, generation defaults.
    Any source (Hugging Face folders and hub ids too): `llmlab.load.load_checkpoint`."""
    path = verify_checkpoint(path)
    config = read_model_config(path)
    tokenizer = load_tokenizer(path)
    if tokenizer.vocab_size != config.vocab_size and not tokenizer.roles:  # imported ones may be padded
        raise LlmlabError(
            f"checkpoint {path}: tokenizer has {tokenizer.vocab_size} tokens but the model expects {config.vocab_size}",
            "the tokenizer.json does not belong to this model; use the one saved with it",
        )
    model = build_model(config)
    quantization = read_quantization(path)
    if quantization is not None:
        _prepare_quantized(model, quantization, path / "config.json")
    load_weights(model, path / "model.safetensors")
    model.to(device=device, dtype=dtype).eval()
    gen_file = path / "generation_config.json"
    generation = (
        GenerationConfig.from_dict(json.loads(gen_file.read_text())) if gen_file.is_file() else GenerationConfig()
    )
    return Checkpoint(model=model, tokenizer=tokenizer, generation=generation, path=path)


def _prepare_quantized(model: LanguageModel, quantization: Any, file: Path) -> None:
    """Quantized layers where config.json's quantization section says (per-layer int4 groups included)."""
    from llmlab.model.quantize import QuantizationSpec, prepare_quantized_structure

    try:
        spec = QuantizationSpec(**quantization)
    except TypeError as exc:  # not an object, unknown or missing fields: a newer llmlab, or a hand edit
        raise LlmlabError(f"{file}: invalid quantization section ({exc})", "re-quantize the checkpoint") from None
    try:
        spec.validate()
        prepare_quantized_structure(model, spec)
    except LlmlabError as exc:
        raise LlmlabError(f"{file}: {exc.what}", "re-quantize the full-precision checkpoint") from None


def load_weights(model: LanguageModel, file: Path) -> None:
    try:
        state = load_file(file)
    except (SafetensorError, OSError) as exc:
        raise LlmlabError(
            f"cannot read {file}: {exc}", "the file is truncated or not safetensors; re-copy it"
        ) from None
    if family_spec(model.config).causal and any(k.startswith("blocks.") for k in state):
        # written before the families shared one Stack (llmlab <= 2026-11-26): same tensors, shorter names
        state = {
            (f"decoder.{k}" if k.startswith(("blocks.", "norm.", "pos_embed.")) else k): v for k, v in state.items()
        }
    expected = model_state(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in expected if k in state and state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
            for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if names
        )
        raise LlmlabError(f"{file} does not fit the model in config.json ({detail})", "re-copy the checkpoint")
    model.load_state_dict(state, strict=False)
