"""`llmlab index build | add | search`, and bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json

from tests.helpers import assert_one_line_error, run_cli


def test_build_add_and_search(corpus, encoders, tmp_path, capsys):
    folder, records = corpus
    out = tmp_path / "index"
    code, stdout, err = run_cli(capsys, "index", "build", folder, "--embedder", encoders[0], "--out", out,
                                "--chunk-tokens", 24, "--overlap-tokens", 6, "--kind", "exact")  # fmt: skip
    assert code == 0, err
    assert "4 documents" in stdout and "(24 tokens, 6 overlap)" in stdout and "exact" in stdout
    assert "chunks of at most 24 tokens, 6 shared" in err and "embedding" in err  # settings and progress
    code, stdout, err = run_cli(capsys, "index", "add", out, records, "--text-field", "body", "--id-field", "id")
    assert code == 0, err
    assert "added 3 documents" in stdout
    code, stdout, err = run_cli(capsys, "index", "search", out, "bird sang in the tree", "-k", 3, "--mode", "hybrid")
    assert code == 0, err
    assert "rank" in stdout and "score" in stdout and "source" in stdout
    code, stdout, _ = run_cli(capsys, "index", "search", out, "quagga", "-k", 2, "--mode", "bm25", "--json")
    hits = json.loads(stdout)
    assert [h["rank"] for h in hits] == [1, 2] and all(h["source"].endswith("zebra.txt") for h in hits)
    assert "quagga" in hits[0]["text"] and len(hits[0]["span"]) == 2
    code, stdout, _ = run_cli(capsys, "index", "search", out, "nothing matches xyzzy", "--mode", "bm25")
    assert code == 0 and "no results" in stdout


def test_bad_input_is_one_line_and_writes_nothing(corpus, encoders, tmp_path, capsys):
    folder, records = corpus
    (tmp_path / "empty").mkdir()
    (tmp_path / "blank.txt").write_text("\n")
    out = tmp_path / "index"
    build = ["index", "build", "--embedder", encoders[0], "--out", out, "--chunk-tokens", 24, "--overlap-tokens", 6]
    cases = [
        ([*build, tmp_path / "empty"], "no documents under"),
        ([*build, tmp_path / "blank.txt"], "no documents in"),
        ([*build, records], "has no text field 'text'"),
        ([*build, folder, "--overlap-tokens", 24], "--overlap-tokens 24 must be >= 0 and below --chunk-tokens 24"),
        ([*build, folder, "--chunk-tokens", 100], "more than the embedder reads at once (62 tokens)"),
        ([*build, folder, "--embedder", tmp_path / "nowhere"], "nowhere"),
        (["index", "search", out, "query"], "is not an index"),
        (["index", "add", out, folder], "is not an index"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert_one_line_error(code, err, message)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.txt", "docs", "empty", "records.jsonl"]

    assert run_cli(capsys, *build, folder)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    cases = [
        ([*build, records], "already exists"),
        (["index", "search", out, "the cat", "-k", 0], "-k must be >= 1"),
        (["index", "search", out, "the cat", "--mode", "hybrid", "--rrf-k", -1], "--rrf-k must be >= 0"),
        (["index", "search", out, "the cat", "--embedder", encoders[1]], "is not the model"),
        (["index", "add", out, records, "--embedder", encoders[1]], "is not the model"),
        (["index", "add", out, records], "has no text field 'text'"),
        (["index", "add", out, folder], "is already in the index"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert_one_line_error(code, err, message)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
