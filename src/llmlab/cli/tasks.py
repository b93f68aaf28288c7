"""`llmlab classify` and `llmlab tag`: an encoder fine-tuned with a task head, on new text."""

from __future__ import annotations

import argparse
import dataclasses
import json

from llmlab.cli.common import add_inspection_parser, load_for_inspection, print_table, read_lines, unescape


def cmd_classify(args: argparse.Namespace) -> None:
    from llmlab.tasks.predict import classify_texts

    texts = [unescape(t) for t in args.text or []]
    if args.file:
        texts += read_lines(args.file, "--file", "pass a UTF-8 text file, one text a line")
    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    results = classify_texts(ckpt.model, ckpt.tokenizer, texts)
    if args.json:
        for result in results:
            print(json.dumps(dataclasses.asdict(result)))
        return
    names = list(results[0].scores)
    rows = [[r.text[:60], ", ".join(r.labels) or "-", *(f"{r.scores[n]:.4f}" for n in names)] for r in results]
    print_table(rows, ["text", "label", *names], right=False)


def cmd_tag(args: argparse.Namespace) -> None:
    from llmlab.tasks.predict import tag_text

    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    result = tag_text(ckpt.model, ckpt.tokenizer, unescape(args.text))
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
        return
    rows = [[w, t, f"{p:.4f}"] for w, t, p in zip(result.words, result.tags, result.probabilities)]
    print_table(rows, ["word", "tag", "probability"], right=False)
    entities = [[e.type, e.text, f"{e.start}-{e.end}", f"{e.probability:.4f}"] for e in result.entities]
    if entities:
        print_table(entities, ["entity", "text", "words", "probability"], right=False)
    else:
        print("no entities")


def register(subparsers: argparse._SubParsersAction) -> None:
    cl = add_inspection_parser(subparsers, "classify", "labels with probabilities from a classifier (--task classify)")
    cl.add_argument("--text", action="append", help="a text to classify (repeatable)")
    cl.add_argument("--file", help="a UTF-8 file, one text a line")
    cl.set_defaults(func=cmd_classify)
    tg = add_inspection_parser(subparsers, "tag", "a tag per word and the entities they spell (--task tag)")
    tg.add_argument("--text", required=True, help="the text to tag (words split on whitespace)")
    tg.set_defaults(func=cmd_tag)
