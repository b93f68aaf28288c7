"""`llmlab data clean` from the command line: a run, its self-documenting config, and bad input."""

from __future__ import annotations

import json

import yaml

from llmlab.curate.config import CurateConfig, config_from_dict
from llmlab.data.sources import read_documents
from tests.helpers import assert_one_line_error, run_cli

OFF = (
    "quality: {enabled: false}\nlanguage: {enabled: false}\ntoxicity: {enabled: false}\n"
    "decontaminate: {enabled: false}\n"
)


def _corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.txt").write_text(f"document {i} " * 30 + "\nmail me at jane.doe@example.com\n")
    (folder / "copy.txt").write_text((folder / "0.txt").read_text())
    (folder / "blob.bin").write_bytes(b"\x00\x01binary")
    config = tmp_path / "c.yaml"
    config.write_text(OFF)
    return folder, config


def test_clean_writes_curated_data_that_pretrain_reads(tmp_path, capsys):
    folder, config = _corpus(tmp_path)
    code, out, err = run_cli(capsys, "data", "clean", folder, "--out", tmp_path / "out", "--config", config,
                             "--workers", "1")  # fmt: skip
    assert code == 0, err
    assert "curated data in" in out and "exact_dedup" in out
    report = json.loads((tmp_path / "out/curation.json").read_text())
    assert report["stages"]["exact_dedup"]["removed"] == {"exact_dedup.duplicate": 1}
    assert report["stages"]["pii"]["edits"] == {"email": 6}  # scrubbed before dedup: the copy's too
    assert report["sources"]["skipped_binary"] == 1
    docs = list(read_documents(tmp_path / "out"))  # the curated folder as --data: its documents only
    assert len(docs) == 5 and all("<EMAIL>" in d and "@" not in d for d in docs)


def test_print_config_is_yaml_that_reads_back_as_the_defaults(capsys):
    code, out, _ = run_cli(capsys, "data", "clean", "--print-config")
    assert code == 0 and "# Gopher: fewer words is not a useful document" in out
    assert config_from_dict(yaml.safe_load(out)) == CurateConfig()


def test_bad_input_is_one_line(tmp_path, capsys):
    folder, config = _corpus(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("dedup:\n  threshold: 2\n")
    code, _, err = run_cli(capsys, "data", "clean", folder, "--out", tmp_path / "o", "--config", bad)
    assert_one_line_error(code, err, "dedup.threshold = 2.0 is out of range", "allowed: 0.0 to 1.0")
    bad.write_text("dedupe: {}\n")
    code, _, err = run_cli(capsys, "data", "clean", folder, "--out", tmp_path / "o", "--config", bad)
    assert_one_line_error(code, err, "unknown stage 'dedupe'")
    code, _, err = run_cli(capsys, "data", "clean", folder, "--out", folder / "inside", "--config", config)
    assert_one_line_error(code, err, "inside the input")
    code, _, err = run_cli(capsys, "data", "clean", tmp_path / "missing", "--out", tmp_path / "o2")
    assert_one_line_error(code, err, "does not exist")
    code, _, err = run_cli(capsys, "data", "clean", folder)
    assert_one_line_error(code, err, "needs INPUT and --out")


def test_an_unfinished_curation_is_not_read_as_data(tmp_path):
    folder = tmp_path / "half"
    (folder / "data").mkdir(parents=True)
    (folder / "run.json").write_text("{}")
    try:
        list(read_documents(folder))
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        assert "unfinished curation" in str(exc)
    else:
        raise AssertionError("an unfinished curation was read")


def test_tokens_are_counted_and_plan_compute_takes_them(tmp_path, capsys):
    from llmlab.tokenizer import train_tokenizer

    folder, config = _corpus(tmp_path)
    texts = [p.read_text() for p in sorted(folder.glob("*.txt"))]
    tokenizer = train_tokenizer(texts, "bpe", 300)
    tokenizer.save(tmp_path / "tokenizer.json")
    code, out, err = run_cli(capsys, "data", "clean", folder, "--out", tmp_path / "out", "--config", config,
                             "--tokenizer", tmp_path / "tokenizer.json", "--workers", "1")  # fmt: skip
    assert code == 0, err
    tokens = json.loads((tmp_path / "out/curation.json").read_text())["tokens"]
    kept = [json.loads(line)["text"] for line in (tmp_path / "out/data/part-00000.jsonl").open()]
    assert tokens["in"] == sum(len(tokenizer.encode(t)) for t in texts)
    assert tokens["out"] == sum(len(tokenizer.encode(t)) for t in kept) < tokens["in"]
    code, out, err = run_cli(capsys, "plan", "compute", "--params", "1e6", "--tokens-from", tmp_path / "out", "--json")
    assert code == 0, err
    assert json.loads(out)["tokens"] == tokens["out"]
    code, _, err = run_cli(capsys, "plan", "compute", "--params", "1e6", "--tokens-from", tmp_path)
    assert_one_line_error(code, err, "not a finished curation")


def test_pretrain_curates_its_data_first(tmp_path, capsys):
    from tests.cli.test_cli import TINY

    folder, config = _corpus(tmp_path)
    code, out, err = run_cli(capsys, "pretrain", "--data", folder, "--curate", config, "--out", tmp_path / "run",
                             "--max-steps", "2", *TINY)  # fmt: skip
    assert code == 0, err
    assert "curated 6 documents to 5" in out + err
