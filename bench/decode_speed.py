"""Decode speed: llmlab's generator against transformers' `generate`, on the same imported weights.

For a GPT-2-style and a T5-style model of ~15M parameters (vocabulary 8,192), the script builds the
transformers model, saves it as a Hugging Face folder, and imports that folder into llmlab
(`llmlab.hf.importer.load_hf`, the code behind `llmlab import`). Greedy, 128 new tokens (end-of-text
suppressed in both), batch 1 and batch 8 (prompts of different lengths, padded). The fp32 outputs
of both libraries must be identical token for token (asserted).

    .venv/bin/python bench/decode_speed.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, median_time  # noqa: E402

from llmlab.data.clean import clean_documents  # noqa: E402
from llmlab.data.sources import read_documents  # noqa: E402
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.hf.importer import load_hf  # noqa: E402
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


def build_hf_folder(kind: str, folder: Path, docs: list[str]):
    """A random transformers model of ~15M parameters with a BPE tokenizer, saved as a Hugging Face folder."""
    import transformers as tf

    family = "decoder" if kind == "gpt2" else "encoder-decoder"
    tokenizer = train_tokenizer(docs, "bpe", 8192, family)
    torch.manual_seed(0)
    if kind == "gpt2":
        eos = tokenizer.eos_id
        config = tf.GPT2Config(vocab_size=8192, n_positions=512, n_embd=384, n_layer=6, n_head=6,
                               bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)  # fmt: skip
        model = tf.GPT2LMHeadModel(config)
    else:
        config = tf.T5Config(vocab_size=8192, d_model=384, d_kv=64, d_ff=1024, num_layers=3, num_decoder_layers=3,
                             num_heads=6, feed_forward_proj="gated-gelu", decoder_start_token_id=tokenizer.pad_id,
                             pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id)  # fmt: skip
        model = tf.T5ForConditionalGeneration(config)
    model.eval().save_pretrained(folder)
    tokenizer.save(folder / "tokenizer.json")
    return model


def hf_generate(hf, ids: list[list[int]], new: int, seq2seq: bool, pad: int) -> list[list[int]]:
    width = max(len(i) for i in ids)
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for r, row in enumerate(ids):  # decoders pad on the left, encoders on the right
        cols = slice(0, len(row)) if seq2seq else slice(width - len(row), width)
        input_ids[r, cols] = torch.tensor(row)
        mask[r, cols] = 1
    with torch.inference_mode():
        out = hf.generate(
            input_ids=input_ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=False
        )
    return out[:, 1:].tolist() if seq2seq else out[:, width:].tolist()


def measure(kind: str, docs: list[str], new: int, repeats: int) -> list[tuple]:
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf_folder(kind, Path(tmp), docs)
        ckpt = load_hf(tmp)
    seq2seq = kind == "t5"
    hf_bf16 = build_like(hf).to(torch.bfloat16)
    bf16_model = type(ckpt.model)(ckpt.model.config).eval()
    bf16_model.load_state_dict(ckpt.model.state_dict())
    bf16_model.to(torch.bfloat16)
    tokenizer = ckpt.tokenizer
    # eager, as transformers runs here (bench/decode_vs_llamacpp.py measures the compiled step)
    ours_fp32 = Generator(ckpt.model, tokenizer, compile="off")
    ours_bf16 = Generator(bf16_model, tokenizer, compile="off")
    config = GenerationConfig(greedy=True, max_new_tokens=new, min_new_tokens=new)
    pad = tokenizer.pad_id if seq2seq else tokenizer.eos_id
    print(f"{kind}: {ckpt.model.num_parameters():,} parameters (imported from the transformers folder)")
    rows = []
    for batch in (1, 8):
        prompts = PROMPTS[:batch]
        ids = [tokenizer.encode(p) + ([tokenizer.eos_id] if seq2seq else []) for p in prompts]
        tokens = batch * new
        hf_out = hf_generate(hf, ids, new, seq2seq, pad)
        fp32_out = [s[0].token_ids for s in ours_fp32.generate(prompts, config)]
        bf16_out = [s[0].token_ids for s in ours_bf16.generate(prompts, config)]
        assert fp32_out == hf_out, f"{kind} batch {batch}: llmlab fp32 and transformers disagree"
        agree = sum(a == b for x, y in zip(bf16_out, hf_out) for a, b in zip(x, y)) / tokens
        t_hf = median_time(lambda: hf_generate(hf, ids, new, seq2seq, pad), repeats)  # noqa: B023
        t_hf_bf16 = median_time(lambda: hf_generate(hf_bf16, ids, new, seq2seq, pad), repeats)  # noqa: B023
        t_fp32 = median_time(lambda: ours_fp32.generate(prompts, config), repeats)  # noqa: B023
        t_bf16 = median_time(lambda: ours_bf16.generate(prompts, config), repeats)  # noqa: B023
        rows.append((kind, batch, tokens / t_hf, tokens / t_fp32, tokens / t_bf16, agree, tokens / t_hf_bf16))
    return rows


def build_like(hf):
    """A second copy of a transformers model (for its bf16 run), same weights."""
    clone = type(hf)(hf.config)
    clone.load_state_dict(hf.state_dict())
    return clone.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe())
    docs = list(clean_documents(read_documents(None)))[::10]
    rows = [row for kind in ("gpt2", "t5") for row in measure(kind, docs, args.new_tokens, args.repeats)]
    print(
        f"\ngreedy, {args.new_tokens} new tokens; median of {args.repeats}\n\n"
        "| model | batch | transformers fp32 tok/s | llmlab fp32 tok/s | ratio | llmlab bf16 tok/s | ratio | "
        "bf16 tokens equal to fp32 | transformers bf16 tok/s | llmlab bf16 / transformers bf16 |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for kind, batch, hf_tps, fp32_tps, bf16_tps, agree, hf_bf16_tps in rows:
        print(
            f"| {kind} | {batch} | {hf_tps:,.0f} | {fp32_tps:,.0f} | {fp32_tps / hf_tps:.2f}x | {bf16_tps:,.0f} | "
            f"{bf16_tps / hf_tps:.2f}x | {agree:.0%} | {hf_bf16_tps:,.0f} | {bf16_tps / hf_bf16_tps:.2f}x |"
        )
    print("\nfp32 outputs of llmlab and transformers are identical token for token for both models and batches.")


if __name__ == "__main__":
    main()
