"""Measuring a model on tasks: `prompt` (show what the model reads), `evaluate` (metrics against the
number of shots, or perplexity) and `sweep` (quality and diversity across sampling settings)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
from pathlib import Path

from llmlab.cli.common import add_inspection_parser, load_for_inspection, print_table, read_text, unescape
from llmlab.errors import LlmlabError


def _task_from_args(args: argparse.Namespace):
    """A built-in task by name, or a JSONL file described by the --template/--*-field options."""
    from llmlab.evaluation.tasks import load_task

    options = {"reasoning": getattr(args, "reasoning", "direct")}
    if args.task.endswith(".jsonl"):
        options = dict(
            template=unescape(args.template) if args.template else None,
            input_field=args.input_field,
            label_field=args.label_field,
            labels=args.labels.split(",") if args.labels else None,
            instruction=unescape(args.instruction or ""),
            demonstrations=args.demonstrations,
            reasoning=options["reasoning"],
        )
    return load_task(args.task, **options)


def parse_shots(text: str) -> list[int]:
    try:
        shots = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise LlmlabError(f"--shots {text!r} is not a list of counts", "write it like 0,1,3,5") from None
    if not shots or min(shots) < 0:
        raise LlmlabError(f"--shots {text!r} needs counts >= 0", "write it like 0,1,3,5")
    return shots


def parse_floats(option: str, text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LlmlabError(f"{option} {text!r} is not a list of numbers", "write it like 0,0.7,1.0") from None


def parse_ints(option: str, text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LlmlabError(f"{option} {text!r} is not a list of whole numbers", "write it like 0,50") from None


def _output_folder(args: argparse.Namespace, prefix: str, task_name: str) -> Path:
    """--out, else next to a local checkpoint (its adapter's, when one is put on it: the results are the
    adapted model's), else under runs/ (a hub id has no folder of its own)."""
    local = Path(getattr(args, "adapter", None) or args.checkpoint)
    out = Path(args.out or (local / f"{prefix}-{task_name}" if local.is_dir() else f"runs/{prefix}-{task_name}"))
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_prompt(args: argparse.Namespace) -> None:
    from llmlab.evaluation.evaluate import Scorer, prompts_for

    args.checkpoint = args.checkpoint or args.model
    if not args.checkpoint:
        raise LlmlabError("prompt needs the model whose tokenizer and context count", "pass CKPT or --model CKPT")
    if not args.task:
        raise LlmlabError("no task given", "pass --task sentiment|dialogsum|icl-synthetic|FILE.jsonl")
    task = _task_from_args(args)
    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
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


def _card_result(task: str, task_type: str, metric: str, value: float, interval, shots: int | None, examples: int,
                 dataset: str | None = None) -> dict:  # fmt: skip
    """One evaluation result as the model card records it (checkpoint/card.py)."""
    low, high = interval if interval else (None, None)
    return {"task": task, "task_type": task_type, "dataset": dataset or task, "metric": metric, "value": value,
            "low": low, "high": high, "shots": shots, "examples": examples}  # fmt: skip


def _record_on_card(args: argparse.Namespace, results: list[dict]) -> None:
    """Results go into the evaluated llmlab folder's evaluations.json and model card (an adapter's when one is
    put on the base: they are the adapted model's); a Hugging Face folder or hub id is left as it is."""
    from llmlab.checkpoint.card import is_card_folder, record_evaluation

    folder = Path(getattr(args, "adapter", None) or args.checkpoint)
    if results and is_card_folder(folder):
        try:
            record_evaluation(folder, results)
        except OSError as exc:  # a read-only checkpoint: the results are written elsewhere all the same
            print(f"warning: the model card of {folder} was not updated ({exc.strerror or exc})", file=sys.stderr)
            return
        print(f"model card: {folder / 'README.md'} (results added)", file=sys.stderr)


def _perplexity(args: argparse.Namespace, ckpt) -> None:
    from llmlab.evaluation.evaluate import perplexity

    text = read_text(args.perplexity)
    ppl, tokens = perplexity(ckpt.model, ckpt.tokenizer, text, args.stride)
    result = {"perplexity": ppl, "tokens": tokens, "nats_per_token": math.log(ppl)}
    name = Path(args.perplexity).name
    _record_on_card(args, [_card_result(f"perplexity on {name}", "text-generation", "perplexity", ppl, None, None,
                                        tokens, dataset=name)])  # fmt: skip
    print(
        json.dumps(result)
        if args.json
        else f"perplexity {ppl:.3f} over {tokens:,} tokens ({math.log(ppl):.4f} nats/token)"
    )


def _print_shot_table(results) -> None:
    """One row per shot count; each metric with its bootstrap interval where it has one."""
    names = list(results[0].metrics)
    rows = []
    for r in results:
        cells = []
        for name in names:
            low, high = r.intervals.get(name, (None, None))
            cells.append(f"{r.metrics[name]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if low is not None else ""))
        rows.append([r.shots, f"{r.mean_shots_used:.1f}", *cells])
    print_table(rows, ["shots", "fit", *names])


def cmd_evaluate(args: argparse.Namespace) -> None:
    from llmlab.evaluation.evaluate import evaluate_task, plot_shots
    from llmlab.generation.config import GenerationConfig

    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    if args.perplexity:
        _perplexity(args, ckpt)
        return
    if args.reward or args.toxicity:
        _evaluate_rewards(args, ckpt)
        return
    if not args.task:
        raise LlmlabError("nothing to evaluate", "pass --task NAME|FILE.jsonl, --perplexity FILE or --reward SPEC")
    if getattr(ckpt.model.config, "task", None):
        _evaluate_head(args, ckpt)
        return
    task = _task_from_args(args)
    generation = GenerationConfig(greedy=True, max_new_tokens=args.max_new_tokens)
    results = evaluate_task(
        ckpt.model, ckpt.tokenizer, task, parse_shots(args.shots), args.limit, args.seed, args.select,
        args.length_normalize, generation, log=lambda s: print(s, file=sys.stderr),
    )  # fmt: skip
    out = _output_folder(args, "eval", task.name)
    records = [dataclasses.asdict(r) for r in results]
    task_type = "text-classification" if task.labels else "text-generation"
    (out / "results.json").write_text(json.dumps({"task": task.name, "seed": args.seed, "results": records}, indent=2))
    plot_shots(results, out / "shots.png", f"{task.name}: {args.checkpoint}")
    _record_on_card(args, [_card_result(task.name, task_type, name, value, r.intervals.get(name), r.shots, r.examples)
                           for r in results for name, value in r.metrics.items()])  # fmt: skip
    if args.json:
        print(json.dumps([{k: v for k, v in r.items() if k != "predictions"} for r in records]))
        return
    _print_shot_table(results)
    print(f"{results[0].examples} examples of {task.name} ({task.kind}); [95% bootstrap interval]; "
          f"results: {out / 'results.json'}, plot: {out / 'shots.png'}")  # fmt: skip


def _evaluate_head(args: argparse.Namespace, ckpt) -> None:
    """A classifier or tagger on labelled data: `sentiment` (rt-polarity's test split), a CoNLL file, or
    records with --input-field and --label-field."""
    from llmlab.evaluation import head_eval

    head = ckpt.model.config.task
    if head == "tag":
        from llmlab.finetune.task_data import tagged_examples

        items = tagged_examples(args.task)
    elif args.task == "sentiment":
        from llmlab.evaluation.tasks import sentiment_task

        items = [(r["text"], r["label"]) for r in sentiment_task().examples]
    else:
        from llmlab.finetune.task_data import text_examples

        items = [(e.text, _gold(e.label, head)) for e in text_examples(args.task, args.input_field, args.label_field)]
    if args.limit and args.limit < len(items):
        items = random.Random(args.seed).sample(items, args.limit)
    if head == "tag":
        report = head_eval.evaluate_tagger(ckpt.model, ckpt.tokenizer, items, args.seed)
    else:
        scorer = {"classify": head_eval.evaluate_classifier, "multilabel": head_eval.evaluate_multilabel,
                  "regress": head_eval.evaluate_regressor}[head]  # fmt: skip
        report = scorer(ckpt.model, ckpt.tokenizer, [t for t, _ in items], [g for _, g in items], args.seed)
    name = Path(args.task).stem
    out = _output_folder(args, "eval", name)
    (out / "results.json").write_text(json.dumps(dataclasses.asdict(report), indent=2))
    task_type = "token-classification" if head == "tag" else "text-classification"
    _record_on_card(args, [_card_result(name, task_type, metric, value, report.intervals.get(metric), None,
                                        report.examples) for metric, value in report.metrics.items()])  # fmt: skip
    plot = (
        head_eval.plot_confusion(report, out / "confusion.png", f"{name}: {args.checkpoint}")
        if head == "classify"
        else None
    )
    if args.json:
        print(json.dumps(dataclasses.asdict(report)))
        return
    rows = [[k, f"{v:.4f}", _interval(report.intervals.get(k))] for k, v in report.metrics.items()]
    print_table(rows, ["metric", "value", "95% interval"])
    rows = [[k, f"{s['precision']:.4f}", f"{s['recall']:.4f}", f"{s['f1']:.4f}", s["support"]]
            for k, s in report.per_label.items()]  # fmt: skip
    if rows:
        print_table(rows, ["entity" if head == "tag" else "label", "precision", "recall", "f1", "support"])
    if head == "classify":
        matrix = [[f"true {n}", *row] for n, row in zip(report.labels, report.confusion)]
        print_table(matrix, ["", *(f"predicted {n}" for n in report.labels)])
    print(f"{report.examples} examples; results: {out / 'results.json'}" + (f", plot: {plot}" if plot else ""))


def _gold(value: object, head: str) -> object:
    """A record's label as the head's scorer takes it: a name, a list of names, or a number."""
    if head == "multilabel":
        return [str(v) for v in value] if isinstance(value, list) else [str(value)]
    if head == "regress":
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise LlmlabError(f"the score {value!r} is not a number", "give numeric labels") from None
    return str(value)


def _evaluate_rewards(args: argparse.Namespace, ckpt) -> None:
    """Sampled completions of --prompts under --reward (and --baseline, --reference, --toxicity)."""
    from llmlab.align.evaluation import reward_report
    from llmlab.align.rewards import load_reward
    from llmlab.cli.align import read_prompts
    from llmlab.generation.config import GenerationConfig

    if not args.prompts:
        raise LlmlabError("--reward and --toxicity score sampled completions of prompts", "pass --prompts FILE")
    prompts = read_prompts([], args.prompts)
    if args.limit and args.limit < len(prompts):
        prompts = random.Random(args.seed).sample(prompts, args.limit)
    toxicity = load_reward("toxicity") if args.toxicity else None
    reward = load_reward(args.reward, args.reward_label) if args.reward else toxicity
    load = lambda source: load_for_inspection(source, args.device).model if source else None  # noqa: E731
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), "max_new_tokens": args.max_new_tokens,
                                         "seed": args.seed, "num_samples": 1})  # fmt: skip
    report = reward_report(ckpt.model, ckpt.tokenizer, prompts, reward, config, load(args.baseline),
                           load(args.reference), toxicity, args.seed)  # fmt: skip
    prompts_name = Path(args.prompts).name
    _record_on_card(args, [_card_result(f"rewards on {prompts_name}", "text-generation", metric, value,
                                        report.intervals.get(metric), None, report.samples, dataset=prompts_name)
                           for metric, value in report.metrics.items()])  # fmt: skip
    if args.json:
        summary = {k: v for k, v in dataclasses.asdict(report).items() if k not in ("completions", "rewards")}
        print(json.dumps(summary))
        return
    rows = [[k, f"{v:.4f}", _interval(report.intervals.get(k))] for k, v in report.metrics.items()]
    print_table(rows, ["metric", "value", "95% interval"])
    print(
        f"{report.samples} prompts, one sample each with the checkpoint's sampling settings"
        + ("; KL from 4 unmodified samples per prompt" if args.reference else "")
    )


