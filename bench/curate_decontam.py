"""Decontamination, measured: evaluation text planted in a training corpus is found; real overlaps listed.

1. Planted: every DialogSum test dialogue (500, what `llmlab evaluate --task dialogsum` scores) put into a
   training corpus of DialogSum's train dialogues (12,460) and tiny Shakespeare (documents of whole
   speeches, >= 150 words), in five variants, each its own document at a random place: the whole dialogue;
   a 30-word excerpt (30 whitespace-separated tokens from a random start) alone; the same excerpt inside a
   Shakespeare document (between two speeches); the whole dialogue with casing changed word by word
   (upper, lower, title) and sentence punctuation (. , ! ? ; : before a space) replaced or removed; and
   that, with apostrophes dropped too ("don't" -> "dont", which changes the words themselves).
2. `curate()` with decontamination against the built-in tasks (sentiment, dialogsum, arithmetic: every
   evaluated example's text, 13-grams of lower-cased words), action `flag` so every document stays and
   carries its flags; every other stage off (normalisation on), dedup off (the variants are near copies
   of each other), 2 workers. Counted: planted documents flagged for dialogsum, per variant; any miss is
   listed with the reason (its 13-grams against the index).
3. The unplanted documents flagged: DialogSum train dialogues that share a 13-gram with the test set (a
   finding about the data set: how many, how many 13-grams each, and the shared n-grams themselves, so a
   reader can tell leaks from stock phrases).
4. The default corpus (the Python standard library, ~31 MB) against the same tasks, action flag, the same
   stages: documents and distinct evaluation n-grams per task, with examples.

    .venv/bin/python bench/curate_decontam.py            # ~30 s on 2 cores
    .venv/bin/python bench/curate_decontam.py --quick    # 100 test dialogues, 3,000 train, no stdlib part
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

DATA = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
os.environ["LLMLAB_DATA"] = str(DATA)  # the built-in tasks read their data from here (worker processes too)

from llmlab.curate.config import config_from_dict  # noqa: E402
from llmlab.curate.decontaminate import task_texts  # noqa: E402
from llmlab.curate.pipeline import CurateJob, curate  # noqa: E402
from llmlab.curate.shingles import words  # noqa: E402
from llmlab.data.sources import default_corpus_dir  # noqa: E402

NGRAM = 13
ONLY_DECONTAMINATION = {"quality": {"enabled": False}, "language": {"enabled": False},
                        "toxicity": {"enabled": False}, "pii": {"enabled": False},
                        "dedup": {"exact": False, "near": False},
                        "decontaminate": {"action": "flag", "ngram": NGRAM}}  # fmt: skip
VARIANTS = ["whole dialogue", "30-word excerpt, alone", "30-word excerpt inside a Shakespeare document",
            "recased + repunctuated", "recased + repunctuated + apostrophes dropped"]  # fmt: skip
SENTENCE_PUNCTUATION = re.compile(r"[.,!?;:](?=\s|$)")


def shakespeare_documents(min_words: int = 150) -> list[str]:
    speeches = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").strip().split("\n\n")
    docs, current, count = [], [], 0
    for speech in speeches:
        current.append(speech)
        count += len(speech.split())
        if count >= min_words:
            docs.append("\n\n".join(current))
            current, count = [], 0
    return docs


def dialogues(split: str, limit: int | None = None) -> list[str]:
    rows = [json.loads(line) for line in (DATA / "dialogsum" / f"{split}.jsonl").open(encoding="utf-8")]
    return [r["dialogue"] for r in rows[:limit]]


def excerpt(rng: random.Random, text: str, length: int = 30) -> str:
    tokens = text.split()
    start = rng.randrange(max(1, len(tokens) - length + 1))
    return " ".join(tokens[start : start + length])


def recase(rng: random.Random, text: str, drop_apostrophes: bool) -> str:
    styles = (str.upper, str.lower, str.title)
    text = "".join(rng.choice(styles)(t) if not t.isspace() else t for t in re.split(r"(\s+)", text))
    text = SENTENCE_PUNCTUATION.sub(lambda _: rng.choice([".", ",", "!", "?", ";", " -", ""]), text)
    return text.replace("'", "").replace("\u2019", "") if drop_apostrophes else text


def planted_corpus(tests: list[str], train: list[str], shakespeare: list[str], seed: int):
    """The corpus (shuffled) and, per document position, its origin: (variant, test number) or (source, number)."""
    rng = random.Random(seed)
    docs = [(t, ("train", i)) for i, t in enumerate(train)] + [
        (t, ("shakespeare", i)) for i, t in enumerate(shakespeare)
    ]
    for i, test in enumerate(tests):
        host = rng.choice(shakespeare).split("\n\n")
        cut = rng.randrange(1, len(host)) if len(host) > 1 else 1
        variants = [test, excerpt(rng, test), "\n\n".join(host[:cut] + [excerpt(rng, test)] + host[cut:]),
                    recase(rng, test, False), recase(rng, test, True)]  # fmt: skip
        docs += [(text, (name, i)) for name, text in zip(VARIANTS, variants)]
    rng.shuffle(docs)
    return [d for d, _ in docs], [o for _, o in docs]


def run(data: str | None, out: Path, workers: int) -> tuple[dict, dict[int, list[str]], float]:
    """The report, the flags of every flagged document (by id) and the seconds the run took."""
    cfg = config_from_dict(ONLY_DECONTAMINATION)
    started = time.perf_counter()
    report = curate(CurateJob(data, out, cfg, workers=workers, overwrite=True))
    seconds = time.perf_counter() - started
    flags = {}
    for part in sorted((out / "data").glob("part-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "flags" in record:
                flags[record["id"]] = record["flags"]
    return report, flags, seconds


def grams(text: str) -> list[tuple[str, ...]]:
    w = words(text)
    return [tuple(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 test dialogues, 3,000 train, no stdlib part")
    parser.add_argument("--no-stdlib", action="store_true", help="skip the default corpus (part 4)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(describe())
    tests = dialogues("test", 100 if args.quick else None)
    train = dialogues("train", 3000 if args.quick else None)
    docs, origins = planted_corpus(tests, train, shakespeare_documents(), args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs), encoding="utf-8")
        report, flags, seconds = run(str(corpus), Path(tmp) / "planted", args.workers)
        print(f"planted corpus: {len(docs):,} documents, {corpus.stat().st_size / 1e6:.1f} MB; curate {seconds:.1f} s")
        print_planted(docs, origins, flags, report, len(tests))
        print_train_overlap(docs, origins, flags, train)
        if not (args.quick or args.no_stdlib):
            report, flags, seconds = run(None, Path(tmp) / "stdlib", args.workers)
            print_stdlib(report, flags, seconds, Path(tmp) / "stdlib")


def print_planted(docs: list[str], origins: list, flags: dict, report: dict, planted: int) -> None:
    index = {g for t in task_texts("dialogsum") for g in grams(t)}
    print(f"\n| planted variant (each of {planted} test dialogues) | flagged for dialogsum | missed |")
    print("|---|---|---|")
    misses = []
    for variant in VARIANTS:
        ids = [i for i, (kind, _) in enumerate(origins) if kind == variant]
        found = [i for i in ids if "dialogsum" in flags.get(i, [])]
        misses += [(variant, i) for i in ids if i not in found]
        print(f"| {variant} | {len(found)}/{len(ids)} | {len(ids) - len(found)} |")
    for variant, i in misses:
        shared = sum(g in index for g in grams(docs[i]))
        print(f"missed ({variant}), test dialogue {origins[i][1]}: {len(words(docs[i]))} words, {shared} 13-grams "
              f"in the evaluation index: {' '.join(docs[i].split())[:100]!r}")  # fmt: skip
    print(f"decontamination index: texts checked {report['decontamination']['checked_texts']}, "
          f"too short for a 13-gram {report['decontamination']['too_short_texts']}")  # fmt: skip


def print_train_overlap(docs: list[str], origins: list, flags: dict, train: list[str]) -> None:
    """The unplanted documents flagged, and what they share with the evaluation sets."""
    unplanted = Counter((origins[i][0], task) for i, tasks in flags.items() for task in tasks
                        if origins[i][0] in ("train", "shakespeare"))  # fmt: skip
    print("\n| unplanted documents flagged | sentiment | dialogsum | arithmetic |")
    print("|---|---|---|---|")
    for source, total in (("train", len(train)), ("shakespeare", None)):
        total = total or sum(1 for kind, _ in origins if kind == source)
        cells = " | ".join(f"{unplanted[(source, t)]:,}" for t in ("sentiment", "dialogsum", "arithmetic"))
        print(f"| {'DialogSum train' if source == 'train' else 'Shakespeare'} ({total:,} documents) | {cells} |")
    test_rows = [json.loads(line) for line in (DATA / "dialogsum" / "test.jsonl").open(encoding="utf-8")]
    owner: dict[tuple[str, ...], set[str]] = {}
    for row in test_rows:
        for field in ("dialogue", "summary1", "summary2", "summary3"):
            for g in grams(row[field]):
                owner.setdefault(g, set()).add(f"{row['fname']}.{field}")
    flagged_train = sorted(i for i, tasks in flags.items() if origins[i][0] == "train" and "dialogsum" in tasks)
    found, ngram_docs = [], Counter()
    for i in flagged_train:
        mine = set(grams(docs[i]))
        shared = sorted(g for g in mine if g in owner)
        closest = Counter(t.split(".")[0] for g in shared for t in owner[g]).most_common(1)[0][0]
        found.append((len(shared) / len(mine), len(shared), i, closest, shared))
        ngram_docs.update(shared)
    found.sort(reverse=True)
    print(f"\nDialogSum train dialogues sharing a 13-gram with dialogsum's test set: {len(found)} of {len(train):,}")
    print(
        "\n| share of the train dialogue's 13-grams found in the test set | train dialogues | distinct test dialogues |"
    )
    print("|---|---|---|")
    for label, low, high in (("50% or more (a copy)", 0.5, 2), ("10% to 50%", 0.1, 0.5), ("under 10%", 0, 0.1)):
        rows = [f for f in found if low <= f[0] < high]
        print(f"| {label} | {len(rows)} | {len({f[3] for f in rows})} |")
    leaked = {f[3] for f in found if f[0] >= 0.1}
    print(f"\ntest dialogues with a train dialogue sharing 10% or more of its 13-grams: {len(leaked)} of 500")
    print("\nthe shared 13-grams found in the most train dialogues:")
    for g, n in ngram_docs.most_common(4):
        print(f"  {n} train dialogues: {' '.join(g)!r} (in {', '.join(sorted(owner[g])[:3])})")
    for label, (coverage, n, i, closest, shared) in (("most", found[0]), ("least", found[-1])):
        print(f"example ({label} shared): train dialogue {origins[i][1]} ({n} 13-grams, {coverage:.1%} of its own, "
              f"most with {closest}), e.g. {' '.join(shared[len(shared) // 2])!r}")  # fmt: skip


def print_stdlib(report: dict, flags: dict, seconds: float, out: Path) -> None:
    read = report["stages"]["read"]
    print(f"\ndefault corpus (Python stdlib): {read['docs_in']:,} documents, {read['chars_in'] / 1e6:.1f} M "
          f"characters; curate (decontamination only, flag) {seconds:.1f} s")  # fmt: skip
    print("\n| evaluation set | texts checked | documents flagged | distinct evaluation 13-grams found |")
    print("|---|---|---|---|")
    checked = report["decontamination"]["checked_texts"]
    for task in ("sentiment", "dialogsum", "arithmetic"):
        found = report["contamination"].get(task, {"documents": 0, "ngrams": 0})
        print(f"| {task} | {checked.get(task, 0):,} | {found['documents']:,} | {found['ngrams']:,} |")
    texts = {task: {g for t in task_texts(task) for g in grams(t)} for task in ("sentiment", "dialogsum", "arithmetic")}
    records = {}
    for part in sorted((out / "data").glob("part-*.jsonl")):
        for line in part.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if record["id"] in flags:
                records[record["id"]] = record["text"]
    paths = stdlib_paths()
    for doc_id, tasks in sorted(flags.items()):
        for task in tasks:
            shared = [g for g in grams(records[doc_id]) if g in texts[task]]
            first = " ".join(shared[0]) if shared else "?"
            print(f"{paths[doc_id]} ({task}): {len(set(shared))} shared 13-grams, e.g. {first!r}")


def stdlib_paths() -> list[str]:
    """The default corpus's files in the order `read_documents(None)` reads them (its document ids)."""
    root = default_corpus_dir()
    paths = []
    for path in sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts):
        raw = path.read_bytes()
        if b"\x00" in raw[:8192]:
            continue
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        paths.append(str(path.relative_to(root)))
    return paths


if __name__ == "__main__":
    main()
