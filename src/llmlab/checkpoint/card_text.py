"""The Markdown sections of a model card (checkpoint/card.py reads the folder and writes the front matter):
architecture, tokenizer, training data, the recipe with each stage's budget, evaluation, intended use."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmlab.checkpoint.lineage import PF_DAY, Stage
from llmlab.config import ModelConfig
from llmlab.family import family_spec

META = "card.json"


@dataclass
class CardMeta:
    """What the card cannot read off the folder: a person's say, kept in card.json."""

    license: str = "unknown"  # a Hugging Face license id (apache-2.0, mit, ...)
    language: list[str] = field(default_factory=list)  # ISO 639-1 codes, or "code"
    intended_use: str = ""  # replaces the default paragraph of the card's last section

    @classmethod
    def read(cls, folder: Path) -> CardMeta:
        try:
            data = json.loads((folder / META).read_text(encoding="utf-8"))
            return cls(**{k: data[k] for k in ("license", "language", "intended_use") if k in data})
        except (OSError, ValueError, TypeError):
            return cls()


@dataclass
class Folder:
    """What a card reads from a checkpoint or adapter folder."""

    path: Path
    config: ModelConfig
    parameters: int
    quantization: dict[str, Any] | None
    adapter: dict[str, Any] | None  # adapter_config.json's method and settings, for an adapter folder
    tokenizer: dict[str, Any]
    stages: list[Stage]
    evaluations: list[dict[str, Any]]
    meta: CardMeta
    quantization_report: list[dict[str, Any]] = field(default_factory=list)  # quantization/report.json's rows
    serving: dict[str, Any] | None = None  # a serving smoke test of these weights (serving.json)


def card_body(f: Folder) -> str:
    sections = [_title(f), _architecture(f), _tokenizer(f), _training_data(f), _recipe(f), _evaluation(f),
                _deployment(f), _intended_use(f), _how_to_use(f)]  # fmt: skip
    return "\n\n".join(s for s in sections if s) + "\n"


def count(n: float) -> str:
    """1,836,160 -> 1.84M; small numbers stay whole."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def _title(f: Folder) -> str:
    kinds = " → ".join(dict.fromkeys(s.kind for s in f.stages)) or "no recorded stages"
    what = "an adapter for" if f.adapter else "a"
    return (f"# {f.path.name}\n\n{what.capitalize()} {count(f.parameters)}-parameter {f.config.family} language model "
            f"made with llmlab: {kinds}.")  # fmt: skip


def _architecture(f: Folder) -> str:
    c = f.config
    layers = f"{c.n_layer} encoder + {c.n_decoder_layer} decoder" if family_spec(c).seq2seq else str(c.n_layer)
    rows = [("family", c.family), ("parameters", f"{f.parameters:,} ({count(f.parameters)})"), ("layers", layers),
            ("hidden size", c.n_embd), ("attention heads", f"{c.n_head} ({c.n_kv_head} key/value)"),
            ("feed-forward", f"{c.intermediate_size} ({c.mlp})"), ("positions", c.positions),
            ("normalisation", f"{c.norm}, {c.norm_position}-norm"), ("context", f"{c.block_size} tokens"),
            ("vocabulary", c.vocab_size), ("tied embeddings", "yes" if c.tie_embeddings else "no")]  # fmt: skip
    if c.task:
        rows.append(("task head", f"{c.task}: {', '.join(c.labels) or 'one value'}"))
    if f.quantization:
        rows.append(("quantization", _quantization(f.quantization)))
    if f.adapter:
        settings = ", ".join(f"{k} {v}" for k, v in f.adapter["settings"].items() if v not in (None, [], ""))
        rows.append(("adapter", f"{f.adapter['method']} ({settings}) on `{f.adapter['base']}`"))
    return "## Architecture\n\n" + _table(("", ""), rows)


def _quantization(q: dict[str, Any]) -> str:
    """config.json's quantization section in words: weights only, what stays in 16 bits."""
    group = f", groups of {q.get('group_size')}" if q.get("format") in ("int4", "nf4") else ""
    skipped = f"; not quantized: {', '.join(q['skip'])}" if q.get("skip") else ""
    embeddings = "; embeddings and output head too" if q.get("embeddings") else "; embeddings not quantized"
    return f"{q.get('format')} weights ({q.get('scheme', 'absmax')}{group}){embeddings}{skipped}"


def _tokenizer(f: Folder) -> str:
    t = f.tokenizer
    if not t:
        return "## Tokenizer\n\nNo tokenizer.json was found."
    bpe = "byte-level BPE" if t["byte_level"] else "BPE" if t.get("merges") else "character level"
    kind = {"BPE": bpe, "WordPiece": "WordPiece",
            "WordLevel": "word/character level", "Unigram": "Unigram"}.get(t["type"], t["type"])  # fmt: skip
    specials = ", ".join(f"`{s}`" for s in t["special"]) or "none"
    return f"## Tokenizer\n\n{kind}, {t['vocabulary']:,} entries; special tokens: {specials}."


def _training_data(f: Folder) -> str:
    rows = [(s.kind, d.name, f"{d.documents:,}" if d.documents else "", f"{d.tokens:,}" if d.tokens else "",
             f"`{d.hash}`" if d.hash else "") for s in f.stages for d in s.data]  # fmt: skip
    if not rows:
        return "## Training data\n\nNo training data is recorded for this folder's stages."
    return "## Training data\n\n" + _table(("stage", "source", "documents", "tokens", "corpus hash"), rows)


