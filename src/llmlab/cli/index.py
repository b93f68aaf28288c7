"""`llmlab index build | add | search`: a searchable index of documents (dense, BM25 or hybrid)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from llmlab.cli.common import CHECKPOINT_HELP, DEVICE_HELP, escape, print_table, unescape

SNIPPET = 80


def cmd_build(args: argparse.Namespace) -> None:
    from llmlab.progress import ProgressLine
    from llmlab.retrieval import ChunkSettings, build_index, load_embedder
    from llmlab.retrieval.store import require_writable

    require_writable(args.out, args.overwrite)  # before minutes of loading and embedding
    settings = ChunkSettings(args.chunk_tokens, args.overlap_tokens)
    embedder = load_embedder(args.embedder, args.device)
    settings.check(embedder.context)
    report = build_index(args.docs, embedder, args.out, settings, args.kind, args.text_field, args.id_field,
                         args.overwrite, progress=ProgressLine(), batch_size=args.batch_size)  # fmt: skip
    print(
        f"index {report.path}: {report.documents:,} documents, {report.chunks:,} chunks "
        f"({settings.chunk_tokens} tokens, {settings.overlap_tokens} overlap), {embedder.dims} dims, {args.kind}; "
        f"embedding {report.embed_seconds:.1f} s, indexing {report.index_seconds:.2f} s"
    )


def cmd_add(args: argparse.Namespace) -> None:
    from llmlab.progress import ProgressLine
    from llmlab.retrieval import add_documents, load_embedder
    from llmlab.retrieval.store import read_meta

    read_meta(args.index)  # a missing index is refused before any model is loaded
    embedder = load_embedder(args.embedder, args.device) if args.embedder else None
    report = add_documents(args.index, args.docs, embedder, args.device, ProgressLine(), args.batch_size,
                           args.text_field, args.id_field)  # fmt: skip
    print(
        f"index {report.path}: added {report.documents:,} documents ({report.chunks:,} chunks), "
        f"{report.total_chunks:,} chunks in all; embedding {report.embed_seconds:.1f} s, "
        f"indexing {report.index_seconds:.2f} s"
    )


def cmd_search(args: argparse.Namespace) -> None:
    from llmlab.errors import LlmlabError
    from llmlab.retrieval import Index

    if args.k < 1:
        raise LlmlabError(f"-k must be >= 1, got {args.k}", "pass e.g. -k 5")
    if args.rrf_k < 0:
        raise LlmlabError(f"--rrf-k must be >= 0, got {args.rrf_k}", "pass e.g. --rrf-k 60")
    index = Index.load(args.index, args.embedder, args.device)
    hits = index.search(unescape(args.query), args.k, args.mode, args.rrf_k, args.exact)
    if args.json:
        print(json.dumps([dataclasses.asdict(hit) for hit in hits], ensure_ascii=False))
        return
    if not hits:
        print("no results")
        return
    rows = [[h.rank, f"{h.score:.4f}", h.id or h.source, escape(h.text[:SNIPPET])] for h in hits]
    print_table(rows, ["rank", "score", "source", "text"], right=False)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("index", help="index documents and search them (dense, BM25 or hybrid)")
    commands = parser.add_subparsers(dest="index_command", required=True)

    build = commands.add_parser("build", help="chunk, embed and index documents into a new index folder")
    build.add_argument("docs", nargs="+", help="text files, folders (recursive .txt/.md/.rst/.jsonl) or .jsonl files")
    build.add_argument("--embedder", required=True, help=f"the encoder that embeds chunks: {CHECKPOINT_HELP}")
    build.add_argument("--out", required=True, help="the index folder to write")
    build.add_argument("--chunk-tokens", type=int, default=256, help="chunk size in the embedder's tokens")
    build.add_argument("--overlap-tokens", type=int, default=32, help="tokens each chunk shares with the next")
    build.add_argument("--text-field", default="text", help="JSONL: the field that holds the text")
    build.add_argument("--id-field", help="JSONL: a field that names each record (default: file:line)")
    build.add_argument("--kind", choices=["hnsw", "exact"], default="hnsw", help="approximate (faiss HNSW) or exact")
    build.add_argument("--overwrite", action="store_true", help="replace an existing index folder")
    build.add_argument("--batch-size", type=int, default=32, help="chunks embedded at once")
    build.add_argument("--device", default="cpu", help=DEVICE_HELP)
    build.set_defaults(func=cmd_build)

    add = commands.add_parser("add", help="add documents to an index (same embedder and chunk settings)")
    add.add_argument("index", help="an index folder from llmlab index build")
    add.add_argument("docs", nargs="+", help="text files, folders or .jsonl files")
    add.add_argument("--text-field", help="JSONL: the field that holds the text (default: the build's)")
    add.add_argument("--id-field", help="JSONL: a field that names each record (default: the build's)")
    add.add_argument("--embedder", help="another copy of the index's embedder (default: the one index.json names)")
    add.add_argument("--batch-size", type=int, default=32, help="chunks embedded at once")
    add.add_argument("--device", default="cpu", help=DEVICE_HELP)
    add.set_defaults(func=cmd_add)

    search = commands.add_parser("search", help="the k best chunks for a query: rank, score, source, text")
    search.add_argument("index", help="an index folder from llmlab index build")
    search.add_argument("query", help="what to look for")
    search.add_argument("-k", type=int, default=5, help="how many results")
    search.add_argument("--mode", choices=["dense", "bm25", "hybrid"], default="dense",
                        help="embedding similarity, BM25 word matching, or both fused by reciprocal rank")  # fmt: skip
    search.add_argument("--rrf-k", type=int, default=60, help="hybrid: the reciprocal-rank-fusion constant")
    search.add_argument("--exact", action="store_true", help="score every vector instead of walking the HNSW graph")
    search.add_argument("--embedder", help="another copy of the index's embedder (default: the one index.json names)")
    search.add_argument("--device", default="cpu", help=DEVICE_HELP)
    search.add_argument("--json", action="store_true", help="machine-readable output")
    search.set_defaults(func=cmd_search)
