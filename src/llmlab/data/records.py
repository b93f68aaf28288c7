"""Records (one dict per example) from the files datasets come in: JSON Lines, a JSON array, CSV, and
Parquet (what datasets on the Hugging Face hub are stored as), or a hub dataset id through the
`datasets` library (`hf:knkarthick/dialogsum`). A bad line is one error naming its file and number."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
HUB_PREFIX = "hf:"


def read_records(source: str | Path, split: str = "train") -> list[dict[str, Any]]:
    """Every record of a file (by its suffix) or of a hub dataset's `split`; never an empty list."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        records = _hub_records(text[len(HUB_PREFIX) :], split)
    else:
        path = Path(source)
        if not path.is_file():
            raise LlmlabError(f"{path} is not a file", f"pass a {', '.join(SUFFIXES)} file or hf:ORG/NAME")
        readers = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}
        if path.suffix not in readers:
            raise LlmlabError(f"{path}: cannot read {path.suffix or 'files without a suffix'}",
                              f"use one of {', '.join(SUFFIXES)}")  # fmt: skip
        records = readers[path.suffix](path)
    if not records:
        raise LlmlabError(f"{source} holds no records", "pass a file with at least one example")
    return records


def _jsonl(path: Path) -> list[dict[str, Any]]:
    records = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LlmlabError(
                    f"{path}:{number} is not valid JSON ({exc.msg})", "one JSON object per line"
                ) from None
            if not isinstance(record, dict):
                raise LlmlabError(f"{path}:{number} is a JSON {type(record).__name__}, not an object",
                                  "one JSON object per line")  # fmt: skip
            records.append(record)
    return records


def _json(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise LlmlabError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})", "fix the file") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"train": [...]} or {"data": [...]}
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise LlmlabError(f"{path} is not a JSON array of objects", "store the examples as [{...}, {...}]")
    return data


def _csv(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [dict(row) for row in csv.DictReader(f)]


def _parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own types for a damaged file
        raise LlmlabError(f"cannot read {path} as Parquet: {exc}", "re-copy the file") from None


def _hub_records(name: str, split: str) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:
        raise LlmlabError("hub datasets need the `datasets` library", "pip install 'llmlab[hf]'") from None
    try:
        return list(datasets.load_dataset(name, split=split))
    except Exception as exc:  # offline, unknown name or split: the library's own message, on one line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise LlmlabError(f"cannot load hub dataset {name} (split {split}): {reason}",
                          "check the name and the connection, or download it and pass the file") from None  # fmt: skip
