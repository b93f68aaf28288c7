"""Documents and their sources; chunks counted in embedder tokens, with an exact overlap."""

from __future__ import annotations

import json

import pytest

from llmlab.errors import LlmlabError
from llmlab.retrieval.chunking import ChunkSettings, chunk_document, chunk_documents, windows
from llmlab.retrieval.documents import Document, read_documents
from llmlab.tokenizer import train_tokenizer
from tests.retrieval.conftest import WORDS


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("overlap", [0, 1, 2, 4, 7])
@pytest.mark.parametrize("n", [1, 2, 5, 8, 9, 23])
def test_windows_cover_the_document_with_exact_overlaps(n, size, overlap):
    if overlap >= size:
        return
    spans = windows(n, ChunkSettings(size, overlap))
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(end - start == size for start, end in spans[:-1])  # only the last may be short
    assert 0 < spans[-1][1] - spans[-1][0] <= size
    for (_, end), (next_start, next_end) in zip(spans, spans[1:]):
        assert end - next_start == overlap  # exactly `overlap` tokens shared
        assert next_end > end  # every window brings new tokens


def test_windows_by_hand():
    assert windows(10, ChunkSettings(4, 1)) == [(0, 4), (3, 7), (6, 10)]
    assert windows(4, ChunkSettings(4, 1)) == [(0, 4)]
    assert windows(11, ChunkSettings(4, 1)) == [(0, 4), (3, 7), (6, 10), (9, 11)]


def test_chunks_keep_the_documents_own_characters_and_token_spans():
    tokenizer = train_tokenizer([WORDS * 10], kind="bpe", vocab_size=300, family="encoder")
    text = "The cat sat on the mat, while a dog slept by the door. " * 5
    ids = tokenizer.encode(text)
    chunks = chunk_document(Document(text, "a.txt"), tokenizer, ChunkSettings(16, 4), context=62)
    assert [(c.start, c.end) for c in chunks] == windows(len(ids), ChunkSettings(16, 4))
    for c in chunks:
        assert c.text == text[c.char_start : c.char_end] and c.source == "a.txt"
        assert tokenizer.encode(c.text) == ids[c.start : c.end]  # whole words here: the same tokens
    assert chunks[0].text.startswith("The cat") and chunks[-1].text.endswith("door. ")


def test_settings_are_checked_against_the_embedders_context():
    for settings, message in [
        (ChunkSettings(8, 8), "below --chunk-tokens"),
        (ChunkSettings(8, -1), "must be >= 0"),
        (ChunkSettings(0, 0), "must be >= 1"),
        (ChunkSettings(63, 4), "more than the embedder reads at once (62 tokens)"),
    ]:
        with pytest.raises(LlmlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
            settings.check(62)
    ChunkSettings(62, 61).check(62)
    with pytest.raises(LlmlabError, match="hold no tokens"):
        tokenizer = train_tokenizer([WORDS], kind="bpe", vocab_size=300, family="encoder")
        chunk_documents([], tokenizer, ChunkSettings(8, 2), 62)


def test_documents_from_folders_and_jsonl_name_their_source(corpus, tmp_path):
    folder, records = corpus
    documents = read_documents([folder, records], text_field="body", id_field="id")
    sources = [d.source for d in documents]
    files = ("animals.txt", "markets.md", "nested/baking.txt", "nested/zebra.txt")  # sorted, recursive
    assert sources == [str(folder / n) for n in files] + [f"{records}:{line}" for line in (1, 2, 3)]
    assert [d.id for d in documents[-3:]] == ["r1", "r2", "r3"] and documents[0].id is None
    assert documents[-1].key == "r3" and documents[0].key == str(folder / "animals.txt")
    without_ids = read_documents([records], text_field="body")
    assert [d.key for d in without_ids] == [f"{records}:1", f"{records}:2", f"{records}:3"]


def test_bad_documents_are_one_clear_error(corpus, tmp_path):
    folder, records = corpus
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("  \n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"body": "x"}) + "\n{oops\n")
    cases = [
        ([tmp_path / "empty"], {}, "no documents under"),
        ([tmp_path / "blank.txt"], {}, "no documents in"),
        ([tmp_path / "missing"], {}, "does not exist"),
        ([records], {}, "has no text field 'text'"),
        ([records], {"text_field": "body", "id_field": "name"}, ":1 has no id field 'name'"),
        ([tmp_path / "bad.jsonl"], {"text_field": "body"}, "bad.jsonl:2 is not valid JSON"),
        ([], {}, "no documents were given"),
    ]
    for paths, options, message in cases:
        with pytest.raises(LlmlabError, match=message):
            read_documents(paths, **options)
