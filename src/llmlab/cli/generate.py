"""`llmlab generate`: sampling options are GenerationConfig's fields; a checkpoint's own generation
defaults apply unless an option is given."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from llmlab.cli.common import (
    ADAPTER_HELP,
    CHECKPOINT_HELP,
    DEVICE_HELP,
    add_dataclass_options,
    read_lines,
    read_text,
    unescape,
)
from llmlab.errors import LlmlabError
from llmlab.generation.config import AUTO_COMPILE_TOKENS, COMPILE_CHOICES


def _prompts(args: argparse.Namespace) -> list[str]:
    """--prompt texts, then --prompts-file lines (where \\n written in the file is a newline)."""
    prompts = list(getattr(args, "prompt", []) or [])
    if getattr(args, "prompts_file", None):
        prompts += [unescape(line) for line in read_lines(args.prompts_file, "--prompts-file")]
    if not prompts:
        raise LlmlabError("no prompt given", "pass --prompt TEXT (repeatable) or --prompts-file FILE")
    return prompts


def _grammar(args: argparse.Namespace):
    """The structured-output option given, as a Grammar (None without one)."""
    from llmlab.generation.constraints import Grammar

    if getattr(args, "json_schema", None):
        return Grammar.json_schema(read_text(args.json_schema, "--json-schema"), f"--json-schema {args.json_schema}")
    if getattr(args, "regex", None) is not None:
        return Grammar.regex(args.regex)
    if getattr(args, "choice", None) is not None:
        return Grammar.choice([unescape(c) for c in args.choice.split(",")])
    if getattr(args, "grammar", None):
        return Grammar.lark(read_text(args.grammar, "--grammar"), f"--grammar {args.grammar}")
    return None


def _warn_incomplete(results, grammar) -> None:
    """A constrained sample cut by --max-new-tokens or a stop string may not match yet: say so, not silently."""
    cut = sum(c.finish_reason in ("length", "stop") for samples in results for c in samples)
    if grammar is not None and cut:
        print(f"warning: {cut} sample(s) ended by --max-new-tokens or a stop string before {grammar.source} was "
              "complete, so they may not match it; raise --max-new-tokens or drop --stop", file=sys.stderr)  # fmt: skip


def _speculative(generator, prompts: list[str], config, grammar, args: argparse.Namespace):
    """--draft CKPT|lookup: speculative decoding, one sequence at a time; the acceptance rate on stderr."""
    from llmlab.generation.speculative import LookupDrafter, model_drafter, speculative_generate
    from llmlab.load import load_checkpoint

    if grammar is not None:
        raise LlmlabError("--draft does not combine with structured output yet", "drop one of the two")
    if args.draft == "lookup":
        drafter = LookupDrafter(generator.model.config.vocab_size)
    else:
        draft = load_checkpoint(args.draft, device=generator.device, dtype=generator.model.compute_dtype)
        drafter = model_drafter(generator, draft.model, draft.tokenizer)
    results, stats = speculative_generate(generator, prompts, config, drafter, getattr(args, "speculate", 4))
    rate = f"{stats.accepted} of {stats.proposed} draft tokens accepted ({100 * stats.acceptance_rate:.0f}%)"
    print(f"speculative decoding: {rate}, {stats.tokens_per_pass:.2f} tokens per target pass", file=sys.stderr)
    return results


def _stream(generator, prompts: list[str], config, grammar=None) -> None:
    """Print one sample as it is generated: a decoder's continues its prompt, a seq2seq output does not."""
    if len(prompts) != 1 or config.num_samples != 1:
        raise LlmlabError("--stream prints one sample as it is generated", "use one --prompt and --num-samples 1")
    (prompt,) = prompts
    sys.stdout.write("" if generator.seq2seq else prompt)
    for piece in generator.stream(prompt, config, grammar):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")


def _print_completions(results, config, seq2seq: bool, as_json: bool) -> None:
    for i, samples in enumerate(results, 1):
        for j, c in enumerate(samples, 1):
            if as_json:
                record = {"prompt": c.prompt, "completion": c.text, "finish_reason": c.finish_reason}
                print(json.dumps({**record, "tokens": len(c.token_ids), "sample": j}))
                continue
            mode = (
                "greedy"
                if not config.do_sample
                else f"temperature {config.temperature}, top-k {config.top_k or 'off'}, top-p {config.top_p}"
            )
            print(f"--- prompt {i}, sample {j} ({mode}; ended by {c.finish_reason}) ---")
            print(f"{c.prompt}\n=> {c.text}" if seq2seq else c.prompt + c.text)


