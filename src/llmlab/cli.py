"""The `llmlab` command. Options are generated from the config dataclasses, so the CLI and the
Python API cannot drift apart; each command is one function."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import types
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path

from llmlab.errors import LlmlabError

TRAIN_HELP = {
    "out": "run folder for the checkpoint, metrics.jsonl and loss.png",
    "family": "decoder (GPT), encoder (BERT) or encoder-decoder (T5); default: the preset's",
    "objective": "clm (decoder), mlm (encoder), span or seq2seq (encoder-decoder); default: the family's first",
    "init": "start from this checkpoint's weights and tokenizer (e.g. seq2seq on a span-pre-trained model)",
    "input_field": "seq2seq JSONL field holding the input",
    "target_field": "seq2seq JSONL field holding the target",
    "mask_probability": "mlm: fraction of ordinary tokens selected for prediction",
    "noise_density": "span: fraction of tokens dropped into spans",
    "mean_span_length": "span: mean length of a noise span",
    "n_decoder_layer": "decoder blocks of an encoder-decoder model (overrides the preset)",
    "data": "text file, folder (see --glob) or .jsonl file; default: the Python standard library's source",
    "glob": "files to read under a --data folder",
    "text_field": "JSONL field holding the text",
    "tokenizer": "bpe (byte-level) or char",
    "vocab_size": "BPE vocabulary size",
    "val_fraction": "fraction of tokens held out for validation (the end of the corpus)",
    "preset": "model preset (see `llmlab presets`); default llama-micro, bert-micro or t5-micro by family",
    "block_size": "context length in tokens (overrides the preset)",
    "n_layer": "number of transformer blocks (overrides the preset)",
    "n_head": "attention heads (overrides the preset)",
    "n_kv_head": "key/value heads for grouped-query attention (overrides the preset)",
    "n_embd": "model width (overrides the preset)",
    "dropout": "dropout probability (overrides the preset's 0)",
    "positions": "learned, rope, sinusoidal or relative (T5 bias) (overrides the preset)",
    "norm": "layernorm or rmsnorm (overrides the preset)",
    "mlp": "gelu, relu, swiglu or geglu (overrides the preset)",
    "batch_size": "sequences per micro-batch",
    "grad_accum": "micro-batches per optimizer step",
    "lr": "peak learning rate",
    "min_lr": "final learning rate of the cosine decay (default lr/10)",
    "warmup_steps": "linear warmup steps",
    "weight_decay": "AdamW weight decay on matrices",
    "optimizer": "adamw, or muon (Muon for the blocks' matrices, AdamW for embeddings, norms and biases)",
    "grad_clip": "clip the gradient norm to this value",
    "max_steps": "stop after this many optimizer steps",
    "max_time": "stop after this many seconds of training",
    "eval_interval": "validate every N steps",
    "eval_iters": "validation batches per evaluation",
    "log_interval": "update the progress line and metrics every N steps",
    "checkpoint_interval": "save a resumable checkpoint every N steps",
    "device": "auto, cpu, cuda, cuda:N or mps",
    "dtype": "auto (bf16 where the hardware has it), fp32, bf16 or fp16 (CUDA only)",
    "compile": "torch.compile the model (slow first step, faster after)",
    "seed": "seed for initialisation, data order and dropout",
    "resume": "continue the run in --out exactly where it stopped",
    "overwrite": "replace a checkpoint already in --out",
    "strategy": "none, ddp or fsdp; launch with: torchrun --nproc_per_node N -m llmlab pretrain ... --strategy ddp",
    "zero": "fsdp: 3 shards parameters, gradients and optimizer states; 2 keeps parameters gathered in fwd+bwd",
    "fsdp_mixed_precision": "fsdp: bf16 or fp16 parameters in compute, fp32 gradient reduction",
}

GEN_HELP = {
    "max_new_tokens": "tokens to generate per sample",
    "min_new_tokens": "suppress end-of-sequence before this many tokens",
    "temperature": "divide logits by this (0 = greedy)",
    "top_k": "keep the k most likely tokens (0 = off)",
    "top_p": "keep the smallest set of tokens whose probability reaches p (1 = off)",
    "greedy": "always take the most likely token",
    "stop": "stop a sample when it produces this text (repeatable; \\n for a newline)",
    "seed": "seed for sampling",
    "num_samples": "samples per prompt",
    "truncate_prompt": "keep the last tokens of a prompt too long for the context window (default: refuse)",
}


def _base_type(annotation) -> type:
    """`int | None` -> int, `list[str]` -> list."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {"list": list})  # annotations are postponed (PEP 563)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    return origin or annotation


