"""The pipeline end to end on generated text: every document counted, duplicates and contamination found,
the same output for any number of workers, and an interrupted run resumed to the same result."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmlab.curate.config import config_from_dict
from llmlab.curate.pipeline import CurateJob, curate
from llmlab.errors import LlmlabError

# The per-document filters have their own tests; here they are off so generated text passes them.
FILTERS_OFF = {"quality": {"enabled": False}, "language": {"enabled": False}, "toxicity": {"enabled": False},
               "pii": {"enabled": False}, "decontaminate": {"enabled": False}}  # fmt: skip
VOCAB = [f"word{i}" for i in range(3000)]


def _doc(rng: random.Random, words: int = 120) -> str:
    lines = [" ".join(rng.choices(VOCAB, k=12)) for _ in range(words // 12)]
    return "\n".join(lines) + "\n"


def _near_copy(rng: random.Random, text: str) -> str:
    """The same document with a few words changed (Jaccard of 5-grams well above 0.7)."""
    tokens = text.split(" ")
    for i in rng.sample(range(len(tokens)), 2):
        tokens[i] = "edited"
    return " ".join(tokens)


def _corpus(tmp_path: Path, count: int = 150) -> tuple[Path, dict[int, int], dict[int, int]]:
    """A JSONL corpus with exact and near copies planted; the copies' ids -> their originals' ids."""
    rng = random.Random(0)
    docs, exact, near = [], {}, {}
    for i in range(count):
        if i > 10 and i % 10 == 0:
            original = rng.randrange(0, i)
            while original in exact or original in near:
                original = rng.randrange(0, i)
            exact[i] = original
            docs.append(docs[original])
        elif i > 10 and i % 10 == 5:
            original = rng.choice([j for j in range(i) if j not in exact and j not in near])
            near[i] = original
            docs.append(_near_copy(rng, docs[original]))
        else:
            docs.append(_doc(rng))
    docs += ["", "   \n\n"]  # empty documents: removed by normalisation, counted
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path, exact, near


def _job(path: Path, out: Path, extra: dict | None = None, **kw) -> CurateJob:
    return CurateJob(str(path), out, config_from_dict({**FILTERS_OFF, **(extra or {})}), shard_docs=32, **kw)


def _outputs(out: Path) -> dict[str, str]:
    names = ["curation.json", "clusters.jsonl", "report.md", "config.yaml"]
    return {p.name: p.read_text() for p in sorted((out / "data").glob("*.jsonl"))} | {
        n: (out / n).read_text() for n in names
    }


def test_every_document_is_counted_and_planted_duplicates_are_removed(tmp_path):
    path, exact, near = _corpus(tmp_path)
    report = curate(_job(path, tmp_path / "out", workers=1))
    stages = report["stages"]
    assert stages["read"]["docs_in"] == 152
    removed = sum(sum(s["removed"].values()) for s in stages.values())
    assert removed + stages["boilerplate"]["docs_out"] == 152
    for previous, current in zip(list(stages.values()), list(stages.values())[1:]):
        assert current["docs_in"] == previous["docs_out"] and current["chars_in"] == previous["chars_out"]
    assert stages["normalize"]["removed"] == {"normalize.empty": 2}
    assert stages["exact_dedup"]["removed"] == {"exact_dedup.duplicate": len(exact)}
    assert stages["near_dedup"]["removed"] == {"near_dedup.duplicate": len(near)}
    kept = [json.loads(line)["id"] for p in sorted((tmp_path / "out/data").glob("*.jsonl")) for line in p.open()]
    assert kept == [i for i in range(150) if i not in exact and i not in near]
    clusters = {c["kept"]: c["members"] for c in map(json.loads, (tmp_path / "out/clusters.jsonl").open())}
    found = {m["id"]: (kept_id, m["kind"]) for kept_id, members in clusters.items() for m in members}
    assert found == {**{i: (o, "exact") for i, o in exact.items()}, **{i: (o, "near") for i, o in near.items()}}
    assert not (tmp_path / "out/work").exists()


def test_same_output_for_any_number_of_workers(tmp_path):
    path, _, _ = _corpus(tmp_path)
    curate(_job(path, tmp_path / "one", workers=1))
    curate(_job(path, tmp_path / "two", workers=2))
    assert _outputs(tmp_path / "one") == _outputs(tmp_path / "two")


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    path, _, _ = _corpus(tmp_path)
    curate(_job(path, tmp_path / "whole", workers=1))
    shards = []

    def stop_after_two(line: str) -> None:
        shards.append(line)
        if len(shards) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        curate(_job(path, tmp_path / "resumed", workers=1), stop_after_two)
    assert not (tmp_path / "resumed/curation.json").exists()
    assert len(list((tmp_path / "resumed/data").glob("*.jsonl"))) == 2
    lines = []
    curate(_job(path, tmp_path / "resumed", workers=1), lines.append)
    assert len(lines) == 3  # 152 documents in shards of 32: the last three shards, not all five
    assert _outputs(tmp_path / "resumed") == _outputs(tmp_path / "whole")


def test_a_finished_run_is_not_redone_and_other_settings_are_refused(tmp_path):
    path, _, _ = _corpus(tmp_path)
    first = curate(_job(path, tmp_path / "out", workers=1))
    lines = []
    assert curate(_job(path, tmp_path / "out", workers=1), lines.append) == first and not lines
    with pytest.raises(LlmlabError, match="other input or settings"):
        curate(_job(path, tmp_path / "out", {"dedup": {"threshold": 0.9}}, workers=1))
    again = curate(_job(path, tmp_path / "out", {"dedup": {"threshold": 0.9}}, workers=1, overwrite=True))
    assert again["stages"]["read"]["docs_in"] == 152


def test_output_inside_the_input_and_foreign_folders_are_refused(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.txt").write_text(_doc(random.Random(1)))
    with pytest.raises(LlmlabError, match="inside the input"):
        curate(_job(folder, folder / "curated"))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy/notes.txt").write_text("mine")
    with pytest.raises(LlmlabError, match="not a curation folder"):
        curate(_job(folder, tmp_path / "busy"))
    assert (tmp_path / "busy/notes.txt").read_text() == "mine"


def test_decontamination_removes_or_flags_planted_evaluation_text(tmp_path):
    rng = random.Random(3)
    evals = [_doc(rng, 40) for _ in range(5)]
    eval_file = tmp_path / "evalset.jsonl"
    eval_file.write_text("".join(json.dumps({"question": e, "answer": "4"}) + "\n" for e in evals))
    docs = [_doc(rng) for _ in range(20)]
    planted = {3: 0, 11: 2, 17: 4}
    for i, e in planted.items():
        docs[i] = docs[i] + " ".join(evals[e].split()[5:25]) + "\n"  # 20 words of it: several 13-grams
    corpus = tmp_path / "train.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    decon = {"decontaminate": {"enabled": True, "tasks": [], "files": [str(eval_file)]}}
    report = curate(_job(corpus, tmp_path / "removed", decon, workers=1))
    assert report["stages"]["decontaminate"]["removed"] == {"decontaminate.evalset.jsonl": 3}
    assert report["contamination"]["evalset.jsonl"]["documents"] == 3
    assert report["decontamination"]["too_short_texts"] == {"evalset.jsonl": 5}  # the one-word answers
    flag = {"decontaminate": {**decon["decontaminate"], "action": "flag"}}
    report = curate(_job(corpus, tmp_path / "flagged", flag, workers=1))
    assert report["flagged"] == sorted(planted)
    records = [json.loads(line) for line in (tmp_path / "flagged/data/part-00000.jsonl").open()]
    assert [r["id"] for r in records if r.get("flags")] == sorted(planted) and len(records) == 20


def test_boilerplate_paragraphs_seen_before_are_removed(tmp_path):
    rng = random.Random(4)
    notice = "This page is provided by Example Corp under its standard terms of service for all readers."
    docs = [_doc(rng, 48) + "\n" + notice + "\n" for _ in range(4)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    report = curate(_job(corpus, tmp_path / "out", {"boilerplate": {"enabled": True}}, workers=1))
    assert report["stages"]["boilerplate"]["edits"] == {"paragraphs": 3}
    texts = [json.loads(line)["text"] for line in (tmp_path / "out/data/part-00000.jsonl").open()]
    assert [notice in t for t in texts] == [True, False, False, False]


def test_a_bad_evaluation_set_is_refused_before_anything_is_written(tmp_path):
    path, _, _ = _corpus(tmp_path)
    missing = {"tasks": [], "files": [str(tmp_path / "no.jsonl")]}
    for decon, fragment in (({"tasks": ["mmlu"]}, "unknown task"), (missing, "is not a file")):
        with pytest.raises(LlmlabError, match=fragment):
            curate(_job(path, tmp_path / "out", {"decontaminate": {"enabled": True, **decon}}, workers=1))
        assert not (tmp_path / "out").exists()
