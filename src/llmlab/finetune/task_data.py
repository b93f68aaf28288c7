"""Examples -> rows -> batches for an encoder with a task head.

A text becomes [CLS] text [SEP] (cut at the end to the context) with one label (an index, a multi-hot
vector or a score). A tagged sentence becomes [CLS] sub-words [SEP] with each word's tag on its first
sub-word and IGNORE on the rest and on the special tokens, as is standard for BERT taggers. Batches are
the instruction data's: a pure function of (seed, step, micro-step) over an epoch-shuffled walk."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from llmlab.data.collate import pad_rows
from llmlab.data.objectives import IGNORE, Batch
from llmlab.data.records import read_records
from llmlab.data.tagging import TaggedSentence, check_bio, read_conll, tagged_records
from llmlab.errors import LlmlabError
from llmlab.evaluation.tasks import sentiment_task
from llmlab.finetune.data import row_indices
from llmlab.tokenizer import TextTokenizer

LabelValue = int | float | list[float]


@dataclass
class TaskRow:
    ids: list[int]
    label: LabelValue | list[int]  # an index, a score, a multi-hot vector, or a tag index per token


@dataclass
class TextExample:
    text: str
    label: object  # as read: a label name, a list of names, or a number


def text_examples(source: str, text_field: str, label_field: str, split: str = "train") -> list[TextExample]:
    """Records with a text and a label (`task:sentiment`: the shared rt-polarity training split)."""
    if source == "task:sentiment":
        records, text_field, label_field = sentiment_task().demonstrations, "text", "label"
    else:
        records = read_records(source, split)
    examples = []
    for number, record in enumerate(records, start=1):
        if text_field not in record or label_field not in record:
            missing = text_field if text_field not in record else label_field
            raise LlmlabError(f"{source}: record {number} has no {missing!r} field (it has {', '.join(record)})",
                              "name the fields with --text-field and --label-field")  # fmt: skip
        examples.append(TextExample(str(record[text_field]), record[label_field]))
    return examples


def tagged_examples(source: str, split: str = "train") -> list[TaggedSentence]:
    """CoNLL column files by their suffix, else records with `tokens` and `tags`."""
    if source.endswith((".conll", ".iob", ".bio", ".txt")):
        return read_conll(source)
    return tagged_records(read_records(source, split), source)


def label_names(task: str, train: list, given: list[str], source: str) -> list[str]:
    """The head's labels: --labels as given, else every label of the training data, sorted."""
    if task == "regress":
        return []
    if task == "tag":
        found = check_bio(train, source)
    else:
        found = sorted({str(n) for e in train for n in (e.label if isinstance(e.label, list) else [e.label])})
    labels = given or found
    if len(labels) < 2:
        raise LlmlabError(f"{source}: the training data has one label only ({', '.join(labels)})",
                          "a classifier needs at least two classes: add examples of another")  # fmt: skip
    return labels


def text_ids(tok: TextTokenizer, family: str, ids: list[int], block: int) -> list[int]:
    """A text as a classifier reads it, cut at the end to `block`: [CLS] text [SEP] (encoder), or the
    tokenizer's prefix and the text (decoder: its head reads the last token)."""
    if family == "decoder":
        prefix = list(tok.prefix_ids)
        return [*prefix, *ids[: block - len(prefix)]]
    cls, sep = tok.require("cls", "to read text"), tok.require("sep", "to read text")
    return [cls, *ids[: block - 2], sep]


def text_rows(examples: list[TextExample], task: str, labels: list[str], tok: TextTokenizer, family: str,
              block: int, source: str) -> list[TaskRow]:  # fmt: skip
    """One row per text (see `text_ids`) with its label encoded for the task."""
    index = {name: i for i, name in enumerate(labels)}
    rows = []
    for example, ids in zip(examples, tok.encode_batch([e.text for e in examples])):
        if not ids:
            raise LlmlabError(f"{source}: the text of a record is empty", "give every record some text")
        rows.append(TaskRow(text_ids(tok, family, ids, block), _encode_label(example.label, task, index, source)))
    return rows


def _encode_label(value: object, task: str, index: dict[str, int], source: str) -> LabelValue:
    if task == "regress":
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise LlmlabError(f"{source}: the score {value!r} is not a number", "give numeric labels") from None
    names = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    unknown = [n for n in names if n not in index]
    if unknown:
        raise LlmlabError(f"{source}: the label {unknown[0]!r} is not one of the head's ({', '.join(index)})",
                          "train on data that has it, or list every label with --labels")  # fmt: skip
    if task == "multilabel":
        return [1.0 if name in names else 0.0 for name in index]
    return index[names[0]]


def tag_rows(sentences: list[TaggedSentence], labels: list[str], tok: TextTokenizer, block: int,
             source: str) -> tuple[list[TaskRow], int]:  # fmt: skip
    """Sub-word rows with each word's tag on its first piece; (rows, sentences cut to `block`)."""
    index = {name: i for i, name in enumerate(labels)}
    cls, sep = tok.require("cls", "to read text"), tok.require("sep", "to read text")
    rows, cut = [], 0
    for sentence in sentences:
        ids, tags = [cls], [IGNORE]
        for tag, pieces in zip(sentence.tags, tok.encode_batch(sentence.words)):
            if tag not in index:
                raise LlmlabError(f"{source}: the tag {tag!r} is not one of the head's ({', '.join(index)})",
                                  "train on data that has it, or list every tag with --labels")  # fmt: skip
            pieces = pieces or [tok.require("unk", "for a word with no token")]
            ids += pieces
            tags += [index[tag]] + [IGNORE] * (len(pieces) - 1)
        if len(ids) + 1 > block:
            ids, tags, cut = ids[: block - 1], tags[: block - 1], cut + 1
        rows.append(TaskRow([*ids, sep], [*tags, IGNORE]))
    return rows, cut


def collate_task(rows: list[TaskRow], task: str, pad_id: int) -> Batch:
    """Right-padded ids and mask; labels as the loss wants them (tags padded with IGNORE)."""
    inputs, mask = pad_rows([r.ids for r in rows], pad_id)
    if task == "tag":
        labels, _ = pad_rows([r.label for r in rows], IGNORE)  # type: ignore[misc]
    elif task in ("multilabel", "regress"):
        labels = torch.tensor([r.label for r in rows], dtype=torch.float32)
    else:
        labels = torch.tensor([r.label for r in rows], dtype=torch.long)
    return Batch(inputs, labels, mask)


def task_batches(train: list[TaskRow], val: list[TaskRow], task: str, batch_size: int, grad_accum: int, seed: int,
                 pad_id: int, share: slice | None = None) -> Callable[[bool, int, int], Batch]:  # fmt: skip
    """(validation?, step, micro) -> batch, as `finetune.data.batch_source` draws them."""
    if not train or not val:
        raise LlmlabError("no training or no validation example", "use more data or pass --val-data")
    rows = share or slice(None)

    def draw(validation: bool, step: int, micro: int) -> Batch:
        if validation:
            first = (step - 2**31) * batch_size
            picked = [val[(first + k) % len(val)] for k in range(batch_size)]
        else:
            picked = [train[i] for i in row_indices(len(train), batch_size, grad_accum, seed, step, micro)]
        return collate_task(picked[rows], task, pad_id)

    return draw
