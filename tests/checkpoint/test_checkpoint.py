import json

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.errors import LlmlabError
from llmlab.load import load_checkpoint
from llmlab.tokenizer import train_tokenizer
from tests.helpers import tiny_model


@pytest.fixture
def checkpoint(tmp_path, char_tokenizer):
    model = tiny_model("gpt2", vocab_size=char_tokenizer.vocab_size)
    return save_checkpoint(tmp_path / "ckpt", model, char_tokenizer), model


def test_round_trip_gives_identical_logits_and_no_pickles(checkpoint):
    path, model = checkpoint
    loaded = load_checkpoint(path)
    x = torch.randint(0, model.config.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))
    assert loaded.model.lm_head.weight is loaded.model.embed.weight  # tying survives the round trip
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "manifest.json"} <= names
    assert not any(n.endswith((".pt", ".bin", ".pkl")) for n in names)


def test_resaving_keeps_other_files_of_the_run_folder(checkpoint, char_tokenizer):
    path, model = checkpoint
    (path / "metrics.jsonl").write_text('{"step": 1}\n')
    save_checkpoint(path, model, char_tokenizer)
    assert (path / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_missing_file_is_refused(checkpoint):
    path, _ = checkpoint
    (path / "tokenizer.json").unlink()
    with pytest.raises(LlmlabError, match="missing tokenizer.json"):
        load_checkpoint(path)


def test_truncated_weights_are_refused(checkpoint):
    path, _ = checkpoint
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LlmlabError, match="model.safetensors does not match its recorded checksum"):
        load_checkpoint(path)
    (path / "manifest.json").unlink()  # even without the manifest, the file itself is refused
    with pytest.raises(LlmlabError, match="cannot read"):
        load_checkpoint(path)


def test_tampered_weights_are_refused(checkpoint):
    path, _ = checkpoint
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(LlmlabError, match="checksum"):
        load_checkpoint(path)


def test_a_foreign_tokenizer_is_refused(checkpoint):
    path, _ = checkpoint
    train_tokenizer(["a different corpus entirely"], kind="char").save(path / "tokenizer.json")
    (path / "manifest.json").unlink()
    with pytest.raises(LlmlabError, match="tokenizer has .* tokens but the model expects"):
        load_checkpoint(path)


def test_config_that_does_not_fit_the_weights_is_refused(checkpoint):
    path, _ = checkpoint
    config = json.loads((path / "config.json").read_text())
    config["model"]["n_layer"] = 3
    (path / "config.json").write_text(json.dumps(config))
    (path / "manifest.json").unlink()
    with pytest.raises(LlmlabError, match="does not fit the model"):
        load_checkpoint(path)


def test_a_decoder_checkpoint_with_pre_stack_names_still_loads(tmp_path):
    """Checkpoints written before the families shared one Stack named blocks.*, norm.*, pos_embed.*."""
    from safetensors.torch import load_file, save_file

    tokenizer = train_tokenizer(["an old corpus of text"], kind="char")
    model = tiny_model("gpt2", vocab_size=tokenizer.vocab_size)
    save_checkpoint(tmp_path / "old", model, tokenizer)
    state = load_file(tmp_path / "old" / "model.safetensors")
    save_file({k.removeprefix("decoder."): v for k, v in state.items()}, tmp_path / "old" / "model.safetensors")
    (tmp_path / "old" / "manifest.json").unlink()
    loaded = load_checkpoint(tmp_path / "old")
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
