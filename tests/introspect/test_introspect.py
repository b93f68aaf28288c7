"""fill-mask, embed, attention and next-token: the commands that show what a model computes."""

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.generation.config import GenerationConfig
from llmlab.introspect.attention import attention_maps, capture_attention
from llmlab.introspect.next_token import next_token_report
from llmlab.load import load_checkpoint
from tests.helpers import assert_one_line_error, run_cli, tiny_model

COMMON = (
    "--n-layer 1 --n-head 4 --n-embd 32 --block-size 32 --batch-size 4 --eval-iters 1 --tokenizer char "
    "--dtype fp32 --max-steps 4"
).split()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    corpus = root / "corpus.txt"
    corpus.write_text("def add(self, other):\n    return self + other\n" * 80)
    for family in ("encoder", "encoder-decoder", "decoder"):
        out = root / family
        assert main(["pretrain", "--family", family, "--data", str(corpus), "--out", str(out), *COMMON]) == 0
    return root


def test_pretrain_takes_the_family_preset_and_refuses_nonsense(runs, capsys):
    encoder = json.loads((runs / "encoder" / "config.json").read_text())["model"]
    t5 = json.loads((runs / "encoder-decoder" / "config.json").read_text())["model"]
    assert encoder["family"] == "encoder" and t5["family"] == "encoder-decoder"
    assert t5["positions"] == "relative" and t5["decoder_start_token_id"] is not None
    code, _, err = run_cli(capsys, "pretrain", "--family", "encoder", "--objective", "span", "--out", str(runs / "x"))
    assert_one_line_error(code, err, "does not train encoder", "--objective mlm")
    code, _, err = run_cli(capsys, "pretrain", "--family", "decoder", "--preset", "t5-nano", "--out", str(runs / "x"))
    assert_one_line_error(code, err, "t5-nano is of family encoder-decoder, not decoder")
    assert not (runs / "x").exists()


def test_fill_mask_lists_top_k_fillers_with_probabilities(runs, capsys):
    code, out, _ = run_cli(capsys, "fill-mask", runs / "encoder", "def [MASK]dd(self):", "--top-k", "3", "--json")
    assert code == 0
    (fillers,) = json.loads(out)
    assert len(fillers) == 3
    probabilities = [f["probability"] for f in fillers]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1
    assert all(f["text"] == f"def {f['token']}dd(self):" for f in fillers)
    ckpt = load_checkpoint(runs / "encoder", dtype=torch.float32)
    tokenizer = ckpt.tokenizer
    ids = [tokenizer.cls_id, *tokenizer.encode("def [MASK]dd(self):"), tokenizer.sep_id]
    with torch.no_grad():  # the model's own distribution at the [MASK]
        probs = ckpt.model(torch.tensor([ids]))[0, ids.index(tokenizer.mask_id)].softmax(-1)
    top = probs.topk(3)
    assert [f["token_id"] for f in fillers] == top.indices.tolist()
    assert probabilities == pytest.approx(top.values.tolist(), abs=1e-6)
    assert [f["token"] for f in fillers] == [tokenizer.decode([i]) for i in top.indices.tolist()]
    code, _, err = run_cli(capsys, "fill-mask", runs / "encoder", "no mask here")
    assert_one_line_error(code, err, "has no [MASK]")
    code, _, err = run_cli(capsys, "fill-mask", runs / "decoder", "def [MASK]")
    assert_one_line_error(code, err, "needs an encoder")


