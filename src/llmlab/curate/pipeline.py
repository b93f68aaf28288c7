"""`llmlab data clean`: stream documents through the stages, in shards, on every core, resumably.

The input is read once, as a stream, in shards of `shard_docs` documents. Each shard is cut into slices
judged in parallel by worker processes (the per-document stages, judge.py), then deduplicated in input
order here (dedup.py) and written: `data/part-NNNNN.jsonl`, its dedup keys and its report, the report
last, so a shard is finished exactly when its report exists. An interrupted run resumes after its last
finished shard with the same state; the same input and config give the same output, whatever the number
of workers. The folder ends with `curation.json` (the report, and the mark of a finished run),
`report.md`, `clusters.jsonl` (the duplicate groups) and `config.yaml` (what ran).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from llmlab.curate.config import CurateConfig, config_as_dict
from llmlab.curate.decontaminate import EvalIndex, index_for
from llmlab.curate.dedup import DedupState, ShardKeys
from llmlab.curate.judge import Judge, Judged, token_counter
from llmlab.curate.report import STAGES, CurationReport, summary
from llmlab.data.sources import CURATED_MARK, SourceReport, read_documents
from llmlab.errors import LlmlabError

FINISHED = CURATED_MARK
RUN = "run.json"
WORK = "work"  # per-shard keys, reports and duplicate lists while the run is going


@dataclass
class CurateJob:
    """What to curate and where: the input as `pretrain --data` reads it."""

    data: str | None  # a file, folder, JSONL/Parquet, or None for the default corpus
    out: Path
    cfg: CurateConfig
    glob: str = "**/*"
    text_field: str = "text"
    shard_docs: int = 1000
    workers: int = 2
    overwrite: bool = False
    tokenizer: str | None = None  # count tokens in and out with this checkpoint's (or tokenizer.json's) tokenizer

    def identity(self) -> dict:
        """What decides the output; a folder written for another identity is not resumed."""
        data = self.data if self.data is None or str(self.data).startswith("hf:") else str(Path(self.data).resolve())
        return {"data": data, "glob": self.glob, "text_field": self.text_field, "shard_docs": self.shard_docs,
                "tokenizer": self.tokenizer and str(Path(self.tokenizer).resolve()),
                "config": config_as_dict(self.cfg)}  # fmt: skip


def curate(job: CurateJob, progress: Callable[[str], None] | None = None) -> dict:
    """Run (or resume, or return the finished report of) a curation; the report as a dict."""
    require_packages(job.cfg)
    # evaluation sets are read before the folder is made: a bad one leaves nothing behind
    index = index_for(job.cfg.decontaminate) if job.cfg.decontaminate.enabled else None
    done = prepare_output(job)
    if done is None:
        return json.loads((job.out / FINISHED).read_text())
    state, report = DedupState(job.cfg), CurationReport()
    if job.tokenizer and job.cfg.boilerplate.enabled:
        state.count_tokens = token_counter(job.tokenizer)  # boilerplate edits text after the workers counted
    for shard in range(done):
        state.restore(ShardKeys.load(_work(job, shard, "keys.safetensors")))
        report.add(CurationReport.from_dict(json.loads(_work(job, shard, "report.json").read_text())))
    sources = SourceReport()
    stream = enumerate(read_documents(job.data, job.glob, job.text_field, sources))
    shards = _shards(islice(stream, done * job.shard_docs, None), job.shard_docs)
    started, read_chars = time.perf_counter(), 0
    for number, judged in enumerate(_judge_all(shards, job, index), start=done):
        shard_report = _write_shard(job, number, judged, state)
        report.add(shard_report)
        read_chars += shard_report.stages["read"].chars_in
        if progress:
            progress(_progress_line(report, read_chars, time.perf_counter() - started))
    return _finish(job, report, sources, index)


def require_packages(cfg: CurateConfig) -> None:
    """Each enabled stage's package, checked before any work: one line naming the extra, not a traceback."""
    import importlib.util

    needed = {"yaml": True, "ftfy": cfg.normalize.enabled and cfg.normalize.fix_unicode,
              "lingua": cfg.language.enabled, "profanity_check": cfg.toxicity.enabled}  # fmt: skip
    for module, wanted in needed.items():
        if wanted and importlib.util.find_spec(module) is None:
            raise LlmlabError(f"the {module} package is missing", "pip install 'llmlab[curate]'")


def curated_tokens(folder: str | Path) -> int:
    """The tokens a finished curation kept (counted with the tokenizer it was run with)."""
    path = Path(folder) / FINISHED
    if not path.is_file():
        raise LlmlabError(f"{folder} is not a finished curation", "run llmlab data clean --out there first")
    tokens = json.loads(path.read_text()).get("tokens")
    if not tokens:
        raise LlmlabError(f"{folder} was curated without counting tokens", "rerun llmlab data clean with --tokenizer")
    return int(tokens["out"])


