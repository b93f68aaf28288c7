"""Near-duplicate detection, measured: planted copies of known kinds in real text, through `curate()`.

1. Base documents: tiny Shakespeare cut into documents of whole speeches (at least --shakespeare-words
   words each) and DialogSum's train dialogues. DialogSum train has exact and near copies of its own, so
   the base set is cleaned first by an exact set-similarity join (prefix filtering over 5-gram shingles,
   then the true Jaccard of every candidate pair): a document whose true 5-gram Jaccard with an earlier
   kept one reaches --clean-below (0.3) is left out. No two base documents are then near duplicates at
   any threshold measured here, so every base document flagged is a false positive.
2. Planted copies, --per-kind of each kind, each of a different base document, placed at a random later
   position in the stream (the stream's order is shuffled): exact copies; word edits at 2/5/10/20% of the
   words (each edit a substitution by a corpus word, a deletion or an insertion, equally likely); one
   block (dialogue turn or speech) moved elsewhere; all blocks shuffled; a header and footer of navigation
   and licence text (three sizes: 13, 41 and 117 words); truncation to the first 80% or 50% of the words.
3. The true 5-gram Jaccard of every planted pair (the shingles MinHash estimates: lower-cased `\\w+`
   words, as `llmlab.curate.shingles`) shows which kinds are past the threshold by construction.
4. `curate()` with every per-document stage off (quality, language, toxicity, PII, decontamination;
   normalisation on, as by default), 2 workers: once with dedup as configured by default (exact + near,
   5-gram shingles, 14 bands x 8 rows, threshold 0.7), once with exact hashing alone (dedup.near false),
   at MinHash seeds 2 to --minhash-seeds (8), and, unless --no-sweep, at thresholds 0.5 to 0.9 (same
   bands). The duplicate groups come from the run's clusters.jsonl; a flag is correct when the flagged
   document is a planted copy and the kept one is its source. "Expected recall" is an ideal MinHash's.

    .venv/bin/python bench/curate_dedup.py            # ~1 minute on 2 cores (with the sweep)
    .venv/bin/python bench/curate_dedup.py --quick    # 3,000 dialogues, 40 copies per kind
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.curate.config import config_from_dict  # noqa: E402
from llmlab.curate.pipeline import CurateJob, curate  # noqa: E402
from llmlab.curate.shingles import ngram_hashes, word_hashes  # noqa: E402

DATA = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
NGRAM, BANDS, ROWS, THRESHOLD = 5, 14, 8, 0.7  # the defaults the main run uses (checked against the config)
ONLY_DEDUP = {"quality": {"enabled": False}, "language": {"enabled": False}, "toxicity": {"enabled": False},
              "pii": {"enabled": False}, "decontaminate": {"enabled": False}}  # fmt: skip
HEADER = {
    "small": "Home | Library | Search | Sign in",
    "medium": "Home | Library | Browse by title | Browse by author | Search | Help | Sign in | Register",
    "large": "Home | Library | Browse by title | Browse by author | Collections | Search | Help | Sign in | "
    "Register\nYou are reading the archived edition of this page. Some links may point to older versions.",
}
FOOTER = {
    "small": "Copyright 2024 Example Text Archive. All rights reserved.",
    "medium": "Copyright 2024 Example Text Archive. All rights reserved. This text is made available for "
    "personal study only and may not be copied, redistributed or sold without written permission.",
    "large": "Copyright 2024 Example Text Archive. This text is released under the Creative Commons "
    "Attribution-ShareAlike 4.0 licence: you may copy and redistribute it in any medium or format and "
    "adapt it for any purpose, provided you give appropriate credit, link to the licence and indicate if "
    "changes were made, and distribute your contributions under the same licence.\nWe use cookies to "
    "understand how visitors use this site. By continuing to browse you agree to our use of cookies. "
    "Privacy policy | Terms of use | Accessibility | Contact us",
}
KINDS = ["exact", "edit 2%", "edit 5%", "edit 10%", "edit 20%", "move one block", "shuffle blocks",
         "boilerplate small", "boilerplate medium", "boilerplate large", "truncate 80%", "truncate 50%"]  # fmt: skip


def shakespeare_documents(min_words: int) -> list[str]:
    """Consecutive speeches (blank-line separated) joined until a document has at least `min_words` words."""
    speeches = (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8").strip().split("\n\n")
    docs, current, words = [], [], 0
    for speech in speeches:
        current.append(speech)
        words += len(speech.split())
        if words >= min_words:
            docs.append("\n\n".join(current))
            current, words = [], 0
    return docs


def dialogsum_documents(limit: int | None) -> list[str]:
    rows = [json.loads(line) for line in (DATA / "dialogsum" / "train.jsonl").open(encoding="utf-8")]
    return [r["dialogue"] for r in rows[:limit]]


def shingles(text: str) -> np.ndarray:
    return np.unique(ngram_hashes(word_hashes(text), NGRAM))


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    common = len(np.intersect1d(a, b, assume_unique=True))
    return common / (len(a) + len(b) - common) if len(a) + len(b) else 1.0


def clean_base(docs: list[str], below: float) -> tuple[list[str], list[np.ndarray], Counter]:
    """The documents with no earlier kept one at true Jaccard >= `below` (exact set-similarity join).

    Prefix filtering (Chaudhuri et al. 2006): with shingles ordered rarest first, two sets of Jaccard >= t
    share a shingle among the first |A| - ceil(t |A|) + 1 of each, so only documents sharing a prefix
    shingle are compared, and each candidate's true Jaccard decides."""
    sets = [shingles(d) for d in docs]
    frequency = Counter(h for s in sets for h in s.tolist())
    index: dict[int, list[int]] = {}
    kept, removed = [], Counter()
    for i, s in enumerate(sets):
        if len(s) == 0:
            removed["empty"] += 1
            continue
        order = sorted(s.tolist(), key=lambda h: (frequency[h], h))
        prefix = order[: len(order) - math.ceil(below * len(order)) + 1]
        candidates = {j for h in prefix for j in index.get(h, ())}
        best = max((jaccard(s, sets[j]) for j in candidates), default=0.0)
        if best >= below:
            removed["identical" if best == 1.0 else "similar"] += 1
            continue
        kept.append(i)
        for h in prefix:
            index.setdefault(h, []).append(i)
    return [docs[i] for i in kept], [sets[i] for i in kept], removed