def add_dataclass_options(parser: argparse.ArgumentParser, cls: type, helps: dict[str, str], skip=()) -> None:
    """One --option per field; defaults are suppressed so we can tell what the user actually gave."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(f.type)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = helps.get(f.name, "") + (f" (default {default})" if default not in (None, False, []) else "")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif kind is list:
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


def cmd_pretrain(args: argparse.Namespace) -> None:
    from llmlab.train import TrainConfig, train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func")}
    base = TrainConfig().to_dict()
    if given.get("resume"):
        state = Path(given.get("out", base["out"])) / "trainer_state.json"
        if state.is_file():  # options not given again are those of the original run
            saved = json.loads(state.read_text()).get("train_config", {})
            base = {**base, **{k: v for k, v in saved.items() if k in base}}
        base["overwrite"] = False
    train(TrainConfig(**{**base, **given}))


def unescape(text: str) -> str:
    """Let one line of shell or file text hold newlines and tabs, written as \\n and \\t."""
    return text.replace("\\n", "\n").replace("\\t", "\t")


def cmd_generate(args: argparse.Namespace) -> None:
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.load import load_checkpoint

    prompts = list(getattr(args, "prompt", []) or [])
    if getattr(args, "prompts_file", None):
        try:
            text = Path(args.prompts_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LlmlabError(
                f"cannot read --prompts-file {args.prompts_file}: {exc}", "pass a UTF-8 text file"
            ) from None
        prompts += [unescape(line) for line in text.splitlines() if line.strip()]
    if not prompts:
        raise LlmlabError("no prompt given", "pass --prompt TEXT (repeatable) or --prompts-file FILE")
    device = resolve_device(getattr(args, "device", "auto"))
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    ckpt = load_checkpoint(args.checkpoint, device=device, dtype=dtype)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationConfig) if hasattr(args, f.name)}
    if "stop" in options:  # let a shell user write "\n" for a newline, as in --prompts-file
        options["stop"] = [unescape(text) for text in options["stop"]]
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), **options})
    generator = Generator(ckpt.model, ckpt.tokenizer)
    if getattr(args, "stream", False):
        if len(prompts) != 1 or config.num_samples != 1:
            raise LlmlabError("--stream prints one sample as it is generated", "use one --prompt and --num-samples 1")
        sys.stdout.write("" if generator.seq2seq else prompts[0])  # a seq2seq output does not continue its input
        for piece in generator.stream(prompts[0], config):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return
    results = generator.generate(prompts, config)
    for i, samples in enumerate(results, 1):
        for j, c in enumerate(samples, 1):
            if getattr(args, "json", False):
                print(
                    json.dumps(
                        {
                            "prompt": c.prompt,
                            "completion": c.text,
                            "finish_reason": c.finish_reason,
                            "tokens": len(c.token_ids),
                            "sample": j,
                        }
                    )
                )
            else:
                mode = (
                    "greedy"
                    if not config.do_sample
                    else (f"temperature {config.temperature}, top-k {config.top_k or 'off'}, top-p {config.top_p}")
                )
                print(f"--- prompt {i}, sample {j} ({mode}; ended by {c.finish_reason}) ---")
                print(f"{c.prompt}\n=> {c.text}" if generator.seq2seq else c.prompt + c.text)


def cmd_quantize(args: argparse.Namespace) -> None:
    from llmlab.checkpoint.folder import read_quantization, save_checkpoint
    from llmlab.load import load_checkpoint
    from llmlab.model.quantize import QuantizationSpec, quantize_model

    if args.report:
        from llmlab.report.quantization import plot_report, quantize_report, report_json

        rows = quantize_report(args.checkpoint, args.data, log=lambda s: print(s, file=sys.stderr))
        out = Path(args.out or Path(args.checkpoint) / "quantization")
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(report_json(rows))
        plot_report(rows, out / "report.png")
        header = ["format", "disk MB", "weights MB", "perplexity", "change", "tok/s b1", "tok/s b8", "max layer error"]
        table = [
            [
                r.variant,
                f"{r.disk_mb:.1f}",
                f"{r.weight_memory_mb:.1f}",
                f"{r.perplexity:.3f}",
                f"{100 * r.perplexity_change:+.2f}%",
                f"{r.tokens_per_s_batch1:,.0f}",
                f"{r.tokens_per_s_batch8:,.0f}",
                f"{r.max_layer_error:.2e}",
            ]
            for r in rows
        ]
        _print_table(table, header)
        print(f"report: {out / 'report.json'}, chart: {out / 'report.png'}")
        return
    if args.out is None or args.to is None:
        raise LlmlabError("quantize needs OUT and --to", "e.g. llmlab quantize runs/main runs/main-int8 --to int8")
    spec = QuantizationSpec(
        format=args.to, scheme=args.scheme, group_size=args.group_size, skip=args.skip or [], embeddings=args.embeddings
    )
    spec.validate()
    ckpt = load_checkpoint(args.checkpoint)
    if read_quantization(ckpt.path):
        raise LlmlabError(f"{args.checkpoint} is already quantized", "quantize the original full-precision checkpoint")
    model = quantize_model(ckpt.model, spec)
    out = save_checkpoint(args.out, model, ckpt.tokenizer, ckpt.generation, quantization=spec.to_dict())
    before = (ckpt.path / "model.safetensors").stat().st_size
    after = (out / "model.safetensors").stat().st_size
    print(
        f"{out}: {spec.format}{' ' + spec.scheme if spec.format == 'int8' else ''}"
        f"{f', groups of {spec.group_size}' if spec.format == 'int4' else ''}; "
        f"weights {before / 1e6:,.1f} MB -> {after / 1e6:,.1f} MB ({before / after:.2f}x smaller)"
    )


def cmd_export(args: argparse.Namespace) -> None:
    from llmlab.hf.exporter import export_hf
    from llmlab.load import load_checkpoint

    name = export_hf(load_checkpoint(args.checkpoint), args.out)
    print(f"{args.out}: Hugging Face folder; load it with transformers' {name} (or its Auto class) and AutoTokenizer")


def cmd_import(args: argparse.Namespace) -> None:
    from llmlab.hf.importer import import_hf

    ckpt = import_hf(args.source, args.out)
    c = ckpt.model.config
    print(
        f"{args.out}: llmlab checkpoint of {args.source} ({c.family}, {ckpt.model.num_parameters():,} parameters, "
        f"{c.n_layer + (c.n_decoder_layer or 0)} layers, vocabulary {c.vocab_size:,})"
    )


def _load_for_inspection(args: argparse.Namespace):
    """A checkpoint in fp32 (exact probabilities and weights) on --device."""
    import torch

    from llmlab.device import resolve_device
    from llmlab.load import load_checkpoint

    return load_checkpoint(args.checkpoint, device=resolve_device(args.device), dtype=torch.float32)


def escape(text: str) -> str:
    """One table cell per line: newlines and tabs shown as \\n and \\t (the inverse of `unescape`)."""
    return text.replace("\n", "\\n").replace("\t", "\\t")


def cmd_fill_mask(args: argparse.Namespace) -> None:
    from llmlab.introspect.encode import fill_mask

    ckpt = _load_for_inspection(args)
    results = fill_mask(ckpt.model, ckpt.tokenizer, unescape(args.text), args.top_k)
    if args.json:
        print(json.dumps([[dataclasses.asdict(f) for f in fillers] for fillers in results]))
        return
    for n, fillers in enumerate(results, 1):
        rows = [[r, repr(f.token), f"{f.probability:.4f}", escape(f.text)] for r, f in enumerate(fillers, 1)]
        _print_table(rows, [f"mask {n}: rank", "token", "probability", "filled in"], right=False)


def cmd_embed(args: argparse.Namespace) -> None:
    from llmlab.introspect.encode import embed

    texts = [unescape(t) for t in args.text or []]
    if args.file:
        try:
            texts += [line for line in Path(args.file).read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise LlmlabError(
                f"cannot read --file {args.file}: {exc}", "pass a UTF-8 text file, one text a line"
            ) from None
    ckpt = _load_for_inspection(args)
    vectors = embed(ckpt.model, ckpt.tokenizer, texts, normalize=not args.raw)
    if args.json:
        for text, v in zip(texts, vectors.tolist()):
            print(json.dumps({"text": text, "embedding": [round(x, 6) for x in v]}))
        return
    print(f"{len(texts)} vectors of {vectors.shape[1]} dims ({'raw' if args.raw else 'unit length'}, mean-pooled)")
    for text, v in zip(texts, vectors.tolist()):
        print(f"{text[:40]!r}: [{', '.join(f'{x:.4f}' for x in v[:6])}, ...]")
    if len(texts) > 1:
        sims = (vectors @ vectors.T) if not args.raw else torch_cosine(vectors)
        header = ["cosine similarity"] + [f"{i}" for i in range(1, len(texts) + 1)]
        rows = [
            [f"{i} {t[:30]!r}"] + [f"{x:.3f}" for x in row] for i, (t, row) in enumerate(zip(texts, sims.tolist()), 1)
        ]
        _print_table(rows, header)


def torch_cosine(vectors):
    import torch.nn.functional as F

    unit = F.normalize(vectors, dim=-1)
    return unit @ unit.T


def cmd_attention(args: argparse.Namespace) -> None:
    from llmlab.introspect.attention import attention_maps, plot_attention

    ckpt = _load_for_inspection(args)
    maps = attention_maps(ckpt.model, ckpt.tokenizer, unescape(args.text), args.target)
    kind = args.kind or next(iter(maps))
    if kind not in maps:
        raise LlmlabError(f"a {ckpt.model.config.family} model has no {kind} attention", f"use {' or '.join(maps)}")
    amap = maps[kind]
    layer = args.layer if args.layer is not None else amap.weights.shape[0] - 1
    head = f"head{args.head}" if args.head is not None else "heads"
    out = Path(args.out or Path(args.checkpoint) / f"attention-{kind}-layer{layer % amap.weights.shape[0]}-{head}.png")
    plot_attention(amap, out, layer, args.head)
    print(
        f"{kind} attention: {amap.weights.shape[0]} layers x {amap.weights.shape[1]} heads over "
        f"{len(amap.query_tokens)} x {len(amap.key_tokens)} tokens; heat map: {out}"
    )


def cmd_next_token(args: argparse.Namespace) -> None:
    from llmlab.generation.config import GenerationConfig
    from llmlab.introspect.next_token import STAGES, next_token_logits, next_token_report, plot_next_token

    ckpt = _load_for_inspection(args)
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
    _print_table(rows, header)
    print(f"chart: {out}")


def _task_from_args(args: argparse.Namespace):
    from llmlab.evaluation.tasks import load_task

    options = {}
    if args.task.endswith(".jsonl"):
        options = dict(
            template=unescape(args.template) if args.template else None,
            input_field=args.input_field,
            label_field=args.label_field,
            labels=args.labels.split(",") if args.labels else None,
            instruction=unescape(args.instruction or ""),
            demonstrations=args.demonstrations,
        )
    return load_task(args.task, **options)


def _parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise LlmlabError(f"--shots {text!r} is not a list of counts", "write it like 0,1,3,5") from None
    if not shots or min(shots) < 0:
        raise LlmlabError(f"--shots {text!r} needs counts >= 0", "write it like 0,1,3,5")
    return shots


def cmd_prompt(args: argparse.Namespace) -> None:
    from llmlab.evaluation.evaluate import Scorer, prompts_for

    args.checkpoint = args.checkpoint or args.model
    if not args.checkpoint:
        raise LlmlabError("prompt needs the model whose tokenizer and context count", "pass CKPT or --model CKPT")
    if not args.task:
        raise LlmlabError("no task given", "pass --task sentiment|dialogsum|icl-synthetic|FILE.jsonl")
    task = _task_from_args(args)
    ckpt = _load_for_inspection(args)
    scorer = Scorer(ckpt.model, ckpt.tokenizer)
    if not 0 <= args.index < len(task.examples):
        raise LlmlabError(f"--index {args.index} is out of range", f"the task has {len(task.examples)} examples")
    example = task.examples[args.index]
    reserve = args.max_new_tokens
    if task.kind == "classification":
        reserve = max(len(ckpt.tokenizer.encode(task.template.answer(label))) for label in task.labels) + 2
    (prompt,) = prompts_for(task, scorer, [example], args.shots, args.select, args.seed, reserve)
    if args.json:
        print(json.dumps(dataclasses.asdict(prompt)))
        return
    print(prompt.text)
    print(
        f"--- {prompt.tokens} tokens with this model's tokenizer ({scorer.budget(reserve)} allowed, {reserve} "
        f"kept for the answer); {prompt.shots_used} of {prompt.shots_requested} examples"
    )
    for note in prompt.notes:
        print(f"--- note: {note}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from llmlab.evaluation.evaluate import evaluate_task, perplexity, plot_shots
    from llmlab.generation.config import GenerationConfig

    ckpt = _load_for_inspection(args)
    if args.perplexity:
        try:
            text = Path(args.perplexity).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise LlmlabError(f"cannot read {args.perplexity}: {exc}", "pass a UTF-8 text file") from None
        ppl, tokens = perplexity(ckpt.model, ckpt.tokenizer, text, args.stride)
        result = {"perplexity": ppl, "tokens": tokens, "nats_per_token": math.log(ppl)}
        print(
            json.dumps(result)
            if args.json
            else f"perplexity {ppl:.3f} over {tokens:,} tokens ({math.log(ppl):.4f} nats/token)"
        )
        return
    if not args.task:
        raise LlmlabError("nothing to evaluate", "pass --task NAME|FILE.jsonl or --perplexity FILE")
    task = _task_from_args(args)
    generation = GenerationConfig(greedy=True, max_new_tokens=args.max_new_tokens)
    results = evaluate_task(
        ckpt.model, ckpt.tokenizer, task, _parse_shots(args.shots), args.limit, args.seed, args.select,
        args.length_normalize, generation, log=lambda s: print(s, file=sys.stderr),
    )  # fmt: skip
    local = Path(args.checkpoint)
    out = Path(args.out or (local / f"eval-{task.name}" if local.is_dir() else f"runs/eval-{task.name}"))
    out.mkdir(parents=True, exist_ok=True)
    records = [dataclasses.asdict(r) for r in results]
    (out / "results.json").write_text(json.dumps({"task": task.name, "seed": args.seed, "results": records}, indent=2))
    plot_shots(results, out / "shots.png", f"{task.name}: {args.checkpoint}")
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "predictions"} for r in records]))
        return
    names = list(results[0].metrics)
    rows = []
    for r in results:
        cells = []
        for name in names:
            low, high = r.intervals.get(name, (None, None))
            cells.append(f"{r.metrics[name]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else ""))
        rows.append([r.shots, f"{r.mean_shots_used:.1f}", *cells])
    _print_table(rows, ["shots", "fit", *names])
    print(f"{results[0].examples} examples of {task.name} ({task.kind}); [95% bootstrap interval]; "
          f"results: {out / 'results.json'}, plot: {out / 'shots.png'}")  # fmt: skip


def _floats(option: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LlmlabError(f"{option} {text!r} is not a list of numbers", "write it like 0,0.7,1.0") from None


def _ints(option: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LlmlabError(f"{option} {text!r} is not a list of whole numbers", "write it like 0,50") from None


def cmd_sweep(args: argparse.Namespace) -> None:
    from llmlab.evaluation.evaluate import plot_sweep, quality_metric, sweep

    if not args.task:
        raise LlmlabError("no task to sweep", "pass --task NAME|FILE.jsonl")
    task = _task_from_args(args)
    ckpt = _load_for_inspection(args)
    rows = sweep(
        ckpt.model, ckpt.tokenizer, task, _floats("--temperature", args.temperature),
        _ints("--top-k", args.top_k), _floats("--top-p", args.top_p), args.shots, args.limit,
        args.seed, args.max_new_tokens, log=lambda s: print(s, file=sys.stderr),
    )  # fmt: skip
    local = Path(args.checkpoint)
    out = Path(args.out or (local / f"sweep-{task.name}" if local.is_dir() else f"runs/sweep-{task.name}"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    plot_sweep(rows, out / "sweep.png", f"{task.name}, {args.shots} shots: quality vs diversity")
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    names = list(rows[0].metrics)
    table = [[r.temperature, r.top_k or "off", r.top_p, *(f"{r.metrics[n]:.3f}" for n in names)] for r in rows]
    _print_table(table, ["temperature", "top-k", "top-p", *names])
    best = max(rows, key=lambda r: r.metrics[quality_metric(rows)])
    print(f"best {quality_metric(rows)}: temperature {best.temperature}, top-k {best.top_k or 'off'}, "
          f"top-p {best.top_p}; results: {out / 'sweep.json'}, plot: {out / 'sweep.png'}")  # fmt: skip


def cmd_presets(args: argparse.Namespace) -> None:
    from llmlab.config import PRESETS, ModelConfig
    from llmlab.model import build_model

    vocab = getattr(args, "vocab_size", 8192)
    rows = []
    for name in PRESETS:
        c = ModelConfig.from_preset(name, vocab_size=vocab)
        layers = f"{c.n_layer}+{c.n_decoder_layer}" if c.n_decoder_layer else str(c.n_layer)
        rows.append(
            [
                name,
                c.family,
                f"{build_model(c).num_parameters():,}",
                layers,
                c.n_embd,
                c.n_head,
                c.n_kv_head,
                c.block_size,
                c.positions,
                c.norm,
                c.mlp,
            ]
        )
    header = ["preset", "family", "parameters", "layers", "width", "heads", "kv", "context", "positions", "norm", "mlp"]
    _print_table(rows, header)
    print(f"parameters at a {vocab:,}-token vocabulary; encoder-decoder layers are encoder+decoder")


def _print_table(rows: list[list[str]], header: list[str] | None = None, right: bool = True) -> None:
    """A rich table; the first column left-aligned, the rest right-aligned (numbers) unless right=False."""
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=header is not None, box=None if header is None else rich_box())
    for i, name in enumerate(header or [""] * len(rows[0])):
        table.add_column(name, justify="right" if i and right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*(str(c) for c in row))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)


def rich_box():
    from rich import box

    return box.SIMPLE_HEAD


def cmd_plan_model(args: argparse.Namespace) -> None:
    from llmlab.config import ModelConfig
    from llmlab.plan.model import parameter_breakdown

    if args.config:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise LlmlabError(
                f"cannot read --config {args.config}: {exc}", "pass a JSON file of ModelConfig fields"
            ) from None
        config = ModelConfig.from_dict(data.get("model", data))  # a checkpoint's config.json works too
    else:
        config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size)
    parts = parameter_breakdown(config)
    total = sum(parts.values())
    if args.json:
        print(json.dumps({**parts, "total": total}))
        return
    rows = [[name.replace("_", "-"), f"{n:,}", f"{n / total:.1%}"] for name, n in parts.items()]
    _print_table([*rows, ["total", f"{total:,}", "100.0%"]], ["component", "parameters", "share"])


def cmd_plan_formats(args: argparse.Namespace) -> None:
    from llmlab.plan.formats import FLOAT_FORMATS, encode_float, quantize_int8

    floats = [encode_float(args.value, name) for name in FLOAT_FORMATS]
    try:
        others = [float(v) for v in args.tensor.split(",")] if args.tensor else []
    except ValueError:
        raise LlmlabError(f"--tensor {args.tensor!r} is not a list of numbers", "write it like 1.5,-2,0.25") from None
    tensor = others + [args.value]
    ints = [quantize_int8(tensor, method) for method in ("absmax", "zeropoint")]
    if args.json:
        print(
            json.dumps(
                {"floats": [dataclasses.asdict(f) for f in floats], "int8": [dataclasses.asdict(q) for q in ints]}
            )
        )
        return
    rows = [
        [
            f.format,
            f.bits,
            f"{f.stored:.10g}",
            f"{f.abs_error:.3g}",
            f"{f.max:.5g}",
            f"{f.smallest_normal:.3g}",
            f"{f.eps:.3g}" + ("  (out of range: saturated)" if abs(args.value) > f.max else ""),
        ]
        for f in floats
    ]
    _print_table(rows, ["format", "sign exponent fraction", "stored", "error", "max", "min normal", "epsilon"])
    print(f"\nint8 of the tensor {tensor} (the value is its last element):")
    rows = [
        [
            q.method,
            f"{q.scale:.6g}",
            str(q.zero_point),
            str(q.quantized[-1]),
            f"{q.dequantized[-1]:.10g}",
            f"{q.max_abs_error:.3g}",
        ]
        for q in ints
    ]
    _print_table(rows, ["method", "scale", "zero point", "int8", "dequantized", "max error over tensor"])


def _verify_flops(args: argparse.Namespace) -> None:
    """Counted FLOPs of real llmlab models (every family) against the formula and against 6ND."""
    from llmlab.plan.verify import verify_flops

    cases = [
        ("gpt2-micro", 2, 256, None),
        ("llama-micro", 2, 256, None),
        ("bert-micro", 2, 128, None),
        ("t5-micro", 2, 128, 128),
        ("t5-micro", 2, 128, 32),
        ("transformer-base", 1, 64, 64),
    ]
    checks = verify_flops(cases)
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks]))
        return
    rows = [
        [c.preset, c.shape, f"{c.counted:.4g}", f"{c.formula:.4g}", f"{c.counted / c.formula:.4f}",
         f"{c.six_nd:.4g}", f"{c.counted / c.six_nd:.3f}"]
        for c in checks
    ]  # fmt: skip
    header = ["model", "batch", "counted FLOPs", "formula", "counted/formula", "6ND", "counted/6ND"]
    _print_table(rows, header)
    print("counted: torch.utils.flop_counter over one forward + backward of llmlab's loss")


def cmd_plan_compute(args: argparse.Namespace) -> None:
    from llmlab.plan import compute

    if args.verify:
        _verify_flops(args)
        return
    params, tokens, flops = args.params, args.tokens, args.budget_flops
    config = None
    if args.preset:
        import torch

        from llmlab.config import ModelConfig
        from llmlab.model import build_model

        if params is not None:
            raise LlmlabError("both --params and --preset given", "pass one: the preset's parameters are counted")
        config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size)
        with torch.device("meta"):  # shapes only
            params = float(build_model(config).num_parameters())
    for flag, value in (
        ("--params", params),
        ("--tokens", tokens),
        ("--budget-flops", flops),
        ("--budget-pf-days", args.budget_pf_days),
        ("--flops-per-token", args.flops_per_token),
        ("--gpus", args.gpus),
    ):
        if value is not None and value <= 0:
            raise LlmlabError(f"{flag} must be positive, got {value:g}", "pass a positive number, e.g. 7e9")
    if args.budget_pf_days is not None:
        flops = args.budget_pf_days * compute.PF_DAY_FLOPS
    if flops is None:
        if params is None or tokens is None:
            raise LlmlabError("no budget given", "pass --params and --tokens, or --budget-flops/--budget-pf-days")
        flops = compute.training_flops(params, tokens, args.flops_per_token)
    elif params is not None and tokens is None:
        tokens = compute.tokens_for_budget(flops, params, args.flops_per_token)
    fit = compute.CHINCHILLA_FITS[args.fit]
    opt_params, opt_tokens = fit.optimal(flops)
    rule_params, rule_tokens = compute.twenty_tokens_per_parameter(flops)
    days = compute.gpu_days(flops, args.gpu, args.dtype, args.mfu) / args.gpus
    result = {
        "flops": flops,
        "pf_days": compute.pf_days(flops),
        "params": params,
        "tokens": tokens,
        "gpu": args.gpu,
        "dtype": args.dtype,
        "gpus": args.gpus,
        "mfu": args.mfu,
        "days": days,
        "predicted_loss": fit.loss(params, tokens) if params and tokens else None,
        "chinchilla_fit": args.fit,
        "optimal_params": opt_params,
        "optimal_tokens": opt_tokens,
        "optimal_loss": fit.loss(opt_params, opt_tokens),
        "rule_params": rule_params,
        "rule_tokens": rule_tokens,
    }
    if args.seq_len is not None:
        if args.seq_len < 1:
            raise LlmlabError(f"--seq-len must be >= 1, got {args.seq_len}", "pass the context length, e.g. 1024")
        if config is None or config.family != "decoder":
            raise LlmlabError(
                "--seq-len gives a decoder's FLOPs per token with attention",
                "pass it with --preset of a decoder (gpt2-*, llama-*)",
            )
    exact = None
    if config is not None and args.seq_len:
        from llmlab.plan.flops import flops_per_token

        exact = flops_per_token(config, args.seq_len)
        result["training_flops_per_token_with_attention"] = exact
    if args.chinchilla:
        from llmlab.plot import plot_chinchilla

        point = (params, tokens) if params and tokens else None
        plot_chinchilla(fit, flops, Path(args.chinchilla), point, title=f"Chinchilla fit {args.fit}")
        result["plot"] = args.chinchilla
    if args.json:
        print(json.dumps(result))
        return
    pf = f"{result['pf_days']:,.0f}" if result["pf_days"] >= 10 else f"{result['pf_days']:.3g}"
    rows = [["training compute", f"{flops:.2e} FLOPs = {pf} petaflop/s-days"]]
    if params and tokens:
        rows.append(["model and data", f"{params:.4g} parameters x {tokens:.4g} tokens ({tokens / params:.1f}/param)"])
        rows.append([f"predicted loss ({args.fit})", f"{result['predicted_loss']:.3f}"])
    if params:
        rows.append(["generation", f"{compute.inference_flops(params, 1):.3g} FLOPs per token (2N)"])
    if exact:
        rows.append(
            [
                f"training FLOPs per token at {args.seq_len} positions",
                f"{exact:.3g} with attention (6 x matmul weights + 12 L s h) = {exact / (6 * params):.3f} x 6N",
            ]
        )
    rows.append([f"on {args.gpus} x {args.gpu} {args.dtype} at {args.mfu:.0%} MFU", f"{days:,.1f} days"])
    rows.append(
        [
            f"compute-optimal ({args.fit})",
            f"{opt_params:.3g} parameters x {opt_tokens:.3g} tokens, loss {result['optimal_loss']:.3f}",
        ]
    )
    rows.append(["20 tokens per parameter", f"{rule_params:.3g} parameters x {rule_tokens:.3g} tokens"])
    _print_table(rows, right=False)
    if args.chinchilla:
        print(f"iso-loss contours with the frontier and the budget: {args.chinchilla}")


def _size(n: float) -> str:
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= factor:
            return f"{n / factor:,.2f} {unit}"
    return f"{n:,.0f} B"


def _verify_memory(args: argparse.Namespace) -> list:
    """Exact model-state checks on CPU, then the peak of a step on `--device` (a GPU when there is one):
    small models on CPU, ~100M-parameter ones on a GPU, where the fixed cuBLAS workspaces are noise."""
    import torch

    from llmlab.config import ModelConfig
    from llmlab.device import resolve_device
    from llmlab.plan.verify import verify, verify_peak

    device = resolve_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = device.type == "cuda"
    size = "small" if on_gpu else "micro"
    presets = [f"gpt2-{size}", f"llama-{size}", "bert-base" if on_gpu else "bert-micro", f"t5-{size}"]
    batch, seq_len = args.batch or (8 if on_gpu else 4), args.seq_len or (512 if on_gpu else 256)
    checks = verify(["gpt2-nano", "gpt2-micro", "llama-nano", "llama-micro"])
    vocab_size = 32768 if on_gpu else 8192
    for dtype in (torch.bfloat16, torch.float32):  # autocast (the trainer's default) and plain fp32
        for preset in presets:  # encoder-decoders: targets a quarter of the input, as span corruption makes
            seq2seq = ModelConfig.from_preset(preset).family == "encoder-decoder"
            target_len = (args.target_len or seq_len // 4) if seq2seq else None
            checks += verify_peak([preset], batch, seq_len, device, dtype, vocab_size, target_len=target_len)
    return checks


def _step_peak(config, batch: int, seq_len: int, args: argparse.Namespace):
    """The peak of one `llmlab pretrain --dtype D` step on one device, alone or in DDP (plan/peak.py),
    or None where it does not apply: sharded plans (FSDP's gathered blocks are not modelled), int8/int4."""
    import torch

    from llmlab.model import build_model
    from llmlab.plan.peak import ModelShape, training_step_peak

    data_parallel = args.gpus > 1 and args.strategy in ("ddp", "NO_SHARD")
    if (args.gpus > 1 and not data_parallel) or args.dtype not in ("fp32", "bf16", "fp16"):
        return None
    with torch.device("meta"):  # shapes only: a 70B config costs no memory
        shape = ModelShape.of(build_model(config))
    precision = "fp32" if args.dtype == "fp32" else "autocast"
    return training_step_peak(
        config, shape, batch, seq_len, args.device, precision, target_len=args.target_len, ddp=data_parallel
    )


def cmd_plan_memory(args: argparse.Namespace) -> None:
    from llmlab.config import ModelConfig
    from llmlab.plan import memory

    if args.verify:
        checks = _verify_memory(args)  # measures on --device, else a GPU if there is one
        if args.json:
            print(json.dumps([dict(dataclasses.asdict(c), ratio=c.ratio) for c in checks]))
            return
        rows = [[c.preset, c.component, f"{c.predicted:,.0f}", f"{c.measured:,.0f}", f"{c.ratio:.3f}"] for c in checks]
        _print_table(rows, ["model", "component", "predicted bytes", "measured bytes", "measured/predicted"])
        on_gpu = any("(cuda" in c.component for c in checks)
        print(
            "peaks measured by torch.cuda.max_memory_allocated"
            if on_gpu
            else "peaks measured from the CPU allocator's malloc/free events; on a GPU (--device cuda) "
            "the same check reads torch.cuda.max_memory_allocated"
        )
        return
    args.device = args.device or "cuda"  # the step peak describes a GPU unless told otherwise
    config = None
    if args.model:
        from llmlab.checkpoint.folder import read_model_config, verify_checkpoint
        from llmlab.hf.importer import is_hf_source, read_hf_config, resolve_folder

        if is_hf_source(args.model):  # only config.json is read, never the weights
            config = read_hf_config(resolve_folder(args.model))[1]
        else:
            config = read_model_config(verify_checkpoint(args.model))
    elif args.preset:
        config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size)
    if config is not None:
        import torch

        from llmlab.model import build_model

        with torch.device("meta"):  # shapes only: a 70B config costs no memory
            params = float(build_model(config).num_parameters())
    elif args.params:
        params = args.params
    else:
        raise LlmlabError("no model given", "pass --params N, --preset NAME or --model CKPT")
    if (args.batch or args.seq_len) and config is None:
        raise LlmlabError("activations from --batch/--seq-len need the architecture", "pass --preset or --model")
    for flag, value in (("--batch", args.batch), ("--seq-len", args.seq_len), ("--target-len", args.target_len)):
        if value is not None and value < 1:
            raise LlmlabError(f"{flag} must be >= 1, got {value}", f"pass a positive {flag}")
    if bool(args.batch) != bool(args.seq_len):
        raise LlmlabError("--batch and --seq-len go together", "pass both, or neither for model states only")
    if args.target_len and (config is None or config.family != "encoder-decoder"):
        raise LlmlabError("--target-len is an encoder-decoder's decoder length", "leave it out for this model")
    strategy = {"NO_SHARD": "ddp", "SHARD_GRAD_OP": "zero2", "FULL_SHARD": "zero3"}.get(args.strategy, args.strategy)
    plan = memory.plan_memory(
        params,
        args.dtype,
        args.optimizer,
        args.mixed_precision,
        args.gpus,
        strategy,
        config,
        args.batch,
        args.seq_len,
        args.recompute,
        args.target_len,
    )
    capacity = memory.parse_size(args.gpu_memory) if args.gpu_memory else None
    step = _step_peak(config, args.batch, args.seq_len, args) if config and args.batch and args.seq_len else None
    result = {
        "params": params,
        "strategy": strategy,
        "gpus": args.gpus,
        "training": plan.training,
        "model_states": plan.model_states,
        "training_total": plan.training_total,
        "inference": plan.inference,
        "inference_total": plan.inference_total,
        "gpu_memory": capacity,
        "training_fits": None if capacity is None else plan.training_total <= capacity,
        "inference_fits": None if capacity is None else plan.inference_total <= capacity,
    }
    if step is not None:
        result["llmlab_step"] = {
            "device": args.device,
            "precision": "fp32" if args.dtype == "fp32" else "autocast",
            "components": step.components,
            "phases": step.phases,
            "peak": step.peak,
            "peak_phase": step.peak_phase,
            "fits": None if capacity is None else step.peak <= capacity,
        }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{params:,.0f} parameters; training per GPU with {strategy} on {args.gpus} GPU(s), "
        f"{'mixed precision' if args.mixed_precision else args.dtype}, {args.optimizer}"
    )
    rows = [[name, _size(n), f"{n / params:.2f}"] for name, n in plan.training.items()]
    rows.insert(3, ["  model states (what ZeRO shards)", _size(plan.model_states), f"{plan.model_states / params:.2f}"])
    rows.append(["total", _size(plan.training_total), f"{plan.training_total / params:.2f}"])
    _print_table(rows, ["training", "bytes", "per parameter"])
    print()
    rows = [[name, _size(n)] for name, n in plan.inference.items()] + [["total", _size(plan.inference_total)]]
    _print_table(rows, [f"inference ({args.dtype})", "bytes"])
    if step is not None:
        what = "fp32" if args.dtype == "fp32" else f"{args.dtype} autocast over fp32 weights"
        where = f"one {args.device} device" + (f" of {args.gpus} in DDP" if args.gpus > 1 else "")
        print(f"\nllmlab pretrain on {where} ({what}, AdamW): alive at each high point of a step")
        rows = [[name, _size(n)] for name, n in step.components.items() if n]
        rows += [[f"at the {phase}", _size(n)] for phase, n in step.phases.items()]
        rows.append([f"peak (at the {step.peak_phase})", _size(step.peak)])
        _print_table(rows, ["component / phase", "bytes"])
    if capacity is not None:
        verdict = lambda fits: "fits" if fits else "does not fit"  # noqa: E731
        print(
            f"\non {_size(capacity)} per GPU: training {verdict(result['training_fits'])}, "
            f"inference {verdict(result['inference_fits'])}"
            + ("" if step is None else f", an llmlab pretrain step {verdict(step.peak <= capacity)}")
        )