def _interval(bounds: tuple[float, float] | None) -> str:
    return "" if bounds is None else f"[{bounds[0]:.4f}, {bounds[1]:.4f}]"


def cmd_sweep(args: argparse.Namespace) -> None:
    from llmlab.evaluation.evaluate import plot_sweep, quality_metric, sweep

    if not args.task:
        raise LlmlabError("no task to sweep", "pass --task NAME|FILE.jsonl")
    task = _task_from_args(args)
    ckpt = load_for_inspection(args.checkpoint, args.device, args.adapter)
    rows = sweep(
        ckpt.model, ckpt.tokenizer, task, parse_floats("--temperature", args.temperature),
        parse_ints("--top-k", args.top_k), parse_floats("--top-p", args.top_p), args.shots, args.limit,
        args.seed, args.max_new_tokens, log=lambda s: print(s, file=sys.stderr),
    )  # fmt: skip
    out = _output_folder(args, "sweep", task.name)
    (out / "sweep.json").write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
    plot_sweep(rows, out / "sweep.png", f"{task.name}, {args.shots} shots: quality vs diversity")
    if args.json:
        print(json.dumps([dataclasses.asdict(r) for r in rows]))
        return
    names = list(rows[0].metrics)
    table = [[r.temperature, r.top_k or "off", r.top_p, *(f"{r.metrics[n]:.3f}" for n in names)] for r in rows]
    print_table(table, ["temperature", "top-k", "top-p", *names])
    best = max(rows, key=lambda r: r.metrics[quality_metric(rows)])
    print(f"best {quality_metric(rows)}: temperature {best.temperature}, top-k {best.top_k or 'off'}, "
          f"top-p {best.top_p}; results: {out / 'sweep.json'}, plot: {out / 'sweep.png'}")  # fmt: skip