def prepare_output(job: CurateJob) -> int | None:
    """Finished shards to resume after (0 for a fresh run), or None when this exact run already finished."""
    out, identity = job.out, job.identity()
    if job.data is not None and not str(job.data).startswith("hf:"):
        source = Path(job.data).resolve()
        if source.is_dir() and (out.resolve() == source or source in out.resolve().parents):
            raise LlmlabError(f"output folder {out} is inside the input {job.data}", "write the output elsewhere")
    if out.exists() and job.overwrite:
        shutil.rmtree(out)
    if out.exists() and any(out.iterdir()):
        run = out / RUN
        if not run.exists():
            raise LlmlabError(f"{out} exists and is not a curation folder", "choose another --out or --overwrite")
        if json.loads(run.read_text()) != json.loads(json.dumps(identity)):
            raise LlmlabError(f"{out} holds a curation of other input or settings",
                              "use another --out, or --overwrite to start again")  # fmt: skip
        if (out / FINISHED).exists():
            return None
        return _finished_shards(job)
    (out / WORK).mkdir(parents=True, exist_ok=True)
    (out / "data").mkdir(exist_ok=True)
    _write_atomic(out / RUN, json.dumps(identity, indent=1))
    return 0


def _finished_shards(job: CurateJob) -> int:
    done = 0
    while _work(job, done, "report.json").exists():
        done += 1
    for stale in (job.out / "data").glob("part-*.jsonl.tmp"):
        stale.unlink()
    return done


def _work(job: CurateJob, shard: int, what: str) -> Path:
    return job.out / WORK / f"part-{shard:05d}.{what}"


def _shards(stream: Iterable[tuple[int, str]], size: int) -> Iterator[list[tuple[int, str]]]:
    iterator = iter(stream)
    while shard := list(islice(iterator, size)):
        yield shard