def blocks(text: str) -> tuple[list[str], str]:
    """A document's blocks: speeches (blank-line separated) when it has several, else lines (turns)."""
    parts = text.split("\n\n")
    return (parts, "\n\n") if len(parts) > 1 else (text.split("\n"), "\n")


def edit_words(rng: random.Random, text: str, rate: float, vocabulary: list[str]) -> str:
    """`rate` of the words, at random places, substituted, deleted or followed by an inserted word."""
    tokens = re.split(r"(\s+)", text)
    word_positions = [i for i, t in enumerate(tokens) if t and not t.isspace()]
    for i in rng.sample(word_positions, max(1, round(rate * len(word_positions)))):
        operation = rng.randrange(3)
        if operation == 0:
            tokens[i] = rng.choice(vocabulary)
        elif operation == 1:
            tokens[i] = ""
        else:
            tokens[i] = tokens[i] + " " + rng.choice(vocabulary)
    return re.sub(r"[ \t]{2,}", " ", "".join(tokens))


def truncate(text: str, share: float) -> str:
    ends = [m.end() for m in re.finditer(r"\S+", text)]
    return text[: ends[max(0, round(share * len(ends)) - 1)]]


def make_copy(rng: random.Random, text: str, kind: str, vocabulary: list[str]) -> str:
    if kind == "exact":
        return text
    if kind.startswith("edit"):
        return edit_words(rng, text, int(kind.split()[1].rstrip("%")) / 100, vocabulary)
    if kind == "move one block":
        parts, joiner = blocks(text)
        i = rng.randrange(len(parts))
        moved = parts.pop(i)
        parts.insert(rng.choice([k for k in range(len(parts) + 1) if k != i] or [i]), moved)
        return joiner.join(parts)
    if kind == "shuffle blocks":
        parts, joiner = blocks(text)
        shuffled = parts[:]
        for _ in range(10):  # a different order (unless every order is the same)
            rng.shuffle(shuffled)
            if shuffled != parts:
                break
        return joiner.join(shuffled)
    if kind.startswith("boilerplate"):
        size = kind.split()[1]
        return f"{HEADER[size]}\n\n{text}\n\n{FOOTER[size]}"
    if kind.startswith("truncate"):
        return truncate(text, int(kind.split()[1].rstrip("%")) / 100)
    raise ValueError(kind)


