"""Curation throughput: `llmlab data clean` against datatrove running the same filters on the same data.

The corpus: the default one (the Python standard library's source, ~31 MB, what `data=None` reads, which
Gopher's prose rules reject whole, so there MinHash has nothing to do), or prose: DialogSum's train
dialogues (speaker tags written "Person1:" instead of "#Person1#:", whose two '#' a turn fail Gopher's
symbol-to-word ratio) and tiny Shakespeare in documents of 40 speeches, of which Gopher keeps about half
and MinHash then removes the near copies. It is written first, outside the timing, as two JSONL files
(documents alternating between them), which both sides read: datatrove runs one task per file.

Timed, each from reading its input to its output written (worker start-up included):
- datatrove (0.10): a JSONL reader -> GopherQualityFilter -> GopherRepetitionFilter -> a JSONL writer
  (the survivors) -> MinhashDedupSignature, 2 tasks on 2 workers; MinhashDedupBuckets, 14 tasks
  (one per bucket, as datatrove requires) on 2 workers; MinhashDedupCluster, 1 task; a JSONL reader (the
  survivors) -> MinhashDedupFilter -> a JSONL writer, 2 tasks on 2 workers. MinhashConfig(n_grams 5,
  14 buckets x 8 hashes). datatrove cuts words with spaCy's English tokenizer, as its defaults do. Its
  shingle hash (xxh64 of a str) fails with the installed xxhash 4 ("Strings must be encoded before
  hashing"), so the signature step is given the same hash of the UTF-8 bytes (what xxhash 3 did itself).
- llmlab with the same stages: normalisation off, quality profile prose with Gopher only (c4.enabled
  false: Gopher's quality and repetition rules), language, toxicity, PII, decontamination off, exact dedup
  off (datatrove's MinHash pipeline has none), near dedup at 5-grams, 14 bands x 8 rows; 2 workers.
- llmlab's full default pipeline (every stage as `llmlab data clean` runs it), 2 workers.
MB/s is the UTF-8 size of the documents' text divided by the wall time. The two filter sets are not
identical rule for rule (quality.py lists its differences from datatrove), so the documents each kept are
printed beside the speed.

    .venv/bin/python bench/curate_throughput.py --repeats 3                  # the stdlib, ~2 minutes on 2 cores
    .venv/bin/python bench/curate_throughput.py --corpus prose --repeats 3   # ~2 minutes
    .venv/bin/python bench/curate_throughput.py --quick                      # the first 300 stdlib files
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
os.environ["LLMLAB_DATA"] = str(DATA)  # the full pipeline's decontamination reads the built-in tasks here
# Nothing heavy is imported at the top: datatrove's task processes come from a forkserver that imports this
# module afresh, and llmlab (torch) would add its import time to every datatrove run.
NGRAM, BANDS, ROWS = 5, 14, 8
SAME_STAGES = {"normalize": {"enabled": False},
               "quality": {"profile": "prose", "c4": {"enabled": False}},
               "language": {"enabled": False}, "toxicity": {"enabled": False}, "pii": {"enabled": False},
               "decontaminate": {"enabled": False},
               "dedup": {"exact": False, "near": True, "ngram": NGRAM, "bands": BANDS, "rows": ROWS}}  # fmt: skip


def corpus(name: str, limit: int | None) -> list[str]:
    from llmlab.data.sources import read_documents

    if name == "stdlib":
        return list(read_documents(None))[:limit]
    rows = [json.loads(line) for line in (DATA / "dialogsum" / "train.jsonl").open(encoding="utf-8")]
    for row in rows:  # "#Person1#:" -> "Person1:" (two '#' a turn would fail Gopher's symbol-to-word ratio)
        row["dialogue"] = re.sub(r"#(Person\d+)#", r"\1", row["dialogue"])
    speeches = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").strip().split("\n\n")
    plays = ["\n\n".join(speeches[i : i + 40]) for i in range(0, len(speeches), 40)]
    return ([r["dialogue"] for r in rows] + plays)[:limit]


def write_inputs(texts: list[str], folder: Path) -> None:
    folder.mkdir(parents=True)
    for part in range(2):
        lines = (json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts) if i % 2 == part)
        (folder / f"part-{part}.jsonl").write_text("".join(lines), encoding="utf-8")


def count_lines(folder: Path) -> int:
    return sum(len(p.read_text(encoding="utf-8").splitlines()) for p in sorted(folder.glob("*.jsonl")))


def record_ids(folder: Path, pattern: str = "*.jsonl") -> list:
    """The "id" of every record of a folder's JSONL files, in the order the files are read."""
    return [json.loads(line)["id"] for p in sorted(folder.glob(pattern)) for line in p.open(encoding="utf-8")]


