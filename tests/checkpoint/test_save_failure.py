"""A write that fails during a checkpoint save (a full disk) is one error and loses nothing."""

import errno
import os

import pytest
import torch
from safetensors import SafetensorError

import llmlab.checkpoint.folder as folder
from llmlab.checkpoint.folder import save_checkpoint
from llmlab.errors import LlmlabError
from llmlab.load import load_checkpoint
from llmlab.tokenizer import TextTokenizer
from tests.helpers import assert_one_line_error, run_cli, tiny_model


def _disk_full_after(real, calls_before_failing: int):
    """A writer that works `calls_before_failing` times, then writes half a file and fails as a full disk does."""
    calls = []

    def write(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) <= calls_before_failing:
            return real(obj, path, *args, **kwargs)
        with open(path, "wb") as f:
            f.write(b"\0" * 1000)  # a half-written file in the temporary folder
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    return write


def _safetensors_disk_full(tensors, path, *args, **kwargs):
    with open(path, "wb") as f:
        f.write(b"\0" * 1000)
    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def _tokenizer_disk_full(self, path):
    path.write_text('{"half": ')
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _fill_the_disk(monkeypatch, where: str) -> None:
    if where == "tokenizer":
        monkeypatch.setattr(TextTokenizer, "save", _tokenizer_disk_full)
    elif where == "weights, as safetensors reports it":
        monkeypatch.setattr(folder, "save_file", _safetensors_disk_full)
    else:  # the first save_file writes the weights, the second the optimizer state
        monkeypatch.setattr(folder, "save_file", _disk_full_after(folder.save_file, int(where == "optimizer state")))


@pytest.mark.parametrize("where", ["weights", "weights, as safetensors reports it", "optimizer state", "tokenizer"])
def test_a_full_disk_leaves_the_previous_checkpoint_in_place(tmp_path, char_tokenizer, monkeypatch, where):
    old = tiny_model("gpt2", vocab_size=char_tokenizer.vocab_size)
    out = save_checkpoint(tmp_path / "run", old, char_tokenizer)
    (out / "metrics.jsonl").write_text('{"step": 1}\n')
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fill_the_disk(monkeypatch, where)
    new = tiny_model("gpt2", vocab_size=char_tokenizer.vocab_size, n_embd=32)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(1.0)
    with pytest.raises(LlmlabError) as caught:
        save_checkpoint(out, new, char_tokenizer, trainer_state={"step": 2}, optimizer_tensors={"m": torch.ones(3)})
    assert caught.value.what.startswith(f"cannot write checkpoint {out}: ")
    assert "No space left on device" in caught.value.what and "\n" not in str(caught.value)
    assert caught.value.fix == "free space on the disk or choose another --out"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary or swapped-out folder left
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    monkeypatch.undo()
    loaded = load_checkpoint(out).model
    for name, tensor in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_a_failed_swap_puts_the_previous_checkpoint_back(tmp_path, char_tokenizer, monkeypatch):
    """The last step renames the new folder into place; if that fails, the old one is renamed back."""
    old = tiny_model("gpt2", vocab_size=char_tokenizer.vocab_size)
    out = save_checkpoint(tmp_path / "run", old, char_tokenizer)
    real_replace = os.replace

    def replace(src, dst):
        if ".tmp-" in str(src):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return real_replace(src, dst)

    monkeypatch.setattr(folder.os, "replace", replace)
    with pytest.raises(LlmlabError, match="cannot write checkpoint"):
        save_checkpoint(out, tiny_model("llama", vocab_size=char_tokenizer.vocab_size), char_tokenizer)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    loaded = load_checkpoint(out).model
    for name, tensor in old.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_cli_reports_a_full_disk_in_one_line(tmp_path, char_tokenizer, monkeypatch, capsys):
    save_checkpoint(tmp_path / "full", tiny_model("llama", vocab_size=char_tokenizer.vocab_size), char_tokenizer)
    monkeypatch.setattr(folder, "save_file", _safetensors_disk_full)
    code, _, err = run_cli(capsys, "quantize", tmp_path / "full", tmp_path / "int8", "--to", "int8")
    assert_one_line_error(code, err, f"cannot write checkpoint {tmp_path / 'int8'}", "No space left", "free space")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