def cmd_generate(args: argparse.Namespace) -> None:
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.config import GenerationConfig
    from llmlab.generation.generator import Generator
    from llmlab.load import load_checkpoint

    prompts = _prompts(args)
    device = resolve_device(getattr(args, "device", "auto"))
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    ckpt = load_checkpoint(args.checkpoint, device=device, dtype=dtype, adapter=getattr(args, "adapter", None))
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(GenerationConfig) if hasattr(args, f.name)}
    if "stop" in options:  # let a shell user write "\n" for a newline, as in --prompts-file
        options["stop"] = [unescape(text) for text in options["stop"]]
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), **options})
    generator = Generator(ckpt.model, ckpt.tokenizer, compile=getattr(args, "compile", "auto"))
    grammar = _grammar(args)
    generator.bind(grammar)  # a grammar that cannot compile is refused before any decoding
    if hasattr(args, "speculate") and not getattr(args, "draft", None):
        raise LlmlabError("--speculate needs --draft", "pass --draft DRAFT_CKPT or --draft lookup")
    if getattr(args, "stream", False):
        if getattr(args, "draft", None):
            raise LlmlabError("--stream does not combine with --draft yet", "drop one of the two")
        _stream(generator, prompts, config, grammar)
        return
    if getattr(args, "draft", None):
        results = _speculative(generator, prompts, config, grammar, args)
    else:
        results = generator.generate(prompts, config, grammar)
    _print_completions(results, config, generator.seq2seq, getattr(args, "json", False))
    _warn_incomplete(results, grammar)


def register(subparsers: argparse._SubParsersAction) -> None:
    from llmlab.generation.config import GenerationConfig

    g = subparsers.add_parser("generate", help="generate text from a checkpoint")
    g.add_argument("checkpoint", help=CHECKPOINT_HELP)
    g.add_argument("--adapter", default=argparse.SUPPRESS, help=ADAPTER_HELP)
    g.add_argument("--prompt", action="append", default=argparse.SUPPRESS, help="prompt text (repeatable)")
    g.add_argument("--prompts-file", default=argparse.SUPPRESS, help="one prompt a line (\\n for newlines)")
    add_dataclass_options(g, GenerationConfig)
    shape = g.add_mutually_exclusive_group()
    shape.add_argument("--json-schema", default=argparse.SUPPRESS, metavar="FILE",
                       help="structured output: JSON valid under this schema, enforced token by token")  # fmt: skip
    shape.add_argument("--regex", default=argparse.SUPPRESS, help="structured output: text matching this regex")
    shape.add_argument("--choice", default=argparse.SUPPRESS, metavar="A,B,C", help="structured output: one of these")
    shape.add_argument("--grammar", default=argparse.SUPPRESS, metavar="FILE.lark",
                       help="structured output: text in this Lark grammar (llguidance's dialect)")  # fmt: skip
    g.add_argument("--draft", default=argparse.SUPPRESS, metavar="CKPT|lookup",
                   help="speculative decoding with this draft model (same tokenizer), or prompt lookup")  # fmt: skip
    g.add_argument("--speculate", type=int, default=argparse.SUPPRESS, metavar="K",
                   help="with --draft: tokens proposed per target pass (default 4)")  # fmt: skip
    g.add_argument("--stream", action="store_true", default=argparse.SUPPRESS, help="print tokens as they come")
    g.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per sample")
    g.add_argument("--device", default=argparse.SUPPRESS, help=DEVICE_HELP)
    g.add_argument("--dtype", default=argparse.SUPPRESS, help="auto (bf16 where fast), fp32, bf16, fp16")
    g.add_argument("--compile", choices=COMPILE_CHOICES, default=argparse.SUPPRESS,
                   help="compile the decoding step with torch.compile, which pays off over thousands of tokens "
                   f"(auto: once {AUTO_COMPILE_TOKENS} are to be decoded; default from $LLMLAB_COMPILE)")  # fmt: skip
    g.set_defaults(func=cmd_generate)
