import pytest

from llmlab.data.clean import clean_documents
from llmlab.data.sources import read_documents
from llmlab.errors import LlmlabError
from llmlab.tokenizer import EOS, TextTokenizer, split_chunks, train_tokenizer
from tests.helpers import require_data


def test_bpe_round_trips_the_whole_default_corpus():
    docs = list(clean_documents(read_documents(None)))
    assert len(docs) > 500  # the interpreter's standard library
    tokenizer = train_tokenizer(docs[::20], kind="bpe", vocab_size=2048)
    ids = tokenizer.encode_batch(docs)
    assert [tokenizer.decode(i) for i in ids] == docs
    assert tokenizer.vocab_size == 2048


def test_char_tokenizer_round_trips_shakespeare_and_maps_unknown_characters():
    text = require_data("tinyshakespeare.txt").read_text()
    tokenizer = train_tokenizer([text], kind="char")
    assert tokenizer.vocab_size == len(set(text)) + 2  # characters, unknown, end-of-text
    assert tokenizer.decode(tokenizer.encode_document(text)) == text
    assert len(tokenizer.encode("Ω")) == 1  # an unseen character becomes one unknown token


def test_chunked_encoding_equals_whole_encoding_for_characters():
    text = "line one\nline two\n" * 5000
    tokenizer = train_tokenizer([text], kind="char")
    assert tokenizer.encode_document(text) == tokenizer.encode(text)
    chunks = list(split_chunks(text, size=1000))
    assert "".join(chunks) == text and all(c.endswith("\n") for c in chunks)


def test_saved_tokenizer_encodes_identically(tmp_path, bpe_tokenizer):
    bpe_tokenizer.save(tmp_path / "tokenizer.json")
    loaded = TextTokenizer.load(tmp_path / "tokenizer.json")
    text = "def add(a, b):\n    return a + b  # ünïcode"
    assert loaded.encode(text) == bpe_tokenizer.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert loaded.encode(EOS) == [loaded.eos_id]


def test_unknown_kind_and_tiny_vocabulary_are_refused():
    with pytest.raises(LlmlabError, match="unknown tokenizer kind"):
        train_tokenizer(["abc"], kind="wordpiece")
    with pytest.raises(LlmlabError, match="too small"):
        train_tokenizer(["abc"], kind="bpe", vocab_size=100)
