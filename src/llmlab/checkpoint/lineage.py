"""What a checkpoint went through, stage by stage (pre-training, fine-tuning, alignment, quantization ...),
kept in `lineage.json` beside its weights so that its model card can say how it was made. A command that
writes a checkpoint from a base appends its stage to the base's lineage: a fine-tuned model's card still
names the corpus it was pre-trained on and the compute each stage spent.

The file sits outside the folder's manifest, like the card itself: it describes the weights, it is not
read to rebuild them, so an unreadable one costs the card its history, never the checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LINEAGE = "lineage.json"
PF_DAY = 1e15 * 86400  # FLOPs in a petaflop/s-day, the unit of the GPT-3 and Chinchilla papers


@dataclass
class DataSource:
    """A corpus or record file one stage read."""

    name: str  # a file, a folder, an `hf:` dataset id, or `python-stdlib` (the default corpus)
    documents: int = 0  # documents or records read
    tokens: int = 0  # tokens of the corpus (training and validation splits)
    hash: str = ""  # a hash of the text read: two runs with the same hash read the same text


@dataclass
class Stage:
    """One command's work on the weights."""

    kind: str  # pre-training, fine-tuning, alignment, reward model, distillation, pruning, quantization, ...
    method: str  # what was done, briefly: "clm", "lora r=8", "dpo beta=0.1", "int8", "wanda 50%"
    base: str | None = None  # the checkpoint, folder or hub id it started from; None: random weights
    data: list[DataSource] = field(default_factory=list)
    steps: int = 0
    tokens: int = 0  # tokens trained on, as the training core counts them (padding excluded)
    flops: float = 0.0  # model FLOPs spent (plan/flops.py's count of each step, forward and backward)
    seconds: float = 0.0
    validation_loss: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)  # the few options a reader wants to see

    @property
    def pf_days(self) -> float:
        return self.flops / PF_DAY

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k in known}  # a newer llmlab's extra fields are skipped
        sources = {f.name for f in dataclasses.fields(DataSource)}
        fields["data"] = [DataSource(**{k: v for k, v in d.items() if k in sources}) for d in fields.get("data", [])]
        return cls(**fields)


def read_lineage(folder: str | Path) -> list[Stage]:
    """The stages recorded in a folder; none when it has no lineage or an unreadable one."""
    file = Path(folder) / LINEAGE
    try:
        return [Stage.from_dict(stage) for stage in json.loads(file.read_text(encoding="utf-8"))["stages"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def write_lineage(folder: str | Path, stages: list[Stage]) -> Path:
    """Write the stages (to a temporary name, then renamed: a reader never sees half a file)."""
    file = Path(folder) / LINEAGE
    write_text_atomic(file, json.dumps({"stages": [s.to_dict() for s in stages]}, indent=2) + "\n")
    return file


def base_lineage(base: str | Path | None) -> list[Stage]:
    """The history a new stage builds on: the base's lineage, or a single stage naming a base that has none
    (a Hugging Face folder or hub id, or an llmlab checkpoint written before lineages were kept)."""
    if base is None:
        return []
    path = Path(base)
    recorded = read_lineage(path) if path.is_dir() else []
    if recorded:
        return recorded
    llmlab_folder = (path / "config.json").is_file() and "llmlab-checkpoint" in (path / "config.json").read_text()
    kind = "checkpoint" if llmlab_folder else "imported"
    return [Stage(kind=kind, method="llmlab checkpoint" if llmlab_folder else "Hugging Face model", base=str(base))]


def write_text_atomic(file: Path, text: str) -> None:
    """`text` into `file` by a rename, so a hard link to the old file (a carried-over run file) is untouched."""
    tmp = file.with_name(f".{file.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, file)
