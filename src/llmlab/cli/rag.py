"""`llmlab rag`: answer questions from an index with a model, citing the passages used."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from llmlab.cli.common import ADAPTER_HELP, CHECKPOINT_HELP, DEVICE_HELP, add_dataclass_options, read_lines, unescape


def cmd_rag(args: argparse.Namespace) -> None:
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.errors import LlmlabError
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.load import load_checkpoint
    from llmlab.rag.answer import answer_questions
    from llmlab.retrieval import Index

    questions = [unescape(q) for q in args.question or []]
    if args.questions_file:
        questions += [unescape(line) for line in read_lines(args.questions_file, "--questions-file")]
    if not questions:
        raise LlmlabError("no question given", "pass --question TEXT (repeatable) or --questions-file FILE")
    if args.k < 0:
        raise LlmlabError(f"-k must be >= 0, got {args.k}", "pass e.g. -k 5 (0: answer without retrieval)")
    index = Index.load(args.index, device=args.device) if args.k else None
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    ckpt = load_checkpoint(args.checkpoint, device=device, dtype=dtype, adapter=args.adapter)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationConfig) if hasattr(args, f.name)}
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), "max_new_tokens": 64, **options})
    answers = answer_questions(Generator(ckpt.model, ckpt.tokenizer), index, questions, config, args.k, args.mode)
    for a in answers:
        if args.json:
            print(json.dumps({"question": a.question, "answer": a.answer, "cited": a.cited,
                              "passages": [dataclasses.asdict(p) for p in a.prompt.passages],
                              "dropped": [p.source for p in a.prompt.dropped], "prompt_tokens": a.prompt.tokens,
                              "finish_reason": a.finish_reason}, ensure_ascii=False))  # fmt: skip
            continue
        print(f"Q: {a.question}\nA: {a.answer}")
        for number, passage in enumerate(a.prompt.passages, 1):
            mark = "*" if number in a.cited else " "
            print(f" {mark}[{number}] {passage.source}: {passage.text[:100].strip()!r}")
        for note in a.prompt.notes:
            print(f"({note}: {', '.join(p.source for p in a.prompt.dropped) or 'none dropped'})", file=sys.stderr)
        print()


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmlab.generation.config import GenerationConfig

    r = subparsers.add_parser("rag", help="answer questions from an index of your documents, citing passages")
    r.add_argument("checkpoint", help=CHECKPOINT_HELP)
    r.add_argument("--index", required=True, help="an index folder from llmlab index build")
    r.add_argument("--question", action="append", help="a question (repeatable)")
    r.add_argument("--questions-file", help="one question a line")
    r.add_argument("-k", type=int, default=5, help="passages to retrieve (default 5; 0: no retrieval, the baseline)")
    r.add_argument("--mode", default="hybrid", choices=("dense", "bm25", "hybrid"), help="how to search (hybrid)")
    r.add_argument("--adapter", help=ADAPTER_HELP)
    add_dataclass_options(r, GenerationConfig)
    r.add_argument("--json", action="store_true", help="one JSON object per question")
    r.add_argument("--device", default="cpu", help=DEVICE_HELP)
    r.add_argument("--dtype", default="auto", help="auto (bf16 where fast), fp32, bf16, fp16")
    r.set_defaults(func=cmd_rag)