def build_parser() -> argparse.ArgumentParser:
    from llmlab.generation.config import GenerationConfig
    from llmlab.train import TrainConfig

    parser = argparse.ArgumentParser(prog="llmlab", description="Train, sample and study language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help="pre-train a model of any family on your text (clm, mlm, span, seq2seq)")
    add_dataclass_options(p, TrainConfig, TRAIN_HELP)
    p.set_defaults(func=cmd_pretrain)

    g = sub.add_parser("generate", help="generate text from a checkpoint")
    g.add_argument("checkpoint", help="run folder written by pretrain, or a Hugging Face folder or hub id")
    g.add_argument("--prompt", action="append", default=argparse.SUPPRESS, help="prompt text (repeatable)")
    g.add_argument("--prompts-file", default=argparse.SUPPRESS, help="one prompt a line (\\n for newlines)")
    add_dataclass_options(g, GenerationConfig, GEN_HELP)
    g.add_argument("--stream", action="store_true", default=argparse.SUPPRESS, help="print tokens as they come")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per sample")
    g.add_argument("--device", default=argparse.SUPPRESS, help="auto, cpu, cuda, cuda:N or mps")
    g.add_argument("--dtype", default=argparse.SUPPRESS, help="auto (bf16 where fast), fp32, bf16, fp16")
    g.set_defaults(func=cmd_generate)

    def inspection(name: str, help_text: str):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument(
            "checkpoint", nargs="?" if name == "prompt" else None,
            help="run folder written by pretrain, or a Hugging Face folder or hub id",
        )  # fmt: skip
        sp.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N or mps")
        sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    fm = inspection("fill-mask", "top-k tokens for each [MASK] of a text (encoder models)")
    fm.add_argument("text", help='text with [MASK] where a token is missing, e.g. "def [MASK](self):"')
    fm.add_argument("--top-k", type=int, default=5)
    fm.set_defaults(func=cmd_fill_mask)

    em = inspection("embed", "mean-pooled sentence vectors, with their cosine similarities")
    em.add_argument("--text", action="append", help="a text to embed (repeatable)")
    em.add_argument("--file", help="a UTF-8 file, one text a line")
    em.add_argument("--raw", action="store_true", help="do not scale vectors to unit length")
    em.set_defaults(func=cmd_embed)

    at = inspection("attention", "heat map of attention weights (self- or cross-attention) as a PNG")
    at.add_argument("--text", required=True, help="input text (the encoder's, for encoder-decoder models)")
    at.add_argument("--target", help="encoder-decoder: decoder text (default: the model's greedy output)")
    at.add_argument("--kind", choices=["encoder", "decoder", "cross"], help="which attention (default: the first)")
    at.add_argument("--layer", type=int, help="layer index, negative from the end (default: last)")
    at.add_argument("--head", type=int, help="one head (default: a grid of all heads)")
    at.add_argument("--out", help="PNG path (default: in the checkpoint folder)")
    at.set_defaults(func=cmd_attention)

    nt = inspection("next-token", "next-token probabilities before and after temperature, top-k, top-p")
    nt.add_argument("--prompt", required=True)
    nt.add_argument("--target-prefix", default="", help="encoder-decoder: decoder text already written")
    nt.add_argument("--temperature", type=float, default=1.0)
    nt.add_argument("--top-k", type=int, default=0)
    nt.add_argument("--top-p", type=float, default=1.0)
    nt.add_argument("--show", type=int, default=10, help="how many of the likeliest tokens to show")
    nt.add_argument("--out", help="PNG path (default: next-token.png in the checkpoint folder)")
    nt.set_defaults(func=cmd_next_token)

    im = sub.add_parser("import", help="convert a Hugging Face folder or hub id (GPT-2, Llama, T5, BERT) once")
    im.add_argument("source", help="a Hugging Face model folder, or a hub id such as google/flan-t5-small")
    im.add_argument("out", help="the llmlab checkpoint folder to write")
    im.set_defaults(func=cmd_import)

    def task_options(sp) -> None:
        sp.add_argument("--task", help="sentiment, dialogsum, icl-synthetic, or a .jsonl file")
        sp.add_argument("--select", default="random", choices=["first", "random", "balanced"], help="which shots")
        sp.add_argument("--seed", type=int, default=0, help="seed for the examples and the shots")
        sp.add_argument("--max-new-tokens", type=int, default=64, help="tokens kept for a generated answer")
        sp.add_argument(
            "--template", help="JSONL task: one example, answer last, e.g. 'Review: {text}\\nLabel: {label}'"
        )
        sp.add_argument("--instruction", help="JSONL task: text before the examples")
        sp.add_argument("--input-field", default="text", help="JSONL task: the input field (cut if too long)")
        sp.add_argument("--label-field", default="label", help="JSONL task: the answer field")
        sp.add_argument("--labels", help="JSONL task: the classes, comma-separated (default: the distinct answers)")
        sp.add_argument("--demonstrations", help="JSONL task: a file to draw shots from (default: its first half)")

    pr = inspection("prompt", "print a zero/one/few-shot prompt as the model will read it, with its token count")
    pr.add_argument("--model", help="the checkpoint, as an option (same as the positional one)")
    task_options(pr)
    pr.add_argument("--shots", type=int, default=0)
    pr.add_argument("--index", type=int, default=0, help="which evaluated example is the query")
    pr.set_defaults(func=cmd_prompt)

    ev = inspection("evaluate", "task metrics against the number of shots (table, JSON, PNG), or perplexity")
    task_options(ev)
    ev.add_argument("--shots", default="0,1,3,5", help="shot counts, comma-separated")
    ev.add_argument("--limit", type=int, help="evaluate a seeded sample of this many examples")
    ev.add_argument("--length-normalize", action="store_true", help="rank labels by mean, not total, log-probability")
    ev.add_argument("--perplexity", help="a text file: its perplexity with a sliding window instead")
    ev.add_argument("--stride", type=int, help="perplexity: tokens newly scored per window (default half the context)")
    ev.add_argument("--out", help="folder for results.json and shots.png (default: in the checkpoint folder)")
    ev.set_defaults(func=cmd_evaluate)

    sw = inspection("sweep", "quality and diversity for every temperature / top-k / top-p combination")
    task_options(sw)
    sw.add_argument("--temperature", default="0,0.7,1.0", help="comma-separated (0 = greedy)")
    sw.add_argument("--top-k", default="0,50", help="comma-separated (0 = off)")
    sw.add_argument("--top-p", default="0.9,1.0", help="comma-separated (1 = off)")
    sw.add_argument("--shots", type=int, default=0)
    sw.add_argument("--limit", type=int, default=100, help="examples per setting")
    sw.add_argument("--out", help="folder for sweep.json and sweep.png (default: in the checkpoint folder)")
    sw.set_defaults(func=cmd_sweep)

    e = sub.add_parser("export", help="write a checkpoint as a Hugging Face folder (GPT-2, Llama, T5, BERT)")
    e.add_argument("checkpoint")
    e.add_argument("out")
    e.add_argument("--to", default="hf", choices=["hf"])
    e.set_defaults(func=cmd_export)

    q = sub.add_parser("quantize", help="quantize a checkpoint's weights to fp16, bf16, int8 or int4")
    q.add_argument("checkpoint")
    q.add_argument("out", nargs="?", help="output folder (with --report: where report.json/png go)")
    q.add_argument("--to", choices=["fp16", "bf16", "int8", "int4"])
    q.add_argument("--embeddings", action="store_true", help="quantize the token embedding and output head too")
    q.add_argument("--report", action="store_true", help="measure size, perplexity and speed for every format")
    q.add_argument("--data", help="text for --report's perplexity (default: the checkpoint's training data)")
    q.add_argument("--scheme", default="absmax", choices=["absmax", "zeropoint"], help="int8 scales (int4: zero-point)")
    q.add_argument("--group-size", type=int, default=128, help="int4 columns per scale and zero point")
    q.add_argument(
        "--skip", action="append", help="keep layers matching this pattern (e.g. 'decoder.blocks.0.*') in 16-bit"
    )
    q.set_defaults(func=cmd_quantize)

    plan = sub.add_parser(
        "plan", help="plan before spending: parameters, memory, compute, number formats"
    ).add_subparsers(dest="plan_command", required=True)
    pm = plan.add_parser("model", help="parameters by component for a preset or a config file")
    pm.add_argument("--preset", default="llama-micro")
    pm.add_argument("--config", help="a JSON file of ModelConfig fields, or a checkpoint's config.json")
    pm.add_argument("--vocab-size", type=int, default=8192)
    pm.add_argument("--json", action="store_true")
    pm.set_defaults(func=cmd_plan_model)
    pmem = plan.add_parser("memory", help="bytes of weights, gradients, optimizer, activations, KV cache per GPU")
    pmem.add_argument("--params", type=float, help="parameter count (e.g. 7e9)")
    pmem.add_argument("--preset", help="count parameters and take the architecture from a preset")
    pmem.add_argument("--model", help="an llmlab checkpoint folder, or a Hugging Face folder or hub id")
    pmem.add_argument("--vocab-size", type=int, default=8192)
    pmem.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16", "int8", "int4"])
    pmem.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd", "adam8bit"])
    pmem.add_argument("--mixed-precision", action="store_true", help="16-bit weights/grads + fp32 master and states")
    pmem.add_argument("--batch", type=int)
    pmem.add_argument("--seq-len", type=int)
    pmem.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    pmem.add_argument("--target-len", type=int, help="an encoder-decoder's target length (default: --seq-len)")
    pmem.add_argument("--gpus", type=int, default=1)
    pmem.add_argument(
        "--strategy",
        default="ddp",
        choices=["ddp", "zero1", "zero2", "zero3", "NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD"],
    )
    pmem.add_argument("--gpu-memory", help="memory per GPU, e.g. 80GB, to say whether it fits")
    pmem.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        help="device of the llmlab step's peak (its kernels differ); --verify measures there (default: a GPU if any)",
    )
    pmem.add_argument("--verify", action="store_true", help="compare predictions with real llmlab tensors")
    pmem.add_argument("--json", action="store_true")
    pmem.set_defaults(func=cmd_plan_memory)
    pc = plan.add_parser("compute", help="training FLOPs, petaflop/s-days, GPU-days, Chinchilla optimum")
    pc.add_argument("--params", type=float, help="parameters N (e.g. 7e9)")
    pc.add_argument("--preset", help="take N from a preset (with --seq-len: FLOPs per token with attention)")
    pc.add_argument("--vocab-size", type=int, default=8192)
    pc.add_argument("--seq-len", type=int, help="context length for the attention FLOPs (with --preset)")
    pc.add_argument("--verify", action="store_true", help="count the FLOPs of real llmlab models against 6ND")
    pc.add_argument("--tokens", type=float, help="training tokens D (e.g. 2e12)")
    pc.add_argument("--budget-flops", type=float, help="a compute budget instead of N and D")
    pc.add_argument("--budget-pf-days", type=float, help="a compute budget in petaflop/s-days")
    pc.add_argument("--flops-per-token", type=float, default=6.0, help="FLOPs per parameter per token (T5: 3)")
    pc.add_argument("--gpu", default="H100", help="V100, A100, H100 or H200")
    pc.add_argument("--dtype", default="bf16", help="fp32, tf32, bf16, fp16 or fp8 (as the GPU has)")
    pc.add_argument("--gpus", type=int, default=1)
    pc.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation, 0-1")
    pc.add_argument("--fit", default="hoffmann2022", choices=["hoffmann2022", "besiroglu2024"])
    pc.add_argument(
        "--chinchilla",
        nargs="?",
        const="chinchilla.png",
        metavar="PNG",
        help="draw iso-loss contours, the compute-optimal frontier and the budget (default chinchilla.png)",
    )
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=cmd_plan_compute)
    pf = plan.add_parser("formats", help="how a value is stored in fp32/fp16/bf16/fp8 and int8")
    pf.add_argument("value", type=float)
    pf.add_argument("--tensor", help="other values of the tensor for int8 quantization, comma-separated")
    pf.add_argument("--json", action="store_true")
    pf.set_defaults(func=cmd_plan_formats)

    s = sub.add_parser("presets", help="list the model presets with their parameter counts")
    s.add_argument("--vocab-size", type=int, default=8192)
    s.set_defaults(func=cmd_presets)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        args.func(args)
    except LlmlabError as exc:
        import os

        rank = f"rank {os.environ['RANK']}: " if int(os.environ.get("WORLD_SIZE", 1)) > 1 else ""  # under torchrun
        print(f"error: {rank}{exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
