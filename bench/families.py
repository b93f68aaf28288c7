"""The three families: pre-training throughput of each at a comparable size, and encoder-decoder decoding.

Each llmlab family trains with its own objective (decoder: causal LM, encoder: masked LM, encoder-
decoder: span corruption) on batches of 16 x 256 tokens; its baseline, measured in the same
interleaved rounds, is the transformers model of the same shape (GPT2LMHeadModel, BertForMaskedLM,
T5ForConditionalGeneration) on the same batches, in the same bf16 autocast and with the same AdamW
step, with dropout off in both (transformers' configs default to 0.1). Sizes: 384 wide, 6 decoder /
6 encoder / 3+3 encoder-decoder layers, vocabulary 8,192.
tokens/s counts the tokens a model reads (encoder + decoder inputs).

Decoding: greedy generation of 64 new tokens from 64-token inputs at batch 1 and 8 with the T5-style
model, against transformers' `generate` on a T5ForConditionalGeneration of the same shape (random
weights; speed does not depend on them), fp32 and bf16.

    .venv/bin/python bench/families.py
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe, median_time  # noqa: E402

from llmlab.config import ModelConfig  # noqa: E402
from llmlab.data.objectives import Batch, causal_lm_batch, mlm_batch, span_batch  # noqa: E402
from llmlab.data.sources import read_documents  # noqa: E402
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.model import build_model  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402
from llmlab.training.losses import lm_loss  # noqa: E402

BATCH, BLOCK, WIDTH, VOCAB = 16, 256, 384, 8192


def llmlab_config(family: str) -> ModelConfig:
    preset = {"decoder": "gpt2-mini", "encoder": "bert-mini", "encoder-decoder": "t5-mini"}[family]
    layers = dict(n_layer=3, n_decoder_layer=3, intermediate_size=1024) if family == "encoder-decoder" else {}
    return ModelConfig.from_preset(preset, vocab_size=VOCAB, block_size=BLOCK, **layers)


def hf_model(family: str):
    import transformers as tf

    if family == "decoder":
        config = tf.GPT2Config(
            vocab_size=VOCAB,
            n_positions=BLOCK,
            n_embd=WIDTH,
            n_layer=6,
            n_head=6,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
        return tf.GPT2LMHeadModel(config)
    if family == "encoder":
        config = tf.BertConfig(
            vocab_size=VOCAB,
            hidden_size=WIDTH,
            num_hidden_layers=6,
            num_attention_heads=6,
            intermediate_size=4 * WIDTH,
            max_position_embeddings=BLOCK,
        )
        return tf.BertForMaskedLM(config)
    config = tf.T5Config(
        vocab_size=VOCAB,
        d_model=WIDTH,
        d_kv=64,
        d_ff=1024,
        num_layers=3,
        num_decoder_layers=3,
        num_heads=6,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=True,
        decoder_start_token_id=0,
    )
    return tf.T5ForConditionalGeneration(config)


def hf_loss(model, family: str, batch: Batch) -> torch.Tensor:
    if family == "decoder":
        logits = model(input_ids=batch.inputs).logits
        return F.cross_entropy(logits.float().flatten(0, 1), batch.labels.flatten())
    if family == "encoder":
        return model(input_ids=batch.inputs, labels=batch.labels).loss
    return model(input_ids=batch.inputs, decoder_input_ids=batch.decoder_inputs, labels=batch.labels).loss


class Contestant:
    def __init__(self, family: str, library: str, batches) -> None:
        torch.manual_seed(0)
        self.family, self.library, self.batches = family, library, batches
        self.model = (build_model(llmlab_config(family)) if library == "llmlab" else hf_model(family)).train()
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95))
        self.rates: list[float] = []
        self.step_index = 0

    def step(self, record: bool) -> None:
        batch = self.batches(self.step_index)
        self.step_index += 1
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = lm_loss(self.model, batch) if self.library == "llmlab" else hf_loss(self.model, self.family, batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if record:
            self.rates.append(batch.tokens / (time.perf_counter() - start))


def throughput(rounds: int, steps: int) -> None:
    docs = list(read_documents(None))[:200]
    rows = []
    for family in ("decoder", "encoder", "encoder-decoder"):
        tokenizer = train_tokenizer(docs, "bpe", VOCAB, family)
        ordinary = np.array(sorted(set(range(tokenizer.vocab_size)) - tokenizer.special_ids))
        ids = np.random.default_rng(0).choice(ordinary, size=1_000_000)
        if family == "decoder":
            batches = lambda step, ids=ids: causal_lm_batch(ids, BATCH, BLOCK, 0, step)  # noqa: E731
        elif family == "encoder":
            batches = lambda step, ids=ids, t=tokenizer: mlm_batch(ids, t, BATCH, BLOCK, 0, step)  # noqa: E731
        else:
            batches = lambda step, ids=ids, t=tokenizer: span_batch(ids, t, BATCH, BLOCK, t.pad_id, 0, step)  # noqa: E731
        ours, theirs = Contestant(family, "llmlab", batches), Contestant(family, "transformers", batches)
        for c in (ours, theirs):
            c.step(record=False)
        for _ in range(rounds):
            for c in (ours, theirs):
                for _ in range(steps):
                    c.step(record=True)
        a, b = statistics.median(ours.rates), statistics.median(theirs.rates)
        rows.append((family, ours.parameters, a, theirs.parameters, b))
    print(
        f"pre-training, batch {BATCH} x {BLOCK}, bf16 autocast, AdamW; median of {rounds} x {steps} interleaved steps\n"
    )
    print(
        "| family (objective) | llmlab params | llmlab tokens/s | transformers params | transformers tokens/s | ratio |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    names = {"decoder": "decoder (clm)", "encoder": "encoder (mlm)", "encoder-decoder": "encoder-decoder (span)"}
    for family, p_ours, a, p_theirs, b in rows:
        print(f"| {names[family]} | {p_ours / 1e6:.1f}M | {a:,.0f} | {p_theirs / 1e6:.1f}M | {b:,.0f} | {a / b:.2f}x |")


def decoding(repeats: int) -> None:
    import transformers as tf

    tokenizer = train_tokenizer(list(read_documents(None))[:200], "bpe", VOCAB, "encoder-decoder")
    torch.manual_seed(0)
    ours = build_model(llmlab_config("encoder-decoder")).eval()
    ours.config.decoder_start_token_id = tokenizer.pad_id
    theirs = hf_model("encoder-decoder").eval()
    prompt = tokenizer.decode(np.random.default_rng(0).integers(300, 4000, size=63).tolist())
    new = 64
    print(f"\nencoder-decoder greedy decoding, {new} new tokens from ~64-token inputs (median of {repeats})\n")
    print("| batch | llmlab bf16 tok/s | llmlab fp32 tok/s | transformers fp32 tok/s | transformers bf16 tok/s | "
          "llmlab bf16 / transformers fp32 | llmlab bf16 / transformers bf16 |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for batch in (1, 8):
        prompts = [prompt] * batch
        config = GenerationConfig(max_new_tokens=new, min_new_tokens=new, greedy=True)
        rates = {}
        for dtype in (torch.bfloat16, torch.float32):
            generator = Generator(ours.to(dtype), tokenizer)
            seconds = median_time(lambda g=generator, p=prompts, c=config: g.generate(p, c), repeats)
            rates[f"llmlab {dtype}"] = batch * new / seconds
        src = torch.tensor([tokenizer.encode(prompt) + [tokenizer.eos_id]] * batch)
        for dtype in (torch.float32, torch.bfloat16):
            model = theirs.to(dtype)
            settings = tf.GenerationConfig(
                max_new_tokens=new, min_new_tokens=new, do_sample=False, eos_token_id=None, decoder_start_token_id=0
            )

            def run(m=model, x=src, g=settings) -> None:
                with torch.inference_mode():
                    m.generate(input_ids=x, generation_config=g)

            rates[f"hf {dtype}"] = batch * new / median_time(run, repeats)
        a, b, c, d = (
            rates[k] for k in ("llmlab torch.bfloat16", "llmlab torch.float32", "hf torch.float32", "hf torch.bfloat16")
        )
        print(f"| {batch} | {a:,.0f} | {b:,.0f} | {c:,.0f} | {d:,.0f} | {a / c:.2f}x | {a / d:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(describe())
    throughput(args.rounds, args.steps)
    decoding(args.repeats)


if __name__ == "__main__":
    main()
