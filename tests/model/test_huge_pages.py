"""Weights moved into 2 MiB pages: the same values in the same Parameter objects, tied weights still one
tensor, each tensor its own storage (a checkpoint saves), still trainable, and moved once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from llmlab.checkpoint.folder import load_folder, save_checkpoint
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.model.huge_pages import HUGE_PAGE, MIN_BYTES, into_huge_pages
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="2 MiB pages are asked of Linux")


def _model(vocab_size: int = 512) -> torch.nn.Module:
    torch.manual_seed(0)  # 512 x 256 fp32 matrices (512 KiB: moved) and 256-wide norms (1 KiB: left)
    return tiny_model("llama", vocab_size=vocab_size, n_layer=2, n_embd=256, n_head=4, block_size=64,
                      tie_embeddings=True)  # fmt: skip


def _thp_mode() -> str:
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return "unknown"
    return text.split("[")[1].split("]")[0]


def test_tensors_keep_their_values_identity_and_ties_and_move_once():
    model = _model()
    before = {name: t.clone() for name, t in model.state_dict().items()}
    params = dict(model.named_parameters())
    large = [t for t in (*model.parameters(), *model.buffers()) if t.nbytes >= MIN_BYTES]
    small = {name: t.data_ptr() for name, t in params.items() if t.nbytes < MIN_BYTES}
    moved = into_huge_pages(model)
    assert moved >= sum({t.data_ptr(): t.nbytes for t in large}.values()) > 0
    assert dict(model.named_parameters()) == params  # the same Parameter objects
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())
    assert model.lm_head.weight is model.embed.weight  # still tied: one tensor
    assert {name: params[name].data_ptr() for name in small} == small  # norms stay where they were
    starts = sorted(t.data_ptr() for t in large)
    assert starts[0] % HUGE_PAGE == 0  # the mapping starts on a 2 MiB page
    assert len({t.untyped_storage().data_ptr() for t in large}) == len({t.data_ptr() for t in large})
    assert into_huge_pages(model) == 0  # there already


def test_the_mapping_asks_for_huge_pages():
    if _thp_mode() == "never":
        pytest.skip("transparent huge pages are off on this system: the weights stay in ordinary pages")
    model = _model()
    into_huge_pages(model)
    first = min(t.data_ptr() for t in model.parameters() if t.nbytes >= MIN_BYTES)
    flags = next(line for line in _smaps_entry(first).splitlines() if line.startswith("VmFlags:")).split()
    assert "hg" in flags, flags  # madvise(MADV_HUGEPAGE) on the mapping


def _smaps_entry(address: int) -> str:
    """The /proc/self/smaps block of the mapping that holds the address."""
    blocks = Path("/proc/self/smaps").read_text().split("\n")
    for i, line in enumerate(blocks):
        head = line.split()[0] if line else ""
        if "-" in head and all(c in "0123456789abcdef-" for c in head):
            start, end = (int(x, 16) for x in head.split("-"))
            if start <= address < end:
                rest = []
                for following in blocks[i + 1 :]:
                    if following and "-" in following.split()[0] and ":" not in following.split()[0]:
                        break
                    rest.append(following)
                return "\n".join(rest)
    raise AssertionError("no mapping holds the address")


def test_a_moved_model_still_trains_and_saves(tmp_path):
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    model = _model(tok.vocab_size)
    with torch.inference_mode():  # as the generator may ask: the tensors must stay ordinary ones
        into_huge_pages(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    tokens = torch.randint(0, tok.vocab_size, (2, 16))
    before = model.embed.weight.detach().clone()
    loss = model(tokens[:, :-1]).float().logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.embed.weight)
    save_checkpoint(tmp_path / "ckpt", model, tok)  # safetensors refuses tensors that share a storage
    loaded = load_folder(tmp_path / "ckpt").model
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


def test_the_generator_moves_weights_once_and_keeps_its_packed_copy(monkeypatch):
    import llmlab.generation.generator as generator_module

    packs = []
    real = generator_module.packed_for_inference
    monkeypatch.setattr(generator_module, "packed_for_inference", lambda model: packs.append(1) or real(model))
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    torch.manual_seed(0)
    model = tiny_model("llama", vocab_size=tok.vocab_size, n_layer=1, n_embd=256, n_head=4, block_size=64).eval()
    generator = Generator(model, tok, compile="off")
    config = GenerationConfig(max_new_tokens=3, greedy=True)
    before = generator.generate(["def f"], config)[0][0].token_ids
    assert generator.generate(["def f"], config)[0][0].token_ids == before
    assert len(packs) == 1, "the weights' move into huge pages must not look like new weights"


def test_tensors_sharing_a_storage_move_together_and_views_stay():
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(512, 256))
    module.register_buffer("alias", module.weight.data)  # the parameter's storage under another tensor object
    module.register_buffer("view", torch.randn(1024, 256)[:512])  # a view of half a storage: not moved
    before = module.view.data_ptr()
    into_huge_pages(module)
    assert module.alias.data_ptr() == module.weight.data_ptr() and torch.equal(module.alias, module.weight)
    assert module.weight.data_ptr() % HUGE_PAGE == 0 and module.view.data_ptr() == before


def test_a_storage_that_a_view_or_an_outside_alias_reads_stays_where_it_is():
    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.randn(512, 256))
    module.register_buffer("transposed", module.weight.data.t())  # a view of the same storage
    held = torch.nn.Parameter(torch.randn(512, 256))
    module.other = held
    outside = held.detach()  # an alias the module does not know about
    before = (module.weight.data_ptr(), held.data_ptr())
    assert into_huge_pages(module) == 0  # moving either would leave its view or alias reading old memory
    assert (module.weight.data_ptr(), held.data_ptr()) == before and outside.data_ptr() == held.data_ptr()
    del outside
    assert into_huge_pages(module) > 0 and held.data_ptr() % HUGE_PAGE == 0  # alone now: moved
    assert module.weight.data_ptr() == before[0] == module.transposed.data_ptr()