def build_stream(base: list[str], per_kind: int, seed: int) -> tuple[list[str], dict[int, tuple[int, str]]]:
    """The base documents (shuffled) with the copies placed after their sources; for each copy's stream
    position, (its source's stream position, kind)."""
    rng = random.Random(seed)
    vocabulary = sorted({w for d in base for w in re.findall(r"[A-Za-z]+", d)})
    order = list(range(len(base)))
    rng.shuffle(order)
    sources = rng.sample(range(len(base)), per_kind * len(KINDS))
    after: dict[int, list[tuple[int, str, str]]] = {}  # base position -> copies placed after it
    position_of = {doc: p for p, doc in enumerate(order)}
    for k, source in enumerate(sources):
        kind = KINDS[k // per_kind]
        copy = make_copy(rng, base[source], kind, vocabulary)
        after.setdefault(rng.randrange(position_of[source], len(order)), []).append((source, kind, copy))
    stream, stream_pos, planted = [], {}, {}
    for p, doc in enumerate(order):
        stream_pos[doc] = len(stream)
        stream.append(base[doc])
        for source, kind, copy in after.get(p, []):
            planted[len(stream)] = (stream_pos[source], kind)
            stream.append(copy)
    return stream, planted


def run(stream_file: Path, out: Path, overrides: dict, workers: int) -> tuple[dict[int, int], float]:
    """Flagged document -> the kept document it duplicates, and the run's seconds."""
    cfg = config_from_dict({**ONLY_DEDUP, "dedup": overrides})
    started = time.perf_counter()
    curate(CurateJob(str(stream_file), out, cfg, workers=workers, overwrite=True))
    seconds = time.perf_counter() - started
    flagged = {}
    for line in (out / "clusters.jsonl").read_text().splitlines():
        cluster = json.loads(line)
        for member in cluster["members"]:
            flagged[member["id"]] = cluster["kept"]
    return flagged, seconds


def score(flagged: dict[int, int], planted: dict[int, tuple[int, str]], truth: dict[int, float], at: float) -> dict:
    correct = {c for c, (source, _) in planted.items() if flagged.get(c) == source}
    strong = [c for c in planted if truth[c] >= at]
    return {
        "flagged": len(flagged),
        "correct": len(correct),
        "false_base": sum(1 for d in flagged if d not in planted),
        "wrong_original": sum(1 for d in flagged if d in planted and d not in correct),
        "precision": len(correct) / len(flagged) if flagged else float("nan"),
        "recall_all": len(correct) / len(planted),
        "recall_strong": sum(c in correct for c in strong) / len(strong) if strong else float("nan"),
        "strong": len(strong),
        "correct_set": correct,
        "false_pairs": [(d, kept) for d, kept in flagged.items() if d not in correct],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,000 dialogues, 40 copies per kind, no sweep")
    parser.add_argument("--per-kind", type=int, default=300, help="planted copies of each kind")
    parser.add_argument("--dialogues", type=int, default=None, help="DialogSum train dialogues used (all: 12,460)")
    parser.add_argument("--shakespeare-words", type=int, default=150, help="least words of a Shakespeare document")
    parser.add_argument("--clean-below", type=float, default=0.3, help="base documents pairwise below this Jaccard")
    parser.add_argument("--no-sweep", action="store_true", help="skip the threshold sweep 0.5..0.9")
    parser.add_argument("--minhash-seeds", type=int, default=8, help="dedup.seed 1..N, for recall's spread")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.quick:
        args.per_kind, args.dialogues, args.no_sweep, args.minhash_seeds = 40, args.dialogues or 3000, True, 1
    defaults = config_from_dict({}).dedup
    assert (defaults.ngram, defaults.bands, defaults.rows, defaults.threshold) == (NGRAM, BANDS, ROWS, THRESHOLD)
    print(describe())

    started = time.perf_counter()
    shakespeare, dialogues = shakespeare_documents(args.shakespeare_words), dialogsum_documents(args.dialogues)
    base, _, removed = clean_base(shakespeare + dialogues, args.clean_below)
    print(f"base: {len(shakespeare):,} Shakespeare documents + {len(dialogues):,} DialogSum train dialogues; "
          f"left out {removed['identical']:,} with the same 5-gram set as an earlier kept one and "
          f"{removed['similar']:,} similar to one (true 5-gram Jaccard >= {args.clean_below}): {len(base):,} "
          f"documents ({time.perf_counter() - started:.0f} s)")  # fmt: skip
    stream, planted = build_stream(base, args.per_kind, args.seed)
    truth = {c: jaccard(shingles(stream[c]), shingles(stream[s])) for c, (s, _) in planted.items()}
    print(f"stream: {len(stream):,} documents, {len(planted):,} planted copies ({args.per_kind} per kind)")

    with tempfile.TemporaryDirectory() as tmp:
        stream_file = Path(tmp) / "stream.jsonl"
        stream_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in stream), encoding="utf-8")
        size = stream_file.stat().st_size
        near, near_s = run(stream_file, Path(tmp) / "near", {}, args.workers)
        exact, exact_s = run(stream_file, Path(tmp) / "exact", {"near": False}, args.workers)
        print(f"curate, default dedup: {near_s:.1f} s; exact only: {exact_s:.1f} s ({size / 1e6:.1f} MB of JSONL)")
        sweep = []
        if not args.no_sweep:
            for threshold in (0.5, 0.6, 0.7, 0.8, 0.9):
                flagged, _ = run(stream_file, Path(tmp) / f"t{threshold}", {"threshold": threshold}, args.workers)
                sweep.append((threshold, score(flagged, planted, truth, threshold)))
        seeds = [score(near, planted, truth, THRESHOLD)]  # MinHash seed 1 (the default) and the others
        for seed in range(2, args.minhash_seeds + 1):
            flagged, _ = run(stream_file, Path(tmp) / f"seed{seed}", {"seed": seed}, args.workers)
            seeds.append(score(flagged, planted, truth, THRESHOLD))
    print_kinds(planted, truth, seeds, score(exact, planted, truth, THRESHOLD))
    print_totals(planted, seeds[0], score(exact, planted, truth, THRESHOLD))
    expected = sum(expected_detection(j, BANDS, ROWS, THRESHOLD) for j in truth.values())
    found = [r["correct"] for r in seeds]
    print(f"copies found, all kinds: {found[0]:,} with seed 1, {min(found):,}-{max(found):,} over seeds 1-{len(seeds)} "
          f"(mean {np.mean(found):,.0f}); an ideal MinHash expects {expected:,.0f}")  # fmt: skip
    if sweep:
        print_sweep(sweep, stream, planted)


