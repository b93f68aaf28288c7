"""The model card: a `README.md` in every checkpoint folder, in the Hugging Face format (YAML front matter
that the hub and `huggingface_hub.ModelCard` read, then Markdown) so that the folder says what it holds,
how it was made and how well it does, wherever it is copied or uploaded.

It is rendered from what the folder already records: the architecture (config.json, or an adapter's base
config), the tokenizer, the stages of `lineage.json` and the results of `evaluations.json` (written by
`llmlab evaluate`). `card.json` keeps what only a person can say (license, language, intended use), set by
`llmlab card CKPT --license ...`. The card and these files are outside the manifest: refreshing a card never
makes the weights look altered.
"""

from __future__ import annotations

import json
import math
import re
import struct
from pathlib import Path
from typing import Any

import yaml

from llmlab.checkpoint.card_text import CardMeta, Folder, card_body
from llmlab.checkpoint.lineage import DataSource, Stage, base_lineage, read_lineage, write_lineage, write_text_atomic
from llmlab.config import ModelConfig
from llmlab.family import family_spec
from llmlab.plan.model import parameter_breakdown

CARD = "README.md"
EVALUATIONS = "evaluations.json"
SERVING = "serving.json"
QUANTIZATION_REPORT = Path("quantization") / "report.json"  # where `quantize --report` writes by default
PIPELINE = {"classify": "text-classification", "multilabel": "text-classification",
            "regress": "text-classification", "tag": "token-classification"}  # fmt: skip


def read_folder(path: str | Path) -> Folder:
    """The card's inputs from a folder written by llmlab (a checkpoint or an adapter)."""
    path = Path(path)
    adapter = None
    if (path / "adapter_config.json").is_file():
        data = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        config, quantization = ModelConfig.from_dict(data["base"]["config"]), None
        adapter = {"method": data["method"], "settings": data.get("settings", {}), "base": data["base"]["source"]}
    else:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
        config, quantization = ModelConfig.from_dict(data["model"]), data.get("quantization")
    parameters = _parameters(path, config, quantization)
    return Folder(path=path, config=config, parameters=parameters, quantization=quantization, adapter=adapter,
                  tokenizer=_tokenizer_summary(path / "tokenizer.json"), stages=read_lineage(path),
                  evaluations=read_evaluations(path), meta=CardMeta.read(path),
                  quantization_report=_read_json(path / QUANTIZATION_REPORT) or [], serving=_serving(path))  # fmt: skip


def _read_json(file: Path) -> Any:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _serving(path: Path) -> dict[str, Any] | None:
    """The serving record, while the weights are the ones that were served."""
    record, digest = _read_json(path / SERVING), weights_digest(path)
    return record if isinstance(record, dict) and digest is not None and record.get("weights") == digest else None


