"""What a fine-tuned task head says about new text: a label (or several, or a score) per text with
probabilities, and a tag per word with the entities those tags spell."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.data.collate import pad_rows
from llmlab.data.tagging import bio_spans
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.finetune.task_data import text_ids
from llmlab.model import LanguageModel
from llmlab.tokenizer import TextTokenizer


@dataclass
class Classification:
    text: str
    labels: list[str]  # the predicted label (classify), every label above 0.5 (multilabel), [] (regress)
    scores: dict[str, float]  # probability per label (sigmoid for multilabel); {"score": value} for regress


@dataclass
class Entity:
    type: str
    text: str
    start: int  # word index
    end: int  # one past the last word
    probability: float  # the mean of its words' tag probabilities


@dataclass
class Tagging:
    words: list[str]
    tags: list[str]
    probabilities: list[float]
    entities: list[Entity]


def _require_task(model: LanguageModel, kinds: tuple[str, ...], command: str) -> str:
    task = getattr(model.config, "task", None)
    if task not in kinds:
        have = f"a {task} head" if task else "no task head"
        raise LlmlabError(f"{command} needs an encoder fine-tuned with --task {' or '.join(kinds)}; this model has "
                          f"{have}", f"fine-tune one: llmlab finetune BASE --task {kinds[0]} --data ...")  # fmt: skip
    return task


@torch.inference_mode()
def classify_texts(model: LanguageModel, tokenizer: TextTokenizer, texts: list[str],
                   batch_size: int = 32) -> list[Classification]:  # fmt: skip
    """Each text read as [CLS] text [SEP] (cut to the context) and scored by the head."""
    task = _require_task(model, ("classify", "multilabel", "regress"), "classify")
    if not texts:
        raise LlmlabError("no text to classify", "pass --text (repeatable) or --file")
    block, labels, results, family = model.config.block_size, model.config.labels, [], model.config.family
    for first in range(0, len(texts), batch_size):
        chunk = texts[first : first + batch_size]
        encoded = tokenizer.encode_batch(chunk)
        empty = next((t for t, ids in zip(chunk, encoded) if not ids), None)
        if empty is not None:
            raise LlmlabError("a text to classify is empty", "give every text some words")
        rows = [text_ids(tokenizer, family, ids, block) for ids in encoded]
        ids, mask = pad_rows(rows, family_spec(model.config).pad_id(tokenizer))
        logits = model.task_logits(ids.to(model.device), mask.to(model.device)).float().cpu()
        for text, row in zip(chunk, logits):
            results.append(_classification(text, row, task, labels))
    return results


def _classification(text: str, row: torch.Tensor, task: str, labels: list[str]) -> Classification:
    if task == "regress":
        return Classification(text, [], {"score": float(row[0])})
    probs = row.sigmoid() if task == "multilabel" else row.softmax(-1)
    scores = {name: float(p) for name, p in zip(labels, probs)}
    picked = [n for n, p in scores.items() if p > 0.5] if task == "multilabel" else [max(scores, key=scores.get)]
    return Classification(text, picked, scores)


def tag_text(model: LanguageModel, tokenizer: TextTokenizer, text: str) -> Tagging:
    """The text's words (split on whitespace), tagged."""
    words = text.split()
    if not words:
        raise LlmlabError("no text to tag", "pass --text")
    return tag_words(model, tokenizer, words)


@torch.inference_mode()
def tag_words(model: LanguageModel, tokenizer: TextTokenizer, words: list[str]) -> Tagging:
    """Each word tagged by the head's prediction at its first sub-word; a sentence longer than the
    context is tagged in full by reading it in windows of whole words."""
    _require_task(model, ("tag",), "tag")
    cls, sep = tokenizer.require("cls", "to read text"), tokenizer.require("sep", "to read text")
    unk = tokenizer.unk_id if tokenizer.unk_id is not None else sep
    pieces = [p or [unk] for p in tokenizer.encode_batch(words)] if words else []
    tags: list[str] = []
    confidence: list[float] = []
    for window in _windows([len(p) for p in pieces], model.config.block_size - 2):
        ids, firsts = [cls], []
        for k in window:
            firsts.append(len(ids))
            ids += pieces[k][: model.config.block_size - 2]
        x = torch.tensor([[*ids, sep]], device=model.device)
        best, indices = model.task_logits(x)[0, firsts].float().softmax(-1).max(-1)
        tags += [model.config.labels[i] for i in indices.tolist()]
        confidence += best.tolist()
    entities = [Entity(s.type, " ".join(words[s.start : s.end]), s.start, s.end,
                       sum(confidence[s.start : s.end]) / (s.end - s.start)) for s in bio_spans(tags)]  # fmt: skip
    return Tagging(list(words), tags, confidence, entities)


def _windows(lengths: list[int], room: int) -> list[list[int]]:
    """Consecutive words whose pieces fit in `room` tokens (a longer word alone, cut)."""
    windows: list[list[int]] = [[]]
    used = 0
    for k, n in enumerate(lengths):
        if windows[-1] and used + n > room:
            windows.append([])
            used = 0
        windows[-1].append(k)
        used += n
    return [w for w in windows if w]
