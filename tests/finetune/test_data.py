"""Fine-tuning data: formats are detected and rendered, the loss falls on the response only, long
examples are cut or dropped and counted, packed rows compute what separate rows do, bad records are
one error naming their line."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.data.chat import DEFAULT_TEMPLATE, ChatTemplate, find_chat_template
from llmlab.data.objectives import IGNORE
from llmlab.data.records import read_records
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.finetune.data import collate, pack, packed_attention_mask, tokenize
from llmlab.finetune.examples import load_template, to_pieces
from llmlab.tokenizer import EOS, train_tokenizer
from tests.helpers import SAMPLE_TEXT, tiny_model

TOK = train_tokenizer([SAMPLE_TEXT + "0123456789+#:", "Below is an instruction"], kind="char")
CHAT = ChatTemplate(DEFAULT_TEMPLATE, EOS)
DECODER = family_spec("decoder")


def pieces_of(records, **kw):
    return to_pieces(records, "data.jsonl", kw.get("fmt"), kw.get("template"), CHAT)


def test_formats_are_detected_and_the_response_is_the_trained_piece():
    instruction = pieces_of([{"instruction": "Add.", "input": "1 + 2", "output": "3"}])[0]
    assert instruction[-1] == ("3", True) and "### Input:\n1 + 2" in instruction[0][0]
    completion = pieces_of([{"prompt": "1 + 2 =", "completion": " 3"}])[0]
    assert completion == [("1 + 2 =", False), (" 3", True)]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "Bye!"}]  # fmt: skip
    chat = pieces_of([{"messages": messages}])[0]
    assert [t for t, trained in chat if trained] == [f"Hello{EOS}", f"Bye!{EOS}"]
    assert "".join(t for t, _ in chat) == CHAT.render(messages)  # the pieces are the rendering, cut up


def test_a_hugging_face_chat_template_is_found_and_rendered(tmp_path):
    template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")  # fmt: skip
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    chat = find_chat_template(tmp_path, EOS)
    pieces = chat.prompt_and_turns([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    assert pieces == [("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False), ("Yo<|im_end|>\n", True)]
    broken = ChatTemplate("{{ raise_exception('no system role') }}", EOS, origin="x")
    with pytest.raises(LlmlabError, match="failed to render: no system role"):
        broken.render([])
    sneaky = ChatTemplate("{{ messages.__class__.__mro__ }}", EOS)  # the sandbox refuses attribute tricks
    with pytest.raises(LlmlabError):
        sneaky.render([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"instruction": "Add.", "output": ""}, "data.jsonl:1: the response is empty"),
        ({"messages": [{"role": "user", "content": "Hi"}]}, "no assistant turn"),
        ({"instruction": "Add.", "output": 3}, "field 'output' is missing or not text"),
        ({"text": "x"}, "cannot tell the format"),
    ],
)
def test_bad_records_are_one_error_naming_the_line(record, message):
    with pytest.raises(LlmlabError, match=message):
        pieces_of([record])


def test_template_fields_absent_from_a_record_are_named():
    with pytest.raises(LlmlabError, match="data.jsonl:1: the record has no text field 'dialogue'"):
        pieces_of([{"text": "x", "summary": "y"}], template=load_template("dialogsum"))


def test_readers_and_their_errors(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c"\n')
    with pytest.raises(LlmlabError, match=r"a.jsonl:3 is not valid JSON"):
        read_records(tmp_path / "a.jsonl")
    (tmp_path / "b.csv").write_text("prompt,completion\nhi,there\n")
    assert read_records(tmp_path / "b.csv") == [{"prompt": "hi", "completion": "there"}]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist([{"prompt": "p", "completion": "c"}]), tmp_path / "c.parquet")
    assert read_records(tmp_path / "c.parquet") == [{"prompt": "p", "completion": "c"}]
    (tmp_path / "d.json").write_text('[{"prompt": "p", "completion": "c"}]')
    assert read_records(tmp_path / "d.json")[0]["completion"] == "c"


def test_labels_cover_the_response_and_its_end_only():
    rows, report = tokenize(pieces_of([{"prompt": "1+2=", "completion": "3"}]), TOK, DECODER, 32, False, False)
    batch = collate(rows, 0, None, packed=False)
    labelled = batch.labels[0][batch.labels[0] != IGNORE].tolist()
    assert labelled == TOK.encode("3") + [TOK.eos_id]  # the response and end-of-sequence, nothing of the prompt
    assert batch.inputs[0].tolist() == TOK.encode("1+2=3")  # inputs stop before the last label
    rows, _ = tokenize(pieces_of([{"prompt": "1+2=", "completion": "3"}]), TOK, DECODER, 32, True, False)
    assert int((collate(rows, 0, None, False).labels != IGNORE).sum()) == len("1+2=3")  # prompt trained too


def test_long_examples_are_cut_in_the_prompts_middle_or_dropped_and_counted():
    records = [{"prompt": "0123456789" * 3, "completion": "ab"}, {"prompt": "01", "completion": "cd"}]
    rows, report = tokenize(pieces_of(records), TOK, DECODER, 15, False, drop=False)
    assert (report.cut, report.dropped, len(rows)) == (1, 0, 2)
    assert len(rows[0].ids) == 16 and TOK.decode(rows[0].ids[:3]) == "012" and TOK.decode(rows[0].ids[-4:-1]) == "9ab"
    rows, report = tokenize(pieces_of(records), TOK, DECODER, 15, False, drop=True)
    assert (report.cut, report.dropped, len(rows)) == (0, 1, 1) and "1 longer than the context were dropped" in (
        report.line("training")
    )


def test_packed_rows_give_each_example_the_logits_it_has_alone():
    model = tiny_model("llama", vocab_size=TOK.vocab_size)
    records = [{"prompt": p, "completion": c} for p, c in (("1+2=", "3"), ("10+20=", "30"), ("7+7=", "14"))]
    rows, _ = tokenize(pieces_of(records), TOK, DECODER, 63, False, False)
    packed = pack(rows, 64, seed=0)
    assert len(packed) == 1  # all three fit one row
    batch = collate(packed, 0, None, packed=True)
    with torch.no_grad():
        together = model(batch.inputs, batch.positions, mask=packed_attention_mask(batch.segments))
        for k in range(1, 4):
            where = batch.segments[0] == k
            alone = model(batch.inputs[:, where])
            torch.testing.assert_close(together[:, where], alone, rtol=0, atol=1e-5)
    single = collate(rows, 0, None, packed=False)
    assert int((batch.labels != IGNORE).sum()) == int((single.labels != IGNORE).sum())  # no label across examples


def test_weighted_sources_never_train_on_a_validation_example(tmp_path):
    from types import SimpleNamespace

    from llmlab.checkpoint.folder import Checkpoint
    from llmlab.finetune.config import FinetuneConfig
    from llmlab.finetune.rows import training_rows

    records = [{"prompt": f"{a}+{b}=", "completion": str(a + b)} for a in range(10) for b in range(10)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    model = tiny_model("llama", vocab_size=TOK.vocab_size, block_size=64)
    cfg = FinetuneConfig(base="x", data=[f"{tmp_path / 'a.jsonl'}:2.5"], val_fraction=0.1, batch_size=4)
    seen: dict[str, set] = {"train": set(), "val": set()}
    rows = training_rows(cfg, Checkpoint(model, TOK, SimpleNamespace(), tmp_path / "none"), 1, None, lambda s: None)
    for split, validation, steps in (("train", False, 200), ("val", True, 3)):
        for step in range(steps):
            batch = rows.batches(validation, step + (2**31 if validation else 0), 0)
            seen[split].update(tuple(row[row != 0].tolist()) for row in batch.inputs)
    assert seen["val"] and not seen["val"] & seen["train"]
