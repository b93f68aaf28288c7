"""Cleaning before tokenisation: normalised newlines, no empty or exactly duplicated documents."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass
class CleanReport:
    kept: int = 0
    empty: int = 0
    duplicates: int = 0


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def clean_documents(documents: Iterable[str], report: CleanReport | None = None) -> Iterator[str]:
    """Normalise newlines and drop empty and exact-duplicate documents (first copy kept)."""
    report = report if report is not None else CleanReport()
    seen: set[bytes] = set()
    for doc in documents:
        doc = normalize_newlines(doc)
        if not doc.strip():
            report.empty += 1
            continue
        digest = hashlib.blake2b(doc.encode("utf-8"), digest_size=16).digest()
        if digest in seen:
            report.duplicates += 1
            continue
        seen.add(digest)
        report.kept += 1
        yield doc
