"""The index folder: safetensors and JSON only, written atomically, checked when read.

    index.json          format, embedder (source, weights fingerprint, dims, context), chunk settings,
                        document and chunk counts, the vector index's kind and settings, sha256 of each file
    vectors.safetensors "vectors": (chunks, dims) float32 unit vectors, row i is line i of chunks.jsonl
    chunks.jsonl        one chunk a line: text, source (and id), token span, character span
    hnsw.safetensors    "hnsw": faiss's serialised HNSW graph as uint8 (kind hnsw only)

Nothing is pickled, so opening an index runs no code from it. A write fills a temporary folder beside
the index and renames it into place (the old folder aside first, back if the rename fails), so a build
or an add that fails, or is killed, leaves the previous index whole.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from llmlab.checkpoint.folder import swap_folder
from llmlab.errors import LlmlabError
from llmlab.retrieval.chunking import Chunk

FORMAT = "llmlab-index-1"
META, VECTORS, CHUNKS, HNSW = "index.json", "vectors.safetensors", "chunks.jsonl", "hnsw.safetensors"


@dataclass
class IndexData:
    """An index folder's contents in memory."""

    meta: dict[str, Any]
    vectors: np.ndarray  # (chunks, dims) float32
    chunks: list[Chunk]
    hnsw: np.ndarray | None  # faiss's bytes, kind hnsw only


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_index(path: str | Path) -> bool:
    return (Path(path) / META).is_file()


def require_writable(out: str | Path, overwrite: bool) -> Path:
    """A new index goes where nothing is, or over an index with --overwrite; never over other files."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise LlmlabError(f"{out} already exists", "pass --overwrite to replace it, or choose another --out")
    if out.exists() and not (out.is_dir() and (is_index(out) or not any(out.iterdir()))):
        raise LlmlabError(f"{out} is not an index", "choose another --out (--overwrite replaces indexes only)")
    return out


def write_index(out: str | Path, data: IndexData) -> Path:
    """Write the folder into a temporary one beside `out`, then swap it in; any failure removes the
    temporary folder and leaves `out` as it was (a write error is one line)."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    except OSError as exc:
        raise _write_error(out, exc) from None
    try:
        _write_files(tmp, data)
        swap_folder(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError | SafetensorError):
            raise _write_error(out, exc) from None
        raise
    return out


def _write_files(tmp: Path, data: IndexData) -> None:
    save_file({"vectors": torch.from_numpy(np.ascontiguousarray(data.vectors, dtype=np.float32))}, tmp / VECTORS)
    with open(tmp / CHUNKS, "w", encoding="utf-8") as f:
        for chunk in data.chunks:
            f.write(json.dumps(chunk.to_dict(), ensure_ascii=False) + "\n")
    files = [VECTORS, CHUNKS]
    if data.hnsw is not None:
        save_file({"hnsw": torch.from_numpy(np.ascontiguousarray(data.hnsw, dtype=np.uint8))}, tmp / HNSW)
        files.append(HNSW)
    meta = {**data.meta, "format": FORMAT, "files": {name: _sha256(tmp / name) for name in files}}
    (tmp / META).write_text(json.dumps(meta, indent=2) + "\n")


def _write_error(out: Path, exc: BaseException) -> LlmlabError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
    reason = reason or type(exc).__name__
    return LlmlabError(f"cannot write index {out}: {reason}", "free space on the disk or choose another --out")


def read_meta(path: str | Path) -> dict[str, Any]:
    """index.json, after checking the folder is an index of this format."""
    path = Path(path)
    if not path.is_dir() or not is_index(path):
        raise LlmlabError(f"{path} is not an index (no {META})", "build one with llmlab index build")
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise LlmlabError(f"cannot read {path / META}: {exc}", "rebuild the index") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise LlmlabError(f"{path / META} is not an {FORMAT} index", "rebuild it with this llmlab")
    return meta


def read_index(path: str | Path) -> IndexData:
    """The whole folder, every file checked against the sha256 index.json records."""
    path = Path(path)
    meta = read_meta(path)
    for name, digest in meta.get("files", {}).items():
        if not (path / name).is_file():
            raise LlmlabError(f"index {path} is missing {name}", "rebuild the index")
        if _sha256(path / name) != digest:
            raise LlmlabError(f"{path / name} does not match its recorded checksum", "rebuild the index")
    vectors = load_file(path / VECTORS)["vectors"].numpy()
    with open(path / CHUNKS, encoding="utf-8") as f:
        chunks = [Chunk.from_dict(json.loads(line)) for line in f if line.strip()]
    if len(chunks) != len(vectors):
        raise LlmlabError(f"index {path} has {len(chunks)} chunks but {len(vectors)} vectors", "rebuild the index")
    hnsw = load_file(path / HNSW)["hnsw"].numpy() if meta.get("kind") == "hnsw" else None
    return IndexData(meta, vectors, chunks, hnsw)