def _judge_all(shards: Iterator[list], job: CurateJob, index: EvalIndex | None) -> Iterator[list[Judged]]:
    """Each shard judged, in order; with workers, its slices run in parallel and the next shard is already
    being judged while this one is deduplicated and written (at most two shards in memory)."""
    if job.workers <= 1:
        judge = Judge(job.cfg, index, job.tokenizer)
        yield from (judge(shard) for shard in shards)
        return
    with ProcessPoolExecutor(job.workers, initializer=_start_worker, initargs=(job.cfg, index, job.tokenizer)) as pool:
        pending: list[list[Future]] = []
        for shard in shards:
            step = -(-len(shard) // job.workers)
            pending.append([pool.submit(_judge_slice, shard[i : i + step]) for i in range(0, len(shard), step)])
            if len(pending) == 2:
                yield [doc for future in pending.pop(0) for doc in future.result()]
        for futures in pending:
            yield [doc for future in futures for doc in future.result()]


_JUDGE: Judge | None = None


def _start_worker(cfg: CurateConfig, index: EvalIndex | None, tokenizer: str | None) -> None:
    global _JUDGE
    _JUDGE = Judge(cfg, index, tokenizer)


def _judge_slice(docs: list[tuple[int, str]]) -> list[Judged]:
    assert _JUDGE is not None
    return _JUDGE(docs)


def _write_shard(job: CurateJob, number: int, judged: list[Judged], state: DedupState) -> CurationReport:
    report, keys, duplicates, lines = CurationReport(), ShardKeys(), [], []
    for doc in judged:
        _dedup(doc, state, keys, duplicates)
        _count(doc, report)
        if not doc.stage:
            flags = sorted(doc.contamination) if doc.contamination else None
            lines.append(json.dumps({"id": doc.id, "text": doc.text, **({"flags": flags} if flags else {})}))
    _write_atomic(job.out / "data" / f"part-{number:05d}.jsonl", "".join(line + "\n" for line in lines))
    _write_atomic(_work(job, number, "duplicates.jsonl"), "".join(json.dumps(d) + "\n" for d in duplicates))
    keys.save(_work(job, number, "keys.safetensors.tmp"), job.cfg.dedup.bands * job.cfg.dedup.rows)
    os.replace(_work(job, number, "keys.safetensors.tmp"), _work(job, number, "keys.safetensors"))
    _write_atomic(_work(job, number, "report.json"), json.dumps(report.to_dict()))
    return report


def _dedup(doc: Judged, state: DedupState, keys: ShardKeys, duplicates: list[dict]) -> None:
    """The main-process stages: exact, near, boilerplate (each appends its characters when passed)."""
    if doc.stage:
        return
    found = state.duplicate_of(doc.digest, doc.signature)
    if found:
        kind, original, similarity = found
        if kind == "near":
            doc.passed(doc.text)  # it got through the exact stage
        doc.drop(f"{kind}_dedup", f"{kind}_dedup.duplicate")
        duplicates.append({"id": doc.id, "duplicate_of": original, "kind": kind,
                           "similarity": round(similarity, 4), "text": doc.text[:200]})  # fmt: skip
        return
    doc.passed(doc.text)
    doc.passed(doc.text)
    state.remember(doc.id, doc.digest, doc.signature, keys)
    if state.cfg.boilerplate.enabled:
        text, removed = state.strip_boilerplate(doc.text, keys)
        if removed:
            doc.edits[f"boilerplate:{state.cfg.boilerplate.unit}s"] = removed
        if not text.strip():
            doc.drop("boilerplate", "boilerplate.empty")
            return
        doc.text = text
        if removed and doc.tokens and state.count_tokens:
            doc.tokens[-1] = state.count_tokens(text)
    doc.passed(doc.text)


def _count(doc: Judged, report: CurationReport) -> None:
    """Add a document's path through the stages to the shard's report."""
    for k, name in enumerate(STAGES):
        counts = report.stages[name]
        if k >= len(doc.chars) + (1 if doc.stage == name else 0):
            break
        counts.docs_in += 1
        counts.chars_in += doc.chars[max(k - 1, 0)]
        if k < len(doc.chars):
            counts.docs_out += 1
            counts.chars_out += doc.chars[k]
        else:
            counts.removed[doc.reason] += 1
            report.sample(doc.reason, doc.id, doc.text, **({"matches": doc.contamination} if doc.contamination else {}))
    for key, value in doc.edits.items():
        stage, what = key.split(":", 1)
        report.stages[stage].edits[what] += value
    if doc.tokens:
        report.tokens_in += doc.tokens[0]
        report.tokens_out += doc.tokens[-1] if not doc.stage else 0
    if doc.kind:
        report.kinds[doc.kind] += 1
    if doc.language:
        report.languages[doc.language] += 1
    for name, ngrams in doc.contamination.items():
        found = report.contamination.setdefault(name, {"documents": 0, "ngrams": 0})
        found["documents"] += 1
        found["ngrams"] += ngrams
    if doc.contamination and not doc.stage:
        report.flagged.append(doc.id)


def _finish(job: CurateJob, report: CurationReport, sources: SourceReport, index: EvalIndex | None) -> dict:
    data = report.to_dict()
    if job.tokenizer:
        data["tokens"] = {"tokenizer": job.tokenizer, "in": report.tokens_in, "out": report.tokens_out}
    data["sources"] = {"files_read": sources.files_read, "skipped_binary": sources.skipped_binary,
                       "skipped_undecodable": sources.skipped_undecodable,
                       "skipped_paths": sources.skipped_paths[:100]}  # fmt: skip
    if index is not None:
        data["decontamination"] = {"ngram": index.ngram, "checked_texts": index.checked,
                                   "too_short_texts": index.too_short, "unavailable": index.unavailable}  # fmt: skip
    _write_clusters(job)
    _write_config(job)
    _write_atomic(job.out / "report.md", summary(data))
    shutil.rmtree(job.out / WORK, ignore_errors=True)
    _write_atomic(job.out / FINISHED, json.dumps(data, indent=1))
    return data


def _write_clusters(job: CurateJob) -> None:
    """Duplicate groups, one line each: the kept document's id and every copy removed in its favour."""
    clusters: dict[int, list[dict]] = {}
    for path in sorted((job.out / WORK).glob("part-*.duplicates.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            clusters.setdefault(record.pop("duplicate_of"), []).append(record)
    lines = [json.dumps({"kept": kept, "members": members}) for kept, members in sorted(clusters.items())]
    _write_atomic(job.out / "clusters.jsonl", "".join(line + "\n" for line in lines))


def _write_config(job: CurateJob) -> None:
    import yaml

    _write_atomic(job.out / "config.yaml", yaml.safe_dump(config_as_dict(job.cfg), sort_keys=False))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _progress_line(report: CurationReport, read_chars: int, seconds: float) -> str:
    read, kept = report.stages["read"].docs_in, report.stages[STAGES[-1]].docs_out
    rate = read_chars / 1e6 / max(seconds, 1e-9)
    return f"curate: {read:,} documents read, {kept:,} kept ({kept / max(read, 1):.1%}), {rate:.2f} MB/s"