def _recipe(f: Folder) -> str:
    if not f.stages:
        return "## Recipe\n\nNo stages are recorded (a folder written before llmlab kept lineages)."
    rows = [
        (
            i,
            s.kind,
            s.method,
            f"`{s.base}`" if s.base else "",
            f"{s.steps:,}" if s.steps else "",
            _budget(s.tokens, count),
            _budget(s.flops, lambda v: f"{v:.3g}"),
            _budget(s.flops / PF_DAY, _pf),
            "" if s.validation_loss is None else f"{s.validation_loss:.4f}",
        )
        for i, s in enumerate(f.stages, 1)
    ]
    flops = sum(s.flops for s in f.stages)
    tokens = count(sum(s.tokens for s in f.stages))
    total = f"\n\nTotal training compute: {flops:.3g} FLOPs ({_pf(flops / PF_DAY)} PF-days) on {tokens} tokens."
    settings = "".join(_settings(i, s) for i, s in enumerate(f.stages, 1))
    head = ("#", "stage", "method", "started from", "steps", "tokens", "FLOPs", "PF-days", "validation loss")
    return "## Recipe\n\n" + _table(head, rows) + total + settings  # fmt: skip


def _budget(value: float, show) -> str:
    return show(value) if value else ""


def _pf(value: float) -> str:
    return f"{value:.2e}"


def _settings(i: int, s: Stage) -> str:
    if not s.settings:
        return ""
    shown = ", ".join(f"{k} = {v}" for k, v in s.settings.items() if v is not None)
    return f"\n\nStage {i} settings: {shown}."


def _evaluation(f: Folder) -> str:
    if not f.evaluations:
        return ("## Evaluation\n\nNo evaluation is recorded yet: `llmlab evaluate` on this folder adds its results "
                "here and to the front matter's `model-index`.")  # fmt: skip
    rows = []
    for r in f.evaluations:
        interval = f"[{r['low']:.4g}, {r['high']:.4g}]" if r.get("low") is not None else ""
        shots = "" if r.get("shots") is None else r["shots"]
        rows.append((r["task"], r["dataset"], r.get("split", ""), shots, r["metric"], f"{r['value']:.4g}", interval,
                     r.get("examples", "")))  # fmt: skip
    head = ("task", "dataset", "split", "shots", "metric", "value", "95% interval", "examples")
    return "## Evaluation\n\n" + _table(head, rows)


def _deployment(f: Folder) -> str:
    """The quantization table and the serving smoke test, when they were measured (the lifecycle's last
    stages): the numbers its report shows for this model."""
    parts = []
    if f.quantization_report:
        head = ("format", "disk MB", "weights MB", "perplexity", "change", "tok/s batch 1", "tok/s batch 8")
        rows = [(r["variant"], f"{r['disk_mb']:.1f}", f"{r['weight_memory_mb']:.1f}", f"{r['perplexity']:.3f}",
                 f"{100 * r['perplexity_change']:+.2f}%", f"{r['tokens_per_s_batch1']:,.0f}",
                 f"{r['tokens_per_s_batch8']:,.0f}") for r in f.quantization_report]  # fmt: skip
        source = "the model this one was quantized from" if f.quantization else "this model"
        said = (f"Every format measured on {source} (`llmlab quantize --report`: perplexity on held-out text, "
                "greedy decoding speed on this machine):")  # fmt: skip
        parts.append(said + "\n\n" + _table(head, rows))
    if s := f.serving:
        same = "equal" if s["same_as_generate"] else "differ from"
        rows = [(" ".join(p.split())[:80], " ".join(a.split()), f"{t:.3f}")
                for p, a, t in zip(s["prompts"], s["answers"], s["latency_s"])]  # fmt: skip
        said = f"Served by `llmlab serve` and asked with the `openai` client; its greedy answers {same} `generate`'s:"
        parts.append(said + "\n\n" + _table(("prompt", "answer", "latency s"), rows))
    return "## Quantization and serving\n\n" + "\n\n".join(parts) if parts else ""


def _intended_use(f: Folder) -> str:
    c = f.config
    sources = ", ".join(dict.fromkeys(d.name for s in f.stages for d in s.data)) or "the data of its stages"
    text = f.meta.intended_use or (
        f"A small model for learning how language models are trained, adapted and evaluated, and for "
        f"experiments on {sources}. It has not been evaluated for safety, bias or factual accuracy and is not "
        f"meant for decisions about people or for production use without such an evaluation."
    )
    limits = [f"It reads at most {c.block_size} tokens at a time; longer inputs are cut.",
              f"It knows only what {sources} contains; expect fluent but wrong statements outside it."]  # fmt: skip
    if f.quantization:
        limits.append("Its weights are quantized: outputs differ slightly from the full-precision model's.")
    if any(s.kind == "pruning" for s in f.stages):
        limits.append("Some of its weights were pruned to zero; see the recipe for the sparsity.")
    return "## Intended use and limitations\n\n" + text + "\n\n" + "\n".join(f"- {line}" for line in limits)


def _how_to_use(f: Folder) -> str:
    path = f.path.name
    if f.adapter:
        command = f'llmlab generate {f.adapter["base"]} --adapter {path} --prompt "..."'
    elif c := f.config.task:
        command = f'llmlab {"tag" if c == "tag" else "classify"} {path} --text "..."'
    elif family_spec(f.config).generates:
        command = f'llmlab generate {path} --prompt "..."'
    else:
        command = f'llmlab fill-mask {path} "... [MASK] ..."'
    return f"## How to use\n\n```bash\n{command}\nllmlab card {path}        # this card, refreshed\n```"


def _table(head: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)
