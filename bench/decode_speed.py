"""Decode speed: llmlab's generator against transformers' GPT2LMHeadModel.generate on the same weights.

A ~14M-parameter GPT-2-style model (preset gpt2-mini, vocabulary 8,192), greedy, 128 new tokens, at
batch 1 and batch 8 (prompts of different lengths, left-padded). The weights are copied across, and
the fp32 outputs of both must be identical token for token.

    .venv/bin/python bench/decode_speed.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, median_time  # noqa: E402

from llmlab.config import ModelConfig  # noqa: E402
from llmlab.data.clean import clean_documents  # noqa: E402
from llmlab.data.sources import read_documents  # noqa: E402
from llmlab.generate import GenerationConfig, Generator  # noqa: E402
from llmlab.hf import to_transformers  # noqa: E402
from llmlab.model import DecoderLM  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402

PROMPTS = [
    "def fibonacci(n):\n    ",
    "import os\nimport sys\n\nclass Config:\n    def __init__(self, path):\n        self.path = path\n",
    "for i in range(10):",
    '# Copyright (c) Python Software Foundation.\n"""Utilities for parsing',
    "if __name__ == '__main__':\n    main()\n\n\ndef helper(x, y=None):\n",
    "return",
    "with open(filename, 'rb') as f:\n        data = f.read()\n    ",
    "class Node:\n    __slots__ = ('left', 'right', 'value')\n",
]


def hf_generate(hf, ids: list[list[int]], new: int) -> list[list[int]]:
    width = max(len(i) for i in ids)
    input_ids = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for r, row in enumerate(ids):
        input_ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    with torch.inference_mode():
        out = hf.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=0,
        )
    return out[:, width:].tolist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe())
    docs = list(clean_documents(read_documents(None)))[::10]
    tokenizer = train_tokenizer(docs, "bpe", 8192)
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.from_preset("gpt2-mini", vocab_size=tokenizer.vocab_size, block_size=512)).eval()
    hf = to_transformers(model)
    hf.generation_config.cache_implementation = None
    hf_bf16 = to_transformers(model).to(torch.bfloat16)
    print(f"model: gpt2-mini, {model.num_parameters():,} parameters; greedy, {args.new_tokens} new tokens")
    config = GenerationConfig(greedy=True, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens)
    bf16_model = DecoderLM(model.config).eval()
    bf16_model.load_state_dict(model.state_dict())
    bf16_model.to(torch.bfloat16)
    ours_fp32, ours_bf16 = Generator(model, tokenizer), Generator(bf16_model, tokenizer)

    rows = []
    for batch in (1, 8):
        prompts = PROMPTS[:batch]
        ids = [tokenizer.encode(p) for p in prompts]
        tokens = batch * args.new_tokens
        hf_out = hf_generate(hf, ids, args.new_tokens)
        fp32_out = [s[0].token_ids for s in ours_fp32.generate(prompts, config)]
        bf16_out = [s[0].token_ids for s in ours_bf16.generate(prompts, config)]
        assert fp32_out == hf_out, f"batch {batch}: llmlab fp32 and transformers disagree"
        agree = sum(a == b for x, y in zip(bf16_out, hf_out) for a, b in zip(x, y)) / tokens
        t_hf = median_time(lambda: hf_generate(hf, ids, args.new_tokens), args.repeats)  # noqa: B023
        t_hf_bf16 = median_time(lambda: hf_generate(hf_bf16, ids, args.new_tokens), args.repeats)  # noqa: B023
        t_fp32 = median_time(lambda: ours_fp32.generate(prompts, config), args.repeats)  # noqa: B023
        t_bf16 = median_time(lambda: ours_bf16.generate(prompts, config), args.repeats)  # noqa: B023
        rows.append((batch, tokens / t_hf, tokens / t_fp32, tokens / t_bf16, agree, tokens / t_hf_bf16))

    print(
        "\n| batch | transformers fp32 tok/s | llmlab fp32 tok/s | ratio | llmlab bf16 tok/s | ratio | "
        "bf16 tokens equal to fp32 | transformers bf16 tok/s | llmlab bf16 / transformers bf16 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for batch, hf_tps, fp32_tps, bf16_tps, agree, hf_bf16_tps in rows:
        print(
            f"| {batch} | {hf_tps:,.0f} | {fp32_tps:,.0f} | {fp32_tps / hf_tps:.2f}x | {bf16_tps:,.0f} | "
            f"{bf16_tps / hf_tps:.2f}x | {agree:.0%} | {hf_bf16_tps:,.0f} | {bf16_tps / hf_bf16_tps:.2f}x |"
        )
    print("\nfp32 outputs of llmlab and transformers are identical token for token at every batch size.")


if __name__ == "__main__":
    main()
