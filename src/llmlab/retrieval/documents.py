"""Documents to index, each with where it came from, so a search hit can say which file or line it is.

A path is a text file (one document), a folder (its text files, recursively, in sorted order) or a
JSON Lines file (one document per line: the `text_field`, and an `id_field` that names the record).
`data/sources.py` reads corpora for training, where only the text matters; here the source matters too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llmlab.errors import LlmlabError

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst", ".text")
JSONL = ".jsonl"


@dataclass(frozen=True)
class Document:
    """One text and its source: `path` for a file, `path:LINE` for a JSON Lines record; `id` is the
    record's `--id-field` when one was asked for."""

    text: str
    source: str
    id: str | None = None

    @property
    def key(self) -> str:
        """What names the document in results: its id, or else its source."""
        return self.id if self.id is not None else self.source


def read_documents(
    paths: Iterable[str | Path], text_field: str = "text", id_field: str | None = None
) -> list[Document]:
    """Every non-blank document under `paths`, in the order given (folders sorted); none at all is an error."""
    documents: list[Document] = []
    paths = list(paths)
    if not paths:
        raise LlmlabError("no documents were given", "pass text files, folders or .jsonl files")
    for path in map(Path, paths):
        documents += _read_path(path, text_field, id_field)
    if not documents:
        named = ", ".join(map(str, paths))
        raise LlmlabError(f"no documents in {named} (every text is empty)", "pass files that hold some text")
    return documents


def _read_path(path: Path, text_field: str, id_field: str | None) -> list[Document]:
    if not path.exists():
        raise LlmlabError(f"{path} does not exist", "pass a text file, a folder or a .jsonl file")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (*TEXT_SUFFIXES, JSONL))
        if not files:
            kinds = ", ".join((*TEXT_SUFFIXES, JSONL))
            raise LlmlabError(f"no documents under {path} (looked for {kinds})", "pass a folder that holds text files")
        return [doc for file in files for doc in _read_file(file, text_field, id_field)]
    return _read_file(path, text_field, id_field)


def _read_file(path: Path, text_field: str, id_field: str | None) -> list[Document]:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise LlmlabError(f"{path} is a binary file", "pass text files, folders or .jsonl files")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LlmlabError(f"{path} is not UTF-8 text", "convert it to UTF-8") from None
    if path.suffix.lower() == JSONL:
        return _jsonl_documents(path, text, text_field, id_field)
    return [Document(text, str(path))] if text.strip() else []


def _jsonl_documents(path: Path, text: str, text_field: str, id_field: str | None) -> list[Document]:
    documents = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{line_number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LlmlabError(f"{where} is not valid JSON ({exc.msg})", "fix or remove that line") from None
        if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
            raise LlmlabError(f"{where} has no text field {text_field!r}", "pass the right --text-field")
        record_id = None
        if id_field is not None:
            if id_field not in record or isinstance(record[id_field], dict | list) or record[id_field] is None:
                raise LlmlabError(f"{where} has no id field {id_field!r}", "pass the right --id-field or none")
            record_id = str(record[id_field])
        if record[text_field].strip():
            documents.append(Document(record[text_field], where, record_id))
    return documents
