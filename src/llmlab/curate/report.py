"""What curation removed and changed, stage by stage: nothing leaves without being counted.

Each stage sees the documents the previous one kept: documents and characters in and out, the reasons
for removal with counts and the first few removed documents per reason (by input order, so the same
input gives the same samples), and the edits that kept a document but changed it (C4 line removals, PII
placeholders, boilerplate). Shard reports add up to the run's report, which is how a resumed run ends
with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

STAGES = ("read", "normalize", "quality", "language", "toxicity", "decontaminate", "pii", "exact_dedup",
          "near_dedup", "boilerplate")  # fmt: skip
SAMPLES_PER_REASON = 3
SAMPLE_CHARS = 300


@dataclass
class StageCounts:
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    removed: Counter = field(default_factory=Counter)  # reason -> documents
    edits: Counter = field(default_factory=Counter)  # what changed in kept documents -> count

    def add(self, other: StageCounts) -> None:
        self.docs_in += other.docs_in
        self.docs_out += other.docs_out
        self.chars_in += other.chars_in
        self.chars_out += other.chars_out
        self.removed.update(other.removed)
        self.edits.update(other.edits)


@dataclass
class CurationReport:
    stages: dict[str, StageCounts] = field(default_factory=lambda: {s: StageCounts() for s in STAGES})
    samples: dict[str, list[dict]] = field(default_factory=dict)  # reason -> [{id, text, ...}]
    kinds: Counter = field(default_factory=Counter)  # prose / code, as quality's profile judged
    languages: Counter = field(default_factory=Counter)
    contamination: dict[str, dict[str, int]] = field(default_factory=dict)  # set -> {documents, ngrams}
    flagged: list[int] = field(default_factory=list)  # decontamination with action "flag": kept, listed
    tokens_in: int = 0  # with a tokenizer: tokens read, and tokens of the documents kept
    tokens_out: int = 0

    def sample(self, reason: str, doc_id: int, text: str, **extra) -> None:
        kept = self.samples.setdefault(reason, [])
        if len(kept) < SAMPLES_PER_REASON:
            kept.append({"id": doc_id, "text": text[:SAMPLE_CHARS], **extra})

    def add(self, other: CurationReport) -> None:
        for name, counts in other.stages.items():
            self.stages[name].add(counts)
        for reason, samples in other.samples.items():
            merged = sorted(self.samples.get(reason, []) + samples, key=lambda s: s["id"])
            self.samples[reason] = merged[:SAMPLES_PER_REASON]
        self.kinds.update(other.kinds)
        self.languages.update(other.languages)
        for name, found in other.contamination.items():
            mine = self.contamination.setdefault(name, {"documents": 0, "ngrams": 0})
            mine["documents"] += found["documents"]
            mine["ngrams"] += found["ngrams"]
        self.flagged.extend(other.flagged)
        self.tokens_in += other.tokens_in
        self.tokens_out += other.tokens_out

    def to_dict(self) -> dict:
        stages = {name: {"docs_in": c.docs_in, "docs_out": c.docs_out, "chars_in": c.chars_in,
                         "chars_out": c.chars_out, "removed": dict(sorted(c.removed.items())),
                         "edits": dict(sorted(c.edits.items()))} for name, c in self.stages.items()}  # fmt: skip
        return {"stages": stages, "samples": dict(sorted(self.samples.items())), "kinds": dict(self.kinds),
                "languages": dict(self.languages.most_common()), "contamination": self.contamination,
                "flagged": sorted(self.flagged), "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict) -> CurationReport:
        report = cls()
        for name, c in data["stages"].items():
            report.stages[name] = StageCounts(c["docs_in"], c["docs_out"], c["chars_in"], c["chars_out"],
                                              Counter(c["removed"]), Counter(c["edits"]))  # fmt: skip
        report.samples = data["samples"]
        report.kinds, report.languages = Counter(data["kinds"]), Counter(data["languages"])
        report.contamination, report.flagged = data["contamination"], list(data["flagged"])
        report.tokens_in, report.tokens_out = data["tokens_in"], data["tokens_out"]
        return report


def summary(data: dict) -> str:
    """The readable report (Markdown): the stage table, then removals by reason with a sample each."""
    rows = ["| stage | docs in | docs out | removed | chars in | chars out | edits |", "|---|---|---|---|---|---|---|"]
    for name, c in data["stages"].items():
        edits = ", ".join(f"{k} {v:,}" for k, v in c["edits"].items())
        rows.append(f"| {name} | {c['docs_in']:,} | {c['docs_out']:,} | {c['docs_in'] - c['docs_out']:,} | "
                    f"{c['chars_in']:,} | {c['chars_out']:,} | {edits} |")  # fmt: skip
    lines = ["# Curation report", "", *_totals(data), "", *rows, "", "## Removed, by reason", ""]
    for c in data["stages"].values():
        for reason, count in c["removed"].items():
            lines.append(f"- **{reason}**: {count:,} documents")
            for s in data["samples"].get(reason, [])[:1]:
                lines.append(f"  - e.g. document {s['id']}: `{_one_line(s['text'])}`")
    if data.get("contamination"):
        lines += ["", "## Decontamination", "", "| evaluation set | documents | distinct n-grams |", "|---|---|---|"]
        lines += [f"| {k} | {v['documents']:,} | {v['ngrams']:,} |" for k, v in data["contamination"].items()]
    return "\n".join(lines) + "\n"


def _totals(data: dict) -> list[str]:
    first, last = data["stages"]["read"], data["stages"][STAGES[-1]]
    kept = last["docs_out"] / max(first["docs_in"], 1)
    text = [f"{first['docs_in']:,} documents in, {last['docs_out']:,} out ({kept:.1%} kept); "
            f"{first['chars_in']:,} characters in, {last['chars_out']:,} out."]  # fmt: skip
    if "tokens" in data:
        text.append(
            f"Tokens ({data['tokens']['tokenizer']}): {data['tokens']['in']:,} in, {data['tokens']['out']:,} out."
        )
    return text


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split()).replace("`", "'")
    return flat[:limit] + ("…" if len(flat) > limit else "")
