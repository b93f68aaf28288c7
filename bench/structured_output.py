"""Structured output: validity from an untrained model, the constraint's cost per token, grammar compile time.

An untrained 82M Llama (`llama-small`) with a 32,000-token byte-level BPE trained on DialogSum
dialogues (a real vocabulary's size: the mask covers every token each step). Five JSON schemas (nested
objects, arrays, enums, numbers with ranges); 40 sampled generations each (temperature 1, batches of 8)
with the schema enforced, checked with `jsonschema` (not the engine), and the same prompts without it.
Every value is bounded (strings by maxLength, numbers by a range and multipleOf, arrays by maxItems): an
untrained model picks among the allowed tokens almost uniformly, and with 32,000 tokens most of those
that may follow a digit are more digits, so an unbounded number would run past any token budget.
The constraint's overhead is measured at batch 1, greedy, as time per generated token with and without
it, alternating rounds (the issue's goal: at most 25% of decode time).

    .venv/bin/python bench/structured_output.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

import jsonschema
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.config import ModelConfig  # noqa: E402
from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.constraints import Grammar, TokenGrammar, engine_tokenizer  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.model import build_model  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402

DATA = Path(os.environ.get("LLMLAB_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
TEXT = {"type": "string", "maxLength": 12}
ZIP = {"type": "integer", "minimum": 10000, "maximum": 99999}
PRICE = {"type": "number", "minimum": 0, "maximum": 1000, "multipleOf": 0.01}
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {"name": TEXT, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "address": {"type": "object", "properties": {"city": TEXT, "zip": ZIP},
                                   "required": ["city", "zip"], "additionalProperties": False}},
        "required": ["name", "age", "address"], "additionalProperties": False,
    },
    "order": {
        "type": "object",
        "properties": {"items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "properties": {"sku": TEXT, "qty": {"type": "integer", "minimum": 1, "maximum": 9},
                                             "price": PRICE},
            "required": ["sku", "qty", "price"], "additionalProperties": False}},
                       "paid": {"type": "boolean"}},
        "required": ["items", "paid"], "additionalProperties": False,
    },
    "flight": {
        "type": "object",
        "properties": {"flight": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2,4}$"},
                       "status": {"enum": ["on time", "delayed", "cancelled", "landed"]},
                       "delay_minutes": {"type": "integer", "minimum": 0, "maximum": 600}},
        "required": ["flight", "status", "delay_minutes"], "additionalProperties": False,
    },
    "entities": {
        "type": "object",
        "properties": {"people": {"type": "array", "items": TEXT, "maxItems": 4},
                       "places": {"type": "array", "items": TEXT, "maxItems": 4}},
        "required": ["people", "places"], "additionalProperties": False,
    },
    "review": {
        "type": "object",
        "properties": {"sentiment": {"enum": ["positive", "negative", "neutral"]},
                       "stars": {"type": "integer", "minimum": 1, "maximum": 5},
                       "score": {"type": "number", "minimum": -1, "maximum": 1, "multipleOf": 0.1}},
        "required": ["sentiment", "stars", "score"], "additionalProperties": False,
    },
}  # fmt: skip
PROMPTS = ["Extract the fields as JSON:", "#Person1#: Hello, I'd like to check my flight.\nJSON:", "Answer in JSON:",
           "The review said the film was great.\n", "Order summary:", "People and places:", "{", "Data:"]  # fmt: skip


def valid(text: str, schema: dict) -> bool:
    """Decimal numbers on both sides: with floats jsonschema finds 0.07 not a multiple of 0.01."""
    try:
        exact = json.loads(json.dumps(schema), parse_float=Decimal)
        jsonschema.validate(json.loads(text, parse_float=Decimal), exact)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def validity(generator: Generator, per_schema: int, batch: int, max_new: int) -> None:
    print(f"\n1. validity: {per_schema} sampled generations per schema (temperature 1, batches of {batch})")
    print(f"{'schema':<10} {'constrained':>12} {'unconstrained':>14} {'finished':>9} {'mean tokens':>12}")
    totals = [0, 0, 0]
    for name, schema in SCHEMAS.items():
        grammar, ok, free, finished, tokens = Grammar.json_schema(schema), 0, 0, 0, []
        for start in range(0, per_schema, batch):
            prompts = [PROMPTS[(start + i) % len(PROMPTS)] for i in range(min(batch, per_schema - start))]
            config = GenerationConfig(max_new_tokens=max_new, temperature=1.0, seed=start)
            for (c,) in generator.generate(prompts, config, grammar):
                ok += valid(c.text, schema)
                finished += c.finish_reason == "eos"
                tokens.append(len(c.token_ids))
            free += sum(valid(c.text, schema) for (c,) in generator.generate(prompts, config))
        totals = [totals[0] + ok, totals[1] + free, totals[2] + per_schema]
        print(f"{name:<10} {ok:>8}/{per_schema:<3} {free:>10}/{per_schema:<3} {finished:>9} "
              f"{statistics.mean(tokens):>12.1f}")  # fmt: skip
    print(f"{'all':<10} {totals[0]:>8}/{totals[2]:<3} {totals[1]:>10}/{totals[2]:<3}  "
          f"({100 * totals[0] / totals[2]:.0f}% vs {100 * totals[1] / totals[2]:.0f}% valid)")  # fmt: skip


def overhead(generator: Generator, rounds: int, tokens: int) -> None:
    """Seconds per token at batch 1, greedy: min over alternating rounds, per schema."""
    print(f"\n2. cost per token at batch 1 (greedy, {tokens} new tokens at most, min of {rounds} alternating rounds)")
    print(f"{'schema':<10} {'free ms/tok':>12} {'constrained ms/tok':>19} {'overhead':>9}")
    ratios = []
    for name, schema in SCHEMAS.items():
        grammar, free, bound = Grammar.json_schema(schema), [], []
        config = GenerationConfig(max_new_tokens=tokens, greedy=True)
        generator.generate([PROMPTS[0]], config, grammar)  # warm (binding, first masks)
        for _ in range(rounds):  # the same number of new tokens both ways: the constrained run's
            start = time.perf_counter()
            n = max(len(generator.generate([PROMPTS[0]], config, grammar)[0][0].token_ids), 1)
            bound.append((time.perf_counter() - start) / n)
            start = time.perf_counter()
            generator.generate([PROMPTS[0]], GenerationConfig(max_new_tokens=n, min_new_tokens=n, greedy=True))
            free.append((time.perf_counter() - start) / n)
        ratio = min(bound) / min(free) - 1
        ratios.append(ratio)
        print(f"{name:<10} {1000 * min(free):>12.2f} {1000 * min(bound):>19.2f} {100 * ratio:>8.1f}%")
    print(f"overhead: median {100 * statistics.median(ratios):.1f}%, worst {100 * max(ratios):.1f}% (goal <= 25%)")


def compile_times(generator: Generator) -> None:
    print("\n3. compile time")
    start = time.perf_counter()
    engine_tokenizer(generator.tokenizer, generator.eos_id)
    print(f"tokenizer for the engine ({generator.tokenizer.vocab_size} tokens): {time.perf_counter() - start:.3f} s "
          "(once per generator)")  # fmt: skip
    for name, schema in SCHEMAS.items():
        start = time.perf_counter()
        TokenGrammar(Grammar.json_schema(schema), generator.tokenizer, generator.eos_id)
        print(f"{name:<10} schema -> checked grammar: {1000 * (time.perf_counter() - start):.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab-size", type=int, default=32000)
    p.add_argument("--preset", default="llama-small")
    p.add_argument("--per-schema", type=int, default=40)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="validity,overhead,compile", help="which measurements to run")
    args = p.parse_args()
    print(describe())
    dialogues = [json.loads(line)["dialogue"] for line in (DATA / "dialogsum" / "train.jsonl").open()]
    start = time.perf_counter()
    tokenizer = train_tokenizer(dialogues, "bpe", args.vocab_size, "decoder")
    print(f"tokenizer: byte-level BPE, {tokenizer.vocab_size} tokens, trained on {len(dialogues)} DialogSum "
          f"dialogues in {time.perf_counter() - start:.0f} s")  # fmt: skip
    torch.manual_seed(0)
    config = ModelConfig.from_preset(args.preset, vocab_size=tokenizer.vocab_size, block_size=512)
    model = build_model(config).eval()
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: untrained {args.preset} ({millions:.0f}M parameters), fp32, compile off")
    generator = Generator(model, tokenizer, compile="off")
    parts = set(args.parts.split(","))
    if "validity" in parts:
        validity(generator, args.per_schema, batch=8, max_new=200)
    if "overhead" in parts:
        overhead(generator, args.rounds, tokens=64)
    if "compile" in parts:
        compile_times(generator)


if __name__ == "__main__":
    main()
