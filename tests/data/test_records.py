"""The same record readers serve fine-tuning, pre-training (--data) and evaluation tasks."""

from __future__ import annotations

import pytest

from llmlab.data.sources import read_documents
from llmlab.errors import LlmlabError
from llmlab.evaluation.tasks import load_task


@pytest.fixture
def parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [{"text": f"review {i}", "label": "Positive" if i % 2 else "Negative"} for i in range(8)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "reviews.parquet")
    return tmp_path / "reviews.parquet"


def test_pretraining_reads_one_document_per_record(parquet, tmp_path):
    assert list(read_documents(parquet)) == [f"review {i}" for i in range(8)]
    (tmp_path / "a.csv").write_text("body\nfirst\nsecond\n")
    assert list(read_documents(tmp_path / "a.csv", text_field="body")) == ["first", "second"]
    with pytest.raises(LlmlabError, match="record 1 has no text field 'text'"):
        list(read_documents(tmp_path / "a.csv"))


def test_an_evaluation_task_can_be_a_parquet_file(parquet):
    task = load_task(str(parquet))
    assert task.kind == "classification" and task.labels == ["Negative", "Positive"]
    assert len(task.demonstrations) == 4 and len(task.examples) == 4


def test_an_offline_hub_dataset_is_one_line(monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # the libraries read the variables once, at import, which an earlier test may have done: offline now,
    # rather than waiting for the network's timeouts (~20 s)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(LlmlabError, match="cannot load hub dataset knkarthick/dialogsum"):
        list(read_documents("hf:knkarthick/dialogsum"))