def add_task_options(parser: argparse.ArgumentParser) -> None:
    """Which task, how its shots are chosen, and how a JSONL file is read as a task."""
    parser.add_argument("--task", help="sentiment, dialogsum, icl-synthetic, arithmetic, or a .jsonl file")
    parser.add_argument("--reasoning", default="direct", choices=("direct", "cot", "program"),
                        help="arithmetic: answer directly, by chain of thought, or by a sandboxed program")  # fmt: skip
    parser.add_argument("--select", default="random", choices=["first", "random", "balanced"], help="which shots")
    parser.add_argument("--seed", type=int, default=0, help="seed for the examples and the shots")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens kept for a generated answer")
    parser.add_argument(
        "--template", help="JSONL task: one example, answer last, e.g. 'Review: {text}\\nLabel: {label}'"
    )
    parser.add_argument("--instruction", help="JSONL task: text before the examples")
    parser.add_argument("--input-field", default="text", help="JSONL task: the input field (cut if too long)")
    parser.add_argument("--label-field", default="label", help="JSONL task: the answer field")
    parser.add_argument("--labels", help="JSONL task: the classes, comma-separated (default: the distinct answers)")
    parser.add_argument("--demonstrations", help="JSONL task: a file to draw shots from (default: its first half)")


def _register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    help_text = "task metrics against the number of shots (table, JSON, PNG), or perplexity"
    ev = add_inspection_parser(subparsers, "evaluate", help_text)
    add_task_options(ev)
    ev.add_argument("--shots", default="0,1,3,5", help="shot counts, comma-separated")
    ev.add_argument("--limit", type=int, help="evaluate a seeded sample of this many examples")
    ev.add_argument("--length-normalize", action="store_true", help="rank labels by mean, not total, log-probability")
    ev.add_argument("--perplexity", help="a text file: its perplexity with a sliding window instead")
    ev.add_argument("--stride", type=int, help="perplexity: tokens newly scored per window (default half the context)")
    ev.add_argument("--out", help="folder for results.json and shots.png (default: in the checkpoint folder)")
    ev.add_argument("--reward", help="score sampled completions of --prompts: a reward model or classifier, "
                    "module:function, or vader / toxicity / harmless")  # fmt: skip
    ev.add_argument("--reward-label", help="with a classifier as --reward: the label whose probability counts")
    ev.add_argument("--prompts", help="prompts for --reward/--toxicity: a text file or records with a prompt field")
    ev.add_argument("--baseline", help="a second model: the win rate of CKPT over it under --reward")
    ev.add_argument("--reference", help="the KL divergence of CKPT from this model (a decoder), per sequence")
    ev.add_argument("--toxicity", action="store_true", help="the share of samples alt-profanity-check flags")
    ev.set_defaults(func=cmd_evaluate)


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "print a zero/one/few-shot prompt as the model will read it, with its token count"
    pr = add_inspection_parser(subparsers, "prompt", help_text, optional_checkpoint=True)
    pr.add_argument("--model", help="the checkpoint, as an option (same as the positional one)")
    add_task_options(pr)
    pr.add_argument("--shots", type=int, default=0)
    pr.add_argument("--index", type=int, default=0, help="which evaluated example is the query")
    pr.set_defaults(func=cmd_prompt)

    _register_evaluate(subparsers)

    help_text = "quality and diversity for every temperature / top-k / top-p combination"
    sw = add_inspection_parser(subparsers, "sweep", help_text)
    add_task_options(sw)
    sw.add_argument("--temperature", default="0,0.7,1.0", help="comma-separated (0 = greedy)")
    sw.add_argument("--top-k", default="0,50", help="comma-separated (0 = off)")
    sw.add_argument("--top-p", default="0.9,1.0", help="comma-separated (1 = off)")
    sw.add_argument("--shots", type=int, default=0)
    sw.add_argument("--limit", type=int, default=100, help="examples per setting")
    sw.add_argument("--out", help="folder for sweep.json and sweep.png (default: in the checkpoint folder)")
    sw.set_defaults(func=cmd_sweep)
