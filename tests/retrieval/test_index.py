"""The index folder: build, load, search, add; refusals; a failed write changes nothing."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from llmlab.errors import LlmlabError
from llmlab.introspect.encode import embed
from llmlab.retrieval import ChunkSettings, Index, add_documents, build_index, load_embedder, store

SETTINGS = ChunkSettings(24, 6)


def build(corpus, encoder, out, *paths, kind="hnsw", **options):
    folder, records = corpus
    paths = paths or (folder, records)
    return build_index(paths, load_embedder(encoder), out, SETTINGS, kind, text_field="body", id_field="id", **options)


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_build_writes_vectors_chunks_and_settings(corpus, encoders, tmp_path):
    report = build(corpus, encoders[0], tmp_path / "index")
    assert sorted(p.name for p in (tmp_path / "index").iterdir()) == [
        "chunks.jsonl", "hnsw.safetensors", "index.json", "vectors.safetensors"
    ]  # fmt: skip
    meta = json.loads((tmp_path / "index" / "index.json").read_text())
    assert meta["chunking"] == {"chunk_tokens": 24, "overlap_tokens": 6, "text_field": "body", "id_field": "id"}
    assert meta["counts"] == {"documents": 7, "chunks": report.chunks} and meta["kind"] == "hnsw"
    assert meta["embedder"]["source"] == str(encoders[0].resolve()) and meta["dims"] == 32
    assert meta["embedder"]["context"] == 62 and len(meta["embedder"]["fingerprint"]) == 64
    index = Index.load(tmp_path / "index")
    assert len(index) == report.chunks > 7  # the longer files make several chunks
    assert all(c.end - c.start <= 24 for c in index.chunks)
    assert {c.id for c in index.chunks} == {None, "r1", "r2", "r3"}
    ckpt = index.embedder.checkpoint
    reference = embed(ckpt.model, ckpt.tokenizer, [c.text for c in index.chunks]).numpy()
    np.testing.assert_allclose(index.vectors, reference, atol=1e-5)  # batching by length changes nothing
    np.testing.assert_allclose(np.linalg.norm(index.vectors, axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("kind", ["exact", "hnsw"])
def test_dense_search_is_the_brute_force_ranking(corpus, encoders, tmp_path, kind):
    build(corpus, encoders[0], tmp_path / "index", kind=kind)
    index = Index.load(tmp_path / "index")
    query = "the dog slept by the door"
    ckpt = index.embedder.checkpoint
    q = embed(ckpt.model, ckpt.tokenizer, [query]).numpy()[0]
    reference = index.vectors.astype(np.float64) @ q
    expected = np.sort(reference)[::-1][:5]  # repeated sentences make equal chunks: compare scores, not rows
    hits = index.search(query, k=5, exact=True)
    assert [h.rank for h in hits] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([h.score for h in hits], expected, rtol=1e-5)
    np.testing.assert_allclose([reference[h.chunk] for h in hits], expected, rtol=1e-5)
    best = index.search(query, k=1)[0]  # the graph finds a best chunk too
    assert best.score == pytest.approx(expected[0], rel=1e-5)
    hit = hits[0]
    chunk = index.chunks[hit.chunk]
    assert (hit.text, hit.source, hit.id, hit.span) == (chunk.text, chunk.source, chunk.id, (chunk.start, chunk.end))


def test_bm25_and_hybrid_through_the_index(corpus, encoders, tmp_path):
    folder, _ = corpus
    build(corpus, encoders[0], tmp_path / "index")
    index = Index.load(tmp_path / "index")
    lexical = index.search("quagga", k=3, mode="bm25")
    assert lexical and {h.source for h in lexical} == {str(folder / "nested" / "zebra.txt")}  # its 2 chunks
    rankings = [[h.chunk for h in index.search("quagga", k=100, mode=mode)] for mode in ("dense", "bm25")]
    hybrid = index.search("quagga", k=3, mode="hybrid")
    for hit in hybrid:  # the fused score by hand: 1 / (60 + rank) from each ranking that holds the chunk
        expected = sum(1 / (60 + r.index(hit.chunk) + 1) for r in rankings if hit.chunk in r)
        assert hit.score == pytest.approx(expected, abs=1e-12)
    assert {h.chunk for h in lexical} <= {h.chunk for h in hybrid}  # in both lists: ranked above the rest
    with pytest.raises(LlmlabError, match="k must be >= 1"):
        index.search("quagga", k=0)
    with pytest.raises(LlmlabError, match="unknown search mode"):
        index.search("quagga", mode="sparse")


def test_adding_documents_equals_building_over_all_of_them(corpus, encoders, tmp_path):
    folder, records = corpus
    whole = build(corpus, encoders[0], tmp_path / "whole", kind="exact")
    build(corpus, encoders[0], tmp_path / "parts", folder, kind="exact")
    added = add_documents(tmp_path / "parts", [records])
    assert (added.documents, added.total_chunks) == (3, whole.chunks)
    a, b = Index.load(tmp_path / "whole"), Index.load(tmp_path / "parts")
    assert a.chunks == b.chunks and a.meta["counts"] == b.meta["counts"]
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-5)
    for mode in ("dense", "bm25", "hybrid"):
        query = "bonds on monday"
        assert [h.chunk for h in a.search(query, 5, mode)] == [h.chunk for h in b.search(query, 5, mode)]
    with pytest.raises(LlmlabError, match="already in the index"):
        add_documents(tmp_path / "parts", [records])


def test_adding_to_an_hnsw_index_extends_its_graph(corpus, encoders, tmp_path):
    folder, records = corpus
    build(corpus, encoders[0], tmp_path / "index", folder)
    add_documents(tmp_path / "index", [records])
    index = Index.load(tmp_path / "index")
    assert index._graph.ntotal == len(index)
    query = index.vectors[-1:]  # the last added chunk finds itself through the graph
    assert index.dense(query, 1)[1][0, 0] == len(index) - 1


def test_another_embedder_is_refused(corpus, encoders, tmp_path):
    folder, records = corpus
    build(corpus, encoders[0], tmp_path / "index", folder)
    before = snapshot(tmp_path / "index")
    other = load_embedder(encoders[1])
    with pytest.raises(LlmlabError, match="is not the model .* was built with"):
        add_documents(tmp_path / "index", [records], embedder=other)
    with pytest.raises(LlmlabError, match="is not the model .* was built with"):
        Index.load(tmp_path / "index", embedder=encoders[1])
    assert snapshot(tmp_path / "index") == before
    Index.load(tmp_path / "index", embedder=load_embedder(encoders[0]))  # the same weights: accepted


def test_a_failed_or_interrupted_add_leaves_the_index_unchanged(corpus, encoders, tmp_path, monkeypatch):
    folder, records = corpus
    build(corpus, encoders[0], tmp_path / "index", folder)
    before = snapshot(tmp_path / "index")
    hits = [h.chunk for h in Index.load(tmp_path / "index").search("the cat", 5)]
    real_save = store.save_file

    def disk_full(tensors, path):
        if path.name == store.HNSW:  # the vectors are written, then the disk is full
            raise OSError(28, "No space left on device")
        real_save(tensors, path)

    monkeypatch.setattr(store, "save_file", disk_full)
    with pytest.raises(LlmlabError, match="cannot write index .*: No space left on device"):
        add_documents(tmp_path / "index", [records])
    monkeypatch.undo()

    real_replace = os.replace

    def rename_fails(src, dst):
        if ".tmp-" in str(src):
            raise OSError(5, "Input/output error")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", rename_fails)  # the old folder is moved aside, then back
    with pytest.raises(LlmlabError, match="Input/output error"):
        add_documents(tmp_path / "index", [records])
    monkeypatch.undo()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("llmlab.retrieval.embedder.Embedder.embed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        add_documents(tmp_path / "index", [records])
    monkeypatch.undo()

    assert snapshot(tmp_path / "index") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "index", "records.jsonl"]  # no temp or lock left
    assert [h.chunk for h in Index.load(tmp_path / "index").search("the cat", 5)] == hits


def test_an_existing_folder_is_replaced_only_when_asked_and_only_if_an_index(corpus, encoders, tmp_path):
    folder, records = corpus
    build(corpus, encoders[0], tmp_path / "index", records)
    with pytest.raises(LlmlabError, match="already exists"):
        build(corpus, encoders[0], tmp_path / "index", folder)
    build(corpus, encoders[0], tmp_path / "index", folder, overwrite=True)
    assert Index.load(tmp_path / "index").meta["counts"]["documents"] == 4
    with pytest.raises(LlmlabError, match="is not an index"):
        build(corpus, encoders[0], folder, records, overwrite=True)
    (tmp_path / "index" / "chunks.jsonl").write_text("altered\n")
    with pytest.raises(LlmlabError, match="chunks.jsonl does not match its recorded checksum"):
        Index.load(tmp_path / "index")