@pytest.mark.parametrize("family", ["encoder", "encoder-decoder", "decoder"])
def test_embed_gives_unit_vectors_and_similarities(runs, capsys, family):
    args = ["embed", runs / family, "--text", "def add(self):", "--text", "return self", "--json"]
    code, out, _ = run_cli(capsys, *args)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    vectors = [r["embedding"] for r in records]
    assert [r["text"] for r in records] == ["def add(self):", "return self"]
    assert len(vectors) == 2 and len(vectors[0]) == 32
    assert sum(x * x for x in vectors[0]) == pytest.approx(1.0, abs=1e-4)
    ckpt = load_checkpoint(runs / family, dtype=torch.float32)
    expected = []
    for text in ("def add(self):", "return self"):  # each alone, unpadded: the mean of its last hidden states
        tokenizer, ids = ckpt.tokenizer, ckpt.tokenizer.encode(text)
        with torch.no_grad():
            if family == "encoder":
                hidden = ckpt.model.hidden_states(torch.tensor([[tokenizer.cls_id, *ids, tokenizer.sep_id]]))
            elif family == "encoder-decoder":
                hidden = ckpt.model.encode(torch.tensor([[*ids, tokenizer.eos_id]]))
            else:
                hidden = ckpt.model.hidden_states(torch.tensor([ids]))
        expected.append(torch.nn.functional.normalize(hidden[0].mean(0), dim=0))
    for vector, reference in zip(vectors, expected):
        assert vector == pytest.approx(reference.tolist(), abs=2e-6)
    code, out, _ = run_cli(capsys, *args[:-1])
    assert code == 0 and "cosine similarity" in out
    assert out.startswith("2 vectors of 32 dims (unit length, mean-pooled)\n")
    (row,) = [line.split() for line in out.splitlines() if line.strip().startswith("1 'def add(self):'")]
    similarity = (expected[0] @ expected[1]).item()
    assert [float(x) for x in row[-2:]] == pytest.approx([1.0, similarity], abs=1.5e-3)
    assert abs(similarity - 1.0) > 5e-3  # so the printed similarity is told from the diagonal


def test_embedding_ignores_padding(runs):
    from llmlab.introspect.encode import embed

    ckpt = load_checkpoint(runs / "encoder")
    alone = embed(ckpt.model, ckpt.tokenizer, ["add"])
    batched = embed(ckpt.model, ckpt.tokenizer, ["add", "def add(self, other): return"])
    assert torch.allclose(alone[0], batched[0], atol=1e-5)


def test_captured_weights_are_the_attention_and_cost_nothing_outside(char_tokenizer):
    model = tiny_model("t5", vocab_size=char_tokenizer.vocab_size)
    src, tgt = torch.randint(0, 20, (1, 7)), torch.randint(0, 20, (1, 5))
    with torch.no_grad():
        plain = model(src, tgt)
        with capture_attention(model) as records:
            captured = model(src, tgt)
    assert torch.allclose(plain, captured, atol=1e-5)  # the explicit path computes the same thing
    assert set(records) >= {"encoder.blocks.0.attn", "decoder.blocks.0.attn", "decoder.blocks.0.cross"}
    decoder_self = records["decoder.blocks.0.attn"][0][0]
    assert torch.allclose(decoder_self.sum(-1), torch.ones(4, 5))
    assert torch.equal(decoder_self, decoder_self.tril())  # causal: nothing above the diagonal
    assert records["decoder.blocks.0.cross"][0].shape == (1, 4, 5, 7)
    assert all(m.record is None for m in model.modules() if hasattr(m, "record"))


def test_attention_maps_and_heat_maps(runs, capsys, tmp_path):
    ckpt = load_checkpoint(runs / "encoder-decoder")
    maps = attention_maps(ckpt.model, ckpt.tokenizer, "def add", target="return")
    assert set(maps) == {"encoder", "decoder", "cross"}
    assert maps["cross"].weights.shape == (
        1,
        4,
        7,
        8,
    )  # layers (--n-layer 1: both stacks), heads, 1 + 6 decoder tokens, 7 + 1 inputs
    for kind, head in (("cross", []), ("encoder", ["--head", "1"])):
        out = tmp_path / f"{kind}.png"
        code, text, _ = run_cli(
            capsys, "attention", runs / "encoder-decoder", "--text", "def add", "--kind", kind, *head, "--out", out
        )
        assert code == 0 and out.stat().st_size > 5000 and out.read_bytes()[:4] == b"\x89PNG"
        shown = attention_maps(ckpt.model, ckpt.tokenizer, "def add")[kind]  # the default target: greedy output
        c = ckpt.model.config  # cross attention is in the decoder's layers
        shape = f"{c.n_layer if kind == 'encoder' else c.n_decoder_layer} layers x {c.n_head} heads"
        size = f"{len(shown.query_tokens)} x {len(shown.key_tokens)} tokens"
        assert text == f"{kind} attention: {shape} over {size}; heat map: {out}\n"
    code, _, err = run_cli(capsys, "attention", runs / "encoder", "--text", "def", "--kind", "cross")
    assert_one_line_error(code, err, "has no cross attention")
    code, _, err = run_cli(capsys, "attention", runs / "encoder", "--text", "def", "--layer", "5")
    assert_one_line_error(code, err, "layer 5 does not exist")


