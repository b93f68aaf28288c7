"""Where text comes from: a file, a folder, JSONL, or the built-in default corpus."""

from __future__ import annotations

import json
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from llmlab.data.records import HUB_PREFIX, read_records
from llmlab.errors import LlmlabError

DEFAULT_CORPUS = "python-stdlib"
RECORD_FILES = (".json", ".csv", ".parquet")  # given as --data: one document per record's text field
CURATED_MARK = "curation.json"  # `llmlab data clean` writes it last: its data/part-*.jsonl are then complete


@dataclass
class SourceReport:
    """What reading the source found, for the log."""

    files_read: int = 0
    skipped_binary: int = 0
    skipped_undecodable: int = 0
    skipped_paths: list[str] = field(default_factory=list)


def default_corpus_dir() -> Path:
    """The running interpreter's standard library: real text and code, present on every machine."""
    return Path(sysconfig.get_paths()["stdlib"])


def read_documents(
    path: str | Path | None, glob: str = "**/*", text_field: str = "text", report: SourceReport | None = None
) -> Iterator[str]:
    """Yield documents: one per text file, one per JSONL line (its `text_field`), or one per record of a
    .json/.csv/.parquet file or `hf:ORG/NAME` dataset given as the path."""
    report = report if report is not None else SourceReport()
    if str(path).startswith(HUB_PREFIX) or Path(str(path)).suffix in RECORD_FILES and Path(str(path)).is_file():
        report.files_read += 1
        yield from _record_texts(read_records(path), str(path), text_field)
        return
    if path is None or str(path) == DEFAULT_CORPUS:
        root = default_corpus_dir()
        files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
        yield from _read_files(files, text_field, report)
        return
    path = Path(path)
    if not path.exists():
        raise LlmlabError(f"data path {path} does not exist", "pass a text file, a folder or a .jsonl file")
    if path.is_dir() and (path / "run.json").exists() and (path / "data").is_dir():
        yield from _read_curated(path, report)
        return
    if path.is_dir():
        files = sorted(p for p in path.glob(glob) if p.is_file())
        if not files:
            raise LlmlabError(f"no files match {glob!r} under {path}", "check --data and --glob")
        yield from _read_files(files, text_field, report)
    else:
        yield from _read_files([path], text_field, report)


def _read_curated(folder: Path, report: SourceReport) -> Iterator[str]:
    """A `llmlab data clean` folder: its curated documents only (not its reports), once it is finished."""
    if not (folder / CURATED_MARK).exists():
        raise LlmlabError(f"{folder} is an unfinished curation", f"rerun llmlab data clean with --out {folder}")
    yield from _read_files(sorted((folder / "data").glob("part-*.jsonl")), "text", report)


def _read_files(files: list[Path], text_field: str, report: SourceReport) -> Iterator[str]:
    for file in files:
        raw = file.read_bytes()
        if b"\x00" in raw[:8192]:
            report.skipped_binary += 1
            report.skipped_paths.append(str(file))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            report.skipped_undecodable += 1
            report.skipped_paths.append(str(file))
            continue
        report.files_read += 1
        if file.suffix == ".jsonl":
            yield from _jsonl_texts(file, text, text_field)
        else:
            yield text


def _record_texts(records: list[dict], where: str, text_field: str) -> Iterator[str]:
    for number, record in enumerate(records, 1):
        value = record.get(text_field)
        if not isinstance(value, str):
            raise LlmlabError(
                f"{where}: record {number} has no text field {text_field!r}", "pass the right --text-field"
            )
        yield value


def _jsonl_texts(file: Path, text: str, text_field: str) -> Iterator[str]:
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LlmlabError(f"{file}:{lineno} is not valid JSON ({exc.msg})", "fix or remove that line") from None
        if not isinstance(record, dict) or text_field not in record:
            raise LlmlabError(f"{file}:{lineno} has no field {text_field!r}", "pass the right --text-field")
        value = record[text_field]
        if not isinstance(value, str):
            raise LlmlabError(f"{file}:{lineno}: field {text_field!r} is not a string", "fix the data")
        yield value
