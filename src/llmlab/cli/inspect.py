"""Looking inside a model: `fill-mask`, `embed`, `attention`, `next-token`, and the `presets` table.
Checkpoints load in fp32 on --device (default cpu) so probabilities and weights are exact."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from llmlab.cli.common import add_inspection_parser, escape, load_for_inspection, print_table, read_lines, unescape
from llmlab.errors import LlmlabError


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from llmlab.introspect.encode import fill_mask

    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    results = fill_mask(ckpt.model, ckpt.tokenizer, unescape(args.text), args.top_k)
    if args.json:
        print(json.dumps([[dataclasses.asdict(f) for f in fillers] for fillers in results]))
        return
    for n, fillers in enumerate(results, 1):
        rows = [[r, repr(f.token), f"{f.probability:.4f}", escape(f.text)] for r, f in enumerate(fillers, 1)]
        print_table(rows, [f"mask {n}: rank", "token", "probability", "filled in"], right=False)


def cosine_similarities(vectors):
    """Pairwise cosine similarities of raw (not unit-length) vectors."""
    import torch.nn.functional as F

    unit = F.normalize(vectors, dim=-1)
    return unit @ unit.T


def cmd_embed(args: argparse.Namespace) -> None:
    from llmlab.introspect.encode import embed

    texts = [unescape(t) for t in args.text or []]
    if args.file:
        texts += read_lines(args.file, "--file", "pass a UTF-8 text file, one text a line")
    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    vectors = embed(ckpt.model, ckpt.tokenizer, texts, normalize=not args.raw)
    if args.json:
        for text, v in zip(texts, vectors.tolist()):
            print(json.dumps({"text": text, "embedding": [round(x, 6) for x in v]}))
        return
    print(f"{len(texts)} vectors of {vectors.shape[1]} dims ({'raw' if args.raw else 'unit length'}, mean-pooled)")
    for text, v in zip(texts, vectors.tolist()):
        print(f"{text[:40]!r}: [{', '.join(f'{x:.4f}' for x in v[:6])}, ...]")
    if len(texts) > 1:
        sims = (vectors @ vectors.T) if not args.raw else cosine_similarities(vectors)
        header = ["cosine similarity"] + [f"{i}" for i in range(1, len(texts) + 1)]
        rows = [
            [f"{i} {t[:30]!r}"] + [f"{x:.3f}" for x in row] for i, (t, row) in enumerate(zip(texts, sims.tolist()), 1)
        ]
        print_table(rows, header)


def cmd_attention(args: argparse.Namespace) -> None:
    from llmlab.introspect.attention import attention_maps, plot_attention

    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    maps = attention_maps(ckpt.model, ckpt.tokenizer, unescape(args.text), args.target)
    kind = args.kind or next(iter(maps))
    if kind not in maps:
        raise LlmlabError(f"a {ckpt.model.config.family} model has no {kind} attention", f"use {' or '.join(maps)}")
    amap = maps[kind]
    layers = amap.weights.shape[0]
    layer = args.layer if args.layer is not None else layers - 1
    head = f"head{args.head}" if args.head is not None else "heads"
    out = Path(args.out or Path(args.checkpoint) / f"attention-{kind}-layer{layer % layers}-{head}.png")
    plot_attention(amap, out, layer, args.head)
    print(
        f"{kind} attention: {layers} layers x {amap.weights.shape[1]} heads over "
        f"{len(amap.query_tokens)} x {len(amap.key_tokens)} tokens; heat map: {out}"
    )


def cmd_next_token(args: argparse.Namespace) -> None:
    from llmlab.generation.config import GenerationConfig
    from llmlab.introspect.next_token import STAGES, next_token_logits, next_token_report, plot_next_token

    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    config = GenerationConfig(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    logits = next_token_logits(ckpt.model, ckpt.tokenizer, unescape(args.prompt), unescape(args.target_prefix))
    report = next_token_report(logits, ckpt.tokenizer, config, args.show)
    out = Path(args.out or Path(args.checkpoint) / "next-token.png")
    title = f"after {args.prompt[-40:]!r}: T={args.temperature}, top-k={args.top_k or 'off'}, top-p={args.top_p}"
    plot_next_token(report, out, title)
    if args.json:
        print(json.dumps({"rows": [dataclasses.asdict(r) for r in report.rows], "kept": report.kept}))
        return
    header = ["token", "id"] + [f"{s} ({report.kept[s]:,} kept)" for s in STAGES]
    rows = [[repr(r.token), r.token_id] + [f"{r.probabilities[s]:.4f}" for s in STAGES] for r in report.rows]
    print_table(rows, header)
    print(f"chart: {out}")


def cmd_presets(args: argparse.Namespace) -> None:
    from llmlab.config import PRESETS, ModelConfig
    from llmlab.model import build_model

    vocab = getattr(args, "vocab_size", 8192)
    rows = []
    for name in PRESETS:
        c = ModelConfig.from_preset(name, vocab_size=vocab)
        layers = f"{c.n_layer}+{c.n_decoder_layer}" if c.n_decoder_layer else str(c.n_layer)
        parameters = f"{build_model(c).num_parameters():,}"
        rows.append([name, c.family, parameters, layers, c.n_embd, c.n_head, c.n_kv_head, c.block_size]
                    + [c.positions, c.norm, c.mlp])  # fmt: skip
    header = ["preset", "family", "parameters", "layers", "width", "heads", "kv", "context", "positions", "norm", "mlp"]
    print_table(rows, header)
    print(f"parameters at a {vocab:,}-token vocabulary; encoder-decoder layers are encoder+decoder")


def _register_encoders(subparsers: argparse._SubParsersAction) -> None:
    """fill-mask and embed: what an encoder's representations say."""
    fm = add_inspection_parser(subparsers, "fill-mask", "top-k tokens for each [MASK] of a text (encoder models)")
    fm.add_argument("text", help='text with [MASK] where a token is missing, e.g. "def [MASK](self):"')
    fm.add_argument("--top-k", type=int, default=5)
    fm.set_defaults(func=cmd_fill_mask)

    em = add_inspection_parser(subparsers, "embed", "mean-pooled sentence vectors, with their cosine similarities")
    em.add_argument("--text", action="append", help="a text to embed (repeatable)")
    em.add_argument("--file", help="a UTF-8 file, one text a line")
    em.add_argument("--raw", action="store_true", help="do not scale vectors to unit length")
    em.set_defaults(func=cmd_embed)


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_encoders(subparsers)
    help_text = "heat map of attention weights (self- or cross-attention) as a PNG"
    at = add_inspection_parser(subparsers, "attention", help_text)
    at.add_argument("--text", required=True, help="input text (the encoder's, for encoder-decoder models)")
    at.add_argument("--target", help="encoder-decoder: decoder text (default: the model's greedy output)")
    at.add_argument("--kind", choices=["encoder", "decoder", "cross"], help="which attention (default: the first)")
    at.add_argument("--layer", type=int, help="layer index, negative from the end (default: last)")
    at.add_argument("--head", type=int, help="one head (default: a grid of all heads)")
    at.add_argument("--out", help="PNG path (default: in the checkpoint folder)")
    at.set_defaults(func=cmd_attention)

    help_text = "next-token probabilities before and after temperature, top-k, top-p"
    nt = add_inspection_parser(subparsers, "next-token", help_text)
    nt.add_argument("--prompt", required=True)
    nt.add_argument("--target-prefix", default="", help="encoder-decoder: decoder text already written")
    nt.add_argument("--temperature", type=float, default=1.0)
    nt.add_argument("--top-k", type=int, default=0)
    nt.add_argument("--top-p", type=float, default=1.0)
    nt.add_argument("--show", type=int, default=10, help="how many of the likeliest tokens to show")
    nt.add_argument("--out", help="PNG path (default: next-token.png in the checkpoint folder)")
    nt.set_defaults(func=cmd_next_token)

    s = subparsers.add_parser("presets", help="list the model presets with their parameter counts")
    s.add_argument("--vocab-size", type=int, default=8192)
    s.set_defaults(func=cmd_presets)