def print_kinds(planted: dict, truth: dict, seeds: list[dict], exact: dict) -> None:
    near = seeds[0]
    print(f"\n| kind | copies | true 5-gram Jaccard: mean (min-max) | copies with J >= {THRESHOLD} | "
          f"expected recall, ideal MinHash | recall, MinHash (default) | recall over MinHash seeds 1-{len(seeds)}: "
          "mean (min-max) | recall, exact only |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for kind in KINDS:
        copies = [c for c, (_, k) in planted.items() if k == kind]
        j = np.array([truth[c] for c in copies])
        expected = np.mean([expected_detection(x, BANDS, ROWS, THRESHOLD) for x in j])
        over = [recall(copies, result) for result in seeds]
        print(f"| {kind} | {len(copies)} | {j.mean():.3f} ({j.min():.2f}-{j.max():.2f}) | "
              f"{(j >= THRESHOLD).sum()} | {expected:.2f} | {recall(copies, near):.3f} | "
              f"{np.mean(over):.3f} ({min(over):.2f}-{max(over):.2f}) | {recall(copies, exact):.3f} |")  # fmt: skip


def expected_detection(similarity: float, bands: int, rows: int, threshold: float) -> float:
    """P(found) for an ideal MinHash: each of the bands x rows values agrees with probability `similarity`,
    independently; found = some band agrees in all its rows (a candidate) and the share of agreeing values
    reaches the threshold (the verification). Exact, by dynamic programming over bands."""
    total = bands * rows
    band = [math.comb(rows, k) * similarity**k * (1 - similarity) ** (rows - k) for k in range(rows + 1)]
    state = np.zeros((total + 1, 2))  # [agreeing values so far, whether some band agreed fully]
    state[0, 0] = 1.0
    for _ in range(bands):
        step = np.zeros_like(state)
        for k, p in enumerate(band):
            step[k:, 0] += (state[: total + 1 - k, 0] * p) if k < rows else 0.0
            step[k:, 1] += state[: total + 1 - k, 1] * p + (state[: total + 1 - k, 0] * p if k == rows else 0.0)
        state = step
    return float(sum(state[k, 1] for k in range(total + 1) if k / total >= threshold))


def recall(copies: list[int], result: dict) -> float:
    return sum(c in result["correct_set"] for c in copies) / len(copies)


def print_totals(planted: dict, near: dict, exact: dict) -> None:
    print(
        "\n| dedup | flagged | correct | false: base documents | false: copy matched to another document | "
        f"precision | recall, all {len(planted):,} copies | recall, the {near['strong']:,} with J >= {THRESHOLD} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, r in (("MinHash + exact (default: 5-grams, 14x8, 0.7)", near), ("exact hash only", exact)):
        print(f"| {name} | {r['flagged']:,} | {r['correct']:,} | {r['false_base']} | {r['wrong_original']} | "
              f"{r['precision']:.3f} | {r['recall_all']:.3f} | {r['recall_strong']:.3f} |")  # fmt: skip


def print_sweep(sweep: list, stream: list[str], planted: dict) -> None:
    print(
        "\n| threshold (14x8 bands) | flagged | false: base documents | false: copy matched to another document | "
        "precision | recall, all copies | recall, copies with J >= threshold |"
    )
    print("|---|---|---|---|---|---|---|")
    for threshold, r in sweep:
        print(f"| {threshold} | {r['flagged']:,} | {r['false_base']} | {r['wrong_original']} | {r['precision']:.3f} | "
              f"{r['recall_all']:.3f} | {r['recall_strong']:.3f} ({r['strong']:,}) |")  # fmt: skip
    for threshold, r in sweep:
        for doc, kept in r["false_pairs"]:
            what = f"a planted copy ({planted[doc][1]})" if doc in planted else "a base document"
            similarity = jaccard(shingles(stream[doc]), shingles(stream[kept]))
            print(f"false positive at {threshold}: {what} #{doc} matched #{kept}, true 5-gram Jaccard "
                  f"{similarity:.3f}: {' '.join(stream[doc].split())[:90]!r}")  # fmt: skip


if __name__ == "__main__":
    main()