class ReadJsonl:
    """A datatrove reader step: the task's share of a folder's JSONL files, as Documents. (datatrove's own
    JsonlReader and JsonlWriter need orjson, which the project does not install; these use the stdlib json,
    a small share of the time.)"""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        from datatrove.data import Document

        for path in sorted(self.folder.glob("*.jsonl"))[rank::world_size]:
            with path.open(encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    yield Document(text=record["text"], id=record["id"])


class WriteJsonl:
    """A datatrove writer step: each document to the folder's file for this task, passed on."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        self.folder.mkdir(parents=True, exist_ok=True)
        with (self.folder / f"{rank:05d}.jsonl").open("w", encoding="utf-8") as f:
            for doc in data:
                f.write(json.dumps({"id": doc.id, "text": doc.text}) + "\n")
                yield doc


def xxhash64_utf8(text: str) -> int:
    """datatrove 0.10's shingle hash (xxh64 of the shingle's text), encoding first: xxhash 4 refuses a str
    ("Strings must be encoded before hashing"), which xxhash 3 encoded as UTF-8 itself."""
    import xxhash

    return xxhash.xxh64_intdigest(text.encode("utf-8"))


@contextlib.contextmanager
def stderr_to(path: Path):
    """The process's stderr (file descriptor 2, which datatrove's task processes inherit) into a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("w") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_datatrove(inputs: Path, work: Path) -> tuple[float, int, int]:
    """Seconds, documents after the Gopher filters, documents after MinHash dedup (its log: work/log.txt)."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
    )
    from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter

    config = MinhashConfig(n_grams=NGRAM, num_buckets=BANDS, hashes_per_bucket=ROWS)
    logs = work / "logs"
    signature = MinhashDedupSignature(str(work / "sigs"), config)
    signature._hash_func = xxhash64_utf8  # see xxhash64_utf8; the same hash, one encode call added
    signatures = LocalPipelineExecutor(
        [ReadJsonl(inputs), GopherQualityFilter(), GopherRepetitionFilter(), WriteJsonl(work / "filtered"), signature],
        tasks=2, workers=2, logging_dir=str(logs / "1"),
    )  # fmt: skip
    buckets = LocalPipelineExecutor(
        [MinhashDedupBuckets(str(work / "sigs"), str(work / "buckets"), config=config)],
        tasks=BANDS, workers=2, logging_dir=str(logs / "2"),
    )  # fmt: skip
    cluster = LocalPipelineExecutor(
        [MinhashDedupCluster(str(work / "buckets"), str(work / "remove"), config=config)],
        tasks=1, logging_dir=str(logs / "3"),
    )  # fmt: skip
    final = LocalPipelineExecutor(
        [ReadJsonl(work / "filtered"), MinhashDedupFilter(str(work / "remove")), WriteJsonl(work / "out")],
        tasks=2, workers=2, logging_dir=str(logs / "4"),
    )  # fmt: skip
    work.mkdir(parents=True)
    stages = []
    try:
        with stderr_to(work / "log.txt"):
            for executor in (signatures, buckets, cluster, final):  # one after the other, as `depends` runs them
                started = time.perf_counter()
                executor.run()
                stages.append(time.perf_counter() - started)
    except Exception:
        print((work / "log.txt").read_text()[-5000:], file=sys.stderr)
        raise
    names = ("read + Gopher + write + signatures", "buckets", "cluster", "filter + write")
    print("  datatrove stages: " + ", ".join(f"{n} {t:.1f} s" for n, t in zip(names, stages)))
    (work / "kept.json").write_text(json.dumps(record_ids(work / "out")))
    return sum(stages), count_lines(work / "filtered"), count_lines(work / "out")


def run_llmlab(inputs: Path, out: Path, cfg) -> tuple[float, int, int]:
    """Seconds, documents after quality, documents kept (their input ids in out/kept.json)."""
    from llmlab.curate.pipeline import CurateJob, curate

    started = time.perf_counter()
    report = curate(CurateJob(str(inputs), out, cfg, glob="*.jsonl", workers=2))
    seconds = time.perf_counter() - started
    stages = report["stages"]
    position = record_ids(inputs)  # llmlab's document id is the position in its input stream
    (out / "kept.json").write_text(json.dumps([position[i] for i in record_ids(out / "data", "part-*.jsonl")]))
    return seconds, stages["quality"]["docs_out"], stages["boilerplate"]["docs_out"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", choices=("stdlib", "prose"), default="stdlib")
    parser.add_argument("--quick", action="store_true", help="only the first 300 documents")
    parser.add_argument("--no-full", action="store_true", help="skip llmlab's full default pipeline")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each, order alternating; the best counts")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from machine import describe

    from llmlab.curate.config import CurateConfig, config_from_dict

    print(describe())
    texts = corpus(args.corpus, 300 if args.quick else None)
    size = sum(len(t.encode("utf-8")) for t in texts)
    print(f"corpus: {args.corpus}, {len(texts):,} documents, {size / 1e6:.1f} MB of text")
    times: dict[str, list[float]] = {}
    kept: dict[str, tuple[int, int]] = {}
    kept_ids: dict[str, set] = {}
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "input"
        write_inputs(texts, inputs)
        same = config_from_dict(SAME_STAGES)
        runs = [
            ("llmlab, same stages (Gopher + MinHash)", lambda out: run_llmlab(inputs, out, same)),
            ("datatrove, Gopher + MinHash (4 stages)", run_datatrove_on(inputs)),
        ]
        if not args.no_full:
            runs.append(("llmlab, full default pipeline", lambda out: run_llmlab(inputs, out, CurateConfig())))
        for repeat in range(args.repeats):
            for k, (name, fn) in enumerate(runs if repeat % 2 == 0 else runs[::-1]):
                seconds, after_quality, final = fn(Path(tmp) / f"run-{repeat}-{k}")
                times.setdefault(name, []).append(seconds)
                kept[name] = (after_quality, final)
                kept_ids[name] = set(json.loads((Path(tmp) / f"run-{repeat}-{k}" / "kept.json").read_text()))
                print(f"{name}: {seconds:.1f} s, {after_quality:,} after quality, {final:,} kept", flush=True)
    print(f"\n| pipeline (2 workers; {args.corpus}: {size / 1e6:.1f} MB, {len(texts):,} documents) | seconds "
          f"(best of {args.repeats}) | MB/s | documents after quality | documents kept |")  # fmt: skip
    print("|---|---|---|---|---|")
    for name, _ in runs:
        best = min(times[name])
        print(f"| {name} | {best:.1f} | {size / 1e6 / best:.2f} | {kept[name][0]:,} | {kept[name][1]:,} |")
    ours, theirs = kept_ids[runs[0][0]], kept_ids[runs[1][0]]
    print(f"\ndocuments kept by both llmlab (same stages) and datatrove: {len(ours & theirs):,}; by llmlab only: "
          f"{len(ours - theirs):,}; by datatrove only: {len(theirs - ours):,}")  # fmt: skip
    ratio = min(times[runs[1][0]]) / min(times[runs[0][0]])
    print(f"llmlab / datatrove, same stages: {ratio:.2f}x the throughput (the goal: >= 1x)")


def run_datatrove_on(inputs: Path):
    return lambda out: run_datatrove(inputs, out)


if __name__ == "__main__":
    main()