def _parameters(path: Path, config: ModelConfig, quantization: dict[str, Any] | None) -> int:
    """Parameters of the weights file, counted from its header (no tensor read); a quantized file's packed
    shapes say nothing of the model, so its count comes from the architecture."""
    file = path / "model.safetensors"
    if quantization is None and file.is_file():
        with open(file, "rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return sum(parameter_breakdown(config).values())


def _tokenizer_summary(file: Path) -> dict[str, Any]:
    """The tokenizer's algorithm, vocabulary and special tokens, from its tokenizer.json."""
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    model = data.get("model", {})
    vocab = model.get("vocab", {})
    specials = [t["content"] for t in data.get("added_tokens", []) if t.get("special")]
    size = len(vocab) + sum(1 for t in data.get("added_tokens", []) if t["content"] not in vocab)
    return {"type": model.get("type", "?"), "vocabulary": size, "special": specials,
            "byte_level": (data.get("pre_tokenizer") or {}).get("type") == "ByteLevel",
            "merges": len(model.get("merges") or [])}  # fmt: skip


def read_evaluations(folder: str | Path) -> list[dict[str, Any]]:
    """The results recorded for the weights the folder holds now: a result of earlier weights (a run resumed
    or overwritten since, a checkpoint written again into the folder) is not theirs and is left out."""
    try:
        results = list(json.loads((Path(folder) / EVALUATIONS).read_text(encoding="utf-8"))["results"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
    weights = weights_digest(folder)
    return [r for r in results if r.get("weights") == weights]


def weights_digest(folder: str | Path) -> str | None:
    """The sha256 the folder's manifest records for its weights (a checkpoint's or an adapter's)."""
    try:
        manifest = json.loads((Path(folder) / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest.get("model.safetensors") or manifest.get("adapter.safetensors")


def record_evaluation(folder: str | Path, results: list[dict[str, Any]]) -> None:
    """Add results to a folder's evaluations (a result with the same task, dataset, metric, shots and number
    of examples as an earlier one replaces it) and refresh its card. Each result: task, task_type, dataset,
    metric, value, optional low/high (a 95% interval), shots, split, examples."""
    folder = Path(folder)
    results = [{**r, "weights": weights_digest(folder)} for r in results]
    key = lambda r: (r["task"], r["dataset"], r["metric"], r.get("shots"), r.get("examples"))  # noqa: E731
    new = {key(r) for r in results}
    kept = [r for r in read_evaluations(folder) if key(r) not in new]
    write_text_atomic(folder / EVALUATIONS, json.dumps({"results": kept + results}, indent=2) + "\n")
    write_card(folder)


def record_serving(folder: str | Path, result: dict[str, Any]) -> None:
    """A serving smoke test of the folder's weights (prompts, answers, latencies, equal to generate's or not),
    keyed to their sha256 as evaluations are, then the card."""
    folder = Path(folder)
    write_text_atomic(folder / SERVING, json.dumps({**result, "weights": weights_digest(folder)}, indent=2) + "\n")
    write_card(folder)


def record_stage(folder: str | Path, history: list[Stage], stage: Stage) -> Path:
    """A command's stage after its base's history, then the card: what every command that writes a
    checkpoint calls once its folder is in place."""
    write_lineage(folder, [*history, stage])
    return write_card(folder)


def record_derived(out: str | Path, base: str | Path, kind: str, method: str, **settings: Any) -> Path:
    """The card of a folder made from another without training (quantized, pruned, merged, imported): the
    base's history, then this step."""
    stage = Stage(kind=kind, method=method, base=str(base), settings={k: v for k, v in settings.items() if v})
    return record_stage(out, base_lineage(base) if kind != "imported" else [], stage)


def export_card(source: str | Path, out: str | Path, method: str) -> Path | None:
    """The source checkpoint's card, with an export stage, into an exported folder (a Hugging Face folder's
    README.md is its hub page); None when the source is not an llmlab folder (nothing recorded to tell)."""
    source = Path(source)
    if not is_card_folder(source):
        return None
    f = read_folder(source)
    if f.adapter is not None:  # exported with the adapter added into the base's weights: a plain model now
        f.stages = [
            *f.stages,
            Stage(kind="merge", method="the adapter added into its base's weights", base=str(source)),
        ]
        f.adapter = None
        f.parameters = sum(parameter_breakdown(f.config).values())
    f.stages = [*f.stages, Stage(kind="export", method=method, base=str(source))]
    f.path = Path(out)
    file = f.path / CARD
    write_text_atomic(file, render(f))
    return file


def is_card_folder(path: str | Path) -> bool:
    """Whether llmlab wrote this folder (a checkpoint or an adapter): the folders whose cards it keeps."""
    path = Path(path)
    for name in ("config.json", "adapter_config.json"):
        try:
            if str(json.loads((path / name).read_text(encoding="utf-8")).get("format", "")).startswith("llmlab"):
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def write_card(folder: str | Path) -> Path:
    """(Re)write the folder's README.md from what it records now."""
    f = read_folder(folder)
    file = f.path / CARD
    write_text_atomic(file, render(f))
    return file


def render(f: Folder) -> str:
    """The whole card: front matter, then the Markdown sections."""
    return front_matter_text(f) + "\n" + card_body(f)


def front_matter(f: Folder) -> dict[str, Any]:
    """The card's YAML metadata, with Hugging Face's keys (`model-index` holds the evaluation results)."""
    imported = [s.base for s in f.stages if s.kind == "imported" and s.base and hub_id(s.base)]
    datasets = list(dict.fromkeys(hub_id(d.name) for s in f.stages for d in s.data if hub_id(d.name)))
    meta: dict[str, Any] = {}
    base = f.adapter["base"] if f.adapter and hub_id(f.adapter["base"]) else imported[0] if imported else None
    if base:
        meta["base_model"] = hub_id(base)
    if f.adapter:
        meta["library_name"] = "peft" if f.adapter["method"] in ("lora", "qlora") else "llmlab"
    meta |= {"license": f.meta.license, "language": f.meta.language or None, "datasets": datasets or None,
             "pipeline_tag": pipeline_tag(f.config), "tags": _tags(f)}  # fmt: skip
    if f.evaluations:
        meta["model-index"] = [{"name": f.path.name, "results": _model_index_results(f)}]
    return {k: v for k, v in meta.items() if v is not None}


def hub_id(name: str) -> str | None:
    """A Hugging Face hub id (`org/name`, or `hf:org/name` as llmlab's data options write it), or None for a
    local path: the front matter names only what the hub can resolve, and never leaks a machine's folders."""
    name = name.removeprefix("hf:")
    if Path(name).exists() or name.startswith(("/", ".", "~")) or name.count("/") != 1:
        return None
    return name if re.fullmatch(r"[\w.-]+/[\w.-]+", name) else None


def pipeline_tag(config: ModelConfig) -> str:
    if config.task is not None:
        return PIPELINE[config.task]
    spec = family_spec(config)
    return "text2text-generation" if spec.seq2seq else "text-generation" if spec.causal else "fill-mask"


def _tags(f: Folder) -> list[str]:
    tags = ["llmlab", f.config.family, *dict.fromkeys(s.kind for s in f.stages if s.kind not in ("checkpoint",))]
    if f.adapter:
        tags.append(f.adapter["method"])
    if f.quantization:
        tags.append(str(f.quantization.get("format", "quantized")))
    return list(dict.fromkeys(tags))


def _model_index_results(f: Folder) -> list[dict[str, Any]]:
    """One entry per (task, dataset), its metrics named with their shots, as the hub's evaluation widget reads."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in f.evaluations:
        grouped.setdefault((r["task"], r["dataset"]), []).append(r)
    return [
        {
            "task": {"type": rows[0].get("task_type") or pipeline_tag(f.config), "name": task},
            "dataset": {"name": dataset, "type": dataset, **_split(rows[0])},
            "metrics": [{"type": r["metric"], "value": r["value"], "name": metric_name(r)} for r in rows],
        }
        for (task, dataset), rows in grouped.items()
    ]  # fmt: skip


def _split(result: dict[str, Any]) -> dict[str, str]:
    return {"split": result["split"]} if result.get("split") else {}


def metric_name(result: dict[str, Any]) -> str:
    shots = result.get("shots")
    return result["metric"] + ("" if shots is None else f" ({shots}-shot)")


def front_matter_text(f: Folder) -> str:
    return "---\n" + yaml.safe_dump(front_matter(f), sort_keys=False, allow_unicode=True) + "---\n"


__all__ = ["CardMeta", "DataSource", "Stage", "front_matter", "read_folder", "record_evaluation", "record_stage",
           "write_card"]  # fmt: skip
