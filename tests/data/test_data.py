import json

import numpy as np
import pytest

from llmlab.data.clean import CleanReport, clean_documents
from llmlab.data.sources import SourceReport, read_documents
from llmlab.data.tokens import get_batch, prepare_data
from llmlab.errors import LlmlabError


def write_corpus(folder):
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("first document\r\nwith windows newlines\n")
    (folder / "sub" / "b.txt").write_text("second document\n" * 50)
    (folder / "sub" / "copy.txt").write_text("second document\n" * 50)  # exact duplicate
    (folder / "empty.txt").write_text("  \n")
    (folder / "image.bin").write_bytes(b"\x89PNG\x00\x00\x01binary")
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    return folder


def test_folder_reading_skips_binary_and_undecodable_files_and_cleans(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    sources, cleaning = SourceReport(), CleanReport()
    docs = list(clean_documents(read_documents(folder, "**/*", "text", sources), cleaning))
    assert (sources.files_read, sources.skipped_binary, sources.skipped_undecodable) == (4, 1, 1)
    assert (cleaning.kept, cleaning.duplicates, cleaning.empty) == (2, 1, 1)
    assert docs[0] == "first document\nwith windows newlines\n"


def test_glob_selects_files(tmp_path):
    folder = write_corpus(tmp_path / "corpus")
    docs = list(read_documents(folder, "sub/*.txt"))
    assert len(docs) == 2


def test_jsonl_reads_the_text_field_and_names_bad_lines(tmp_path):
    file = tmp_path / "d.jsonl"
    file.write_text(json.dumps({"body": "hello"}) + "\n\n" + json.dumps({"body": "world"}) + "\n")
    assert list(read_documents(file, text_field="body")) == ["hello", "world"]
    with pytest.raises(LlmlabError, match="d.jsonl:1 has no field 'text'"):
        list(read_documents(file))
    file.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(LlmlabError, match="d.jsonl:2 is not valid JSON"):
        list(read_documents(file))


def test_token_cache_is_reused_on_a_second_run(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("the cat sat on the mat.\n" * 400)
    lines: list[str] = []
    first = prepare_data(str(corpus), tokenizer_kind="char", log=lines.append)
    assert any("tokenised" in line for line in lines)
    lines.clear()
    second = prepare_data(str(corpus), tokenizer_kind="char", log=lines.append)
    assert any("reusing token cache" in line for line in lines)
    assert not any("tokenised" in line for line in lines)
    assert np.array_equal(first.train, second.train)
    assert len(first.val) == int((len(first.train) + len(first.val)) * 0.1)
    decoded = first.tokenizer.decode(np.concatenate([first.train, first.val]).tolist())
    assert decoded == "the cat sat on the mat.\n" * 400 + "<|endoftext|>"
    corpus.write_text("the dog sat on the log.\n" * 400)  # new content: a new cache entry
    lines.clear()
    prepare_data(str(corpus), tokenizer_kind="char", log=lines.append)
    assert any("tokenised" in line for line in lines)


def test_batches_are_a_pure_function_of_seed_and_step_with_shifted_targets():
    ids = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(ids, 4, 16, seed=0, step=3)
    x2, _ = get_batch(ids, 4, 16, seed=0, step=3)
    x3, _ = get_batch(ids, 4, 16, seed=0, step=4)
    assert x.equal(x2) and not x.equal(x3)
    assert y.equal(x + 1)


def test_missing_and_empty_data_are_refused(tmp_path):
    with pytest.raises(LlmlabError, match="does not exist"):
        prepare_data(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(LlmlabError, match="no usable text"):
        prepare_data(str(tmp_path / "empty.txt"))