def test_next_token_stages_match_the_sampler(char_tokenizer):
    logits = torch.tensor([3.0, 2.0, 1.0, 0.5, 0.0] + [-5.0] * (char_tokenizer.vocab_size - 5))
    report = next_token_report(logits, char_tokenizer, GenerationConfig(temperature=0.5, top_k=3, top_p=0.9), show=4)
    first = report.rows[0].probabilities
    assert first["model"] == pytest.approx(torch.softmax(logits, 0)[0].item())
    assert first["temperature"] == pytest.approx(torch.softmax(logits / 0.5, 0)[0].item())
    assert report.kept["top-k"] == 3 and report.rows[3].probabilities["top-k"] == 0.0
    # top-p 0.9 of {0.867, 0.117, 0.016} keeps the first two tokens
    assert report.kept["top-p"] == 2 and first["top-p"] == pytest.approx(0.867 / (0.867 + 0.117), abs=2e-3)


def test_next_token_command_prints_a_table_and_a_chart(runs, capsys, tmp_path):
    out = tmp_path / "next.png"
    code, text, _ = run_cli(capsys, "next-token", runs / "decoder", "--prompt", "def ", "--top-k", "3", "--out", out)
    assert code == 0 and "top-k (3 kept)" in text and out.read_bytes()[:4] == b"\x89PNG"
    ckpt = load_checkpoint(runs / "decoder", dtype=torch.float32)
    with torch.no_grad():  # the model's own next-token distribution, and its top 3 renormalised
        probs = ckpt.model(torch.tensor([ckpt.tokenizer.encode("def ")]))[0, -1].softmax(-1)
    top3 = probs.topk(3)
    kept = dict(zip(top3.indices.tolist(), (top3.values / top3.values.sum()).tolist()))
    rows = {}  # token id -> its probabilities: model, temperature, top-k, top-p (tokens' reprs may hold spaces)
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[-5].isdigit():
            rows[int(fields[-5])] = [float(x) for x in fields[-4:]]
    assert len(rows) == 10 and list(rows)[:3] == top3.indices.tolist()  # --show 10, likeliest first
    for token_id, printed in rows.items():
        p, k = probs[token_id].item(), kept.get(token_id, 0.0)
        assert printed == pytest.approx([p, p, k, k], abs=1e-4), token_id  # T=1 and top-p 1 change nothing
    code, _, err = run_cli(capsys, "next-token", runs / "encoder", "--prompt", "def")
    assert_one_line_error(code, err, "do not predict a next token")


def test_generate_with_an_encoder_decoder_checkpoint(runs, capsys):
    code, out, _ = run_cli(
        capsys, "generate", runs / "encoder-decoder", "--prompt", "def", "--max-new-tokens", "5", "--json", "--seed", 3
    )
    assert code == 0 and json.loads(out)["tokens"] <= 5
    from llmlab.device import resolve_device, resolve_dtype
    from llmlab.generation.generator import Generator

    device = resolve_device("auto")  # loaded as `llmlab generate` loads it
    ckpt = load_checkpoint(runs / "encoder-decoder", device=device, dtype=resolve_dtype("auto", device))
    config = GenerationConfig.from_dict({**ckpt.generation.to_dict(), "max_new_tokens": 5, "seed": 3})
    ((c,),) = Generator(ckpt.model, ckpt.tokenizer).generate(["def"], config)
    assert json.loads(out) == {"prompt": "def", "completion": c.text, "finish_reason": c.finish_reason,
                               "tokens": len(c.token_ids), "sample": 1}  # fmt: skip
    code, _, err = run_cli(capsys, "generate", runs / "encoder", "--prompt", "def")
    assert_one_line_error(code, err, "do not generate text")
