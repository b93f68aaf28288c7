"""Prompt tuning: the soft prompt is read first by a decoder (and kept in its KV cache) or by an
encoder-decoder's encoder; cached, batched, left-padded generation gives what recomputing the whole
sequence gives, and only the prompt trains."""

from __future__ import annotations

import pytest
import torch

from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.model.soft_prompt import add_soft_prompt
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model

TOK = train_tokenizer([SAMPLE_TEXT], kind="char")


def prompted(style: str = "llama"):
    model = tiny_model(style, vocab_size=TOK.vocab_size, block_size=64)
    add_soft_prompt(model, 5, seed=1)
    with torch.no_grad():
        model.soft_prompt.add_(torch.randn_like(model.soft_prompt))  # not the embeddings of real tokens
    return model.eval()


def greedy_by_recomputing(model, ids: list[int], steps: int) -> list[int]:
    """The reference: the whole sequence through the model at every step, no cache, no padding."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([out]))[0, -1].argmax()))
    return out[len(ids) :]


def test_only_the_prompt_trains_and_it_changes_the_output():
    model = prompted()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["soft_prompt"]
    ids = torch.tensor([TOK.encode("def add")])
    plain = tiny_model("llama", vocab_size=TOK.vocab_size, block_size=64).eval()
    with torch.no_grad():
        assert model(ids).shape == plain(ids).shape  # the prompt's own outputs are left out
        assert (model(ids) - plain(ids)).abs().max() > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32])
def test_cached_batched_generation_equals_recomputing(dtype):
    model = prompted()
    generator = Generator(model, TOK)
    prompts = ["def add(a", "class Stack:\n    def"]  # different lengths: the first is left-padded
    config = GenerationConfig(greedy=True, max_new_tokens=6, min_new_tokens=6)
    batched = generator.generate(prompts, config)
    for prompt, completion in zip(prompts, batched):
        expected = greedy_by_recomputing(model, TOK.encode(prompt), 6)
        assert TOK.encode(completion[0].text) == expected


def test_an_encoder_decoder_reads_the_prompt_in_its_encoder():
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    model = tiny_model("t5", vocab_size=tok.vocab_size, block_size=64)
    model.config.decoder_start_token_id = tok.pad_id
    add_soft_prompt(model, 4, seed=0)
    src = torch.tensor([tok.encode("def add") + [tok.eos_id], tok.encode("def") + [tok.eos_id] + [tok.pad_id] * 4])
    mask = src != tok.pad_id
    tgt = torch.tensor([[tok.pad_id, 5, 6]] * 2)
    with torch.no_grad():
        batched = model(src, tgt, mask)
        alone = model(src[1:, :4], tgt[1:])
    assert model.encode(src, mask).shape[1] == src.shape[1] + 4
    torch.testing.assert_close(batched[1:], alone, rtol=0, atol=1e-5)  # padding hidden, the prompt visible
    model.eval()
    completion = Generator(model, tok).generate(["def add"], GenerationConfig(greedy=True, max_new_tokens=4,
                                                                           min_new_tokens=4))[0][0]  # fmt: skip
    source, target = torch.tensor([tok.encode("def add") + [tok.eos_id]]), [tok.pad_id]
    with torch.no_grad():  # the reference: the whole target through the model at every step, no cache
        for _ in range(4):
            target.append(int(model(source, torch.tensor([target]))[0, -1].argmax()))
    assert tok.encode(completion.text) == target[1:]
