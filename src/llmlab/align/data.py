"""Preference pairs -> rows -> batches. A pair is a prompt and two completions; each completion is read
as the decoder reads a prompt and its response (the tokenizer's prefix, the prompt, the completion and
end-of-sequence) and only its tokens are scored. A batch stacks the chosen rows over the rejected ones
(2B rows) and keeps the pairs' indices, which select their reference log-probabilities."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.align.task_rewards import is_task_source, task_prompts
from llmlab.data.collate import pad_rows
from llmlab.data.objectives import IGNORE, Batch
from llmlab.data.records import read_records
from llmlab.errors import LlmlabError
from llmlab.finetune.data import row_indices
from llmlab.tokenizer import TextTokenizer

FIELDS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str
    chosen_ended: bool = True  # False: the completion was cut (no end-of-sequence is appended)
    rejected_ended: bool = True


def read_pairs(source: str, split: str = "train") -> list[Pair]:
    """Records with `prompt`, `chosen` and `rejected` texts; a missing field or two identical completions
    is one error naming the record."""
    pairs = []
    for number, record in enumerate(read_records(source, split), start=1):
        missing = [f for f in FIELDS if not isinstance(record.get(f), str)]
        if missing:
            raise LlmlabError(f"{source}: record {number} has no {missing[0]!r} text (it has {', '.join(record)})",
                              'write records like {"prompt": ..., "chosen": ..., "rejected": ...}')  # fmt: skip
        if record["chosen"] == record["rejected"]:
            raise LlmlabError(f"{source}: record {number} has the same chosen and rejected completion",
                              "a preference needs two different completions: fix or drop the record")  # fmt: skip
        ended = [record.get(f"{side}_ended", True) for side in ("chosen", "rejected")]
        if not all(isinstance(e, bool) for e in ended):
            raise LlmlabError(f"{source}: record {number} has a chosen_ended/rejected_ended that is not true or false",
                              "write true, false, or leave the field out")  # fmt: skip
        pairs.append(Pair(record["prompt"], record["chosen"], record["rejected"], *ended))
    return pairs


def read_prompts(source: str, split: str = "train") -> list[str]:
    """A text file (one prompt a line), records with a `prompt` field, or a task's prompts (`task:sentiment`)."""
    if is_task_source(source):
        return task_prompts(source)
    path = Path(source)
    if source.endswith((".jsonl", ".json", ".csv", ".parquet")) or source.startswith("hf:"):
        records = read_records(source, split)
        bad = next((i for i, r in enumerate(records, 1) if not isinstance(r.get("prompt"), str)), None)
        if bad:
            raise LlmlabError(f"{source}: record {bad} has no 'prompt' text", "give every record a prompt")
        return [r["prompt"] for r in records]
    if not path.is_file():
        raise LlmlabError(f"--prompts {source} does not exist", "pass a text file or records with a prompt field")
    prompts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise LlmlabError(f"--prompts {source} has no prompt", "write one prompt a line")
    return prompts


@dataclass
class PairRows:
    """Each pair's chosen and rejected (ids, labels): labels are the next token where it is scored."""

    chosen: list[tuple[list[int], list[int]]]
    rejected: list[tuple[list[int], list[int]]]
    cut: int  # completions cut to fit the context


def pair_rows(pairs: list[Pair], tok: TextTokenizer, block: int, source: str) -> PairRows:
    """Token rows of every pair; a prompt that leaves no room for its completion is an error."""
    eos = tok.require("eos", "to end completions")
    prompts = tok.encode_batch([p.prompt for p in pairs])
    rows: dict[str, list] = {"chosen": [], "rejected": []}
    cut = 0
    for side in rows:
        completions = tok.encode_batch([getattr(p, side) for p in pairs])
        ended = [getattr(p, f"{side}_ended") for p in pairs]
        for number, (prompt, completion) in enumerate(zip(prompts, completions), start=1):
            head = [*tok.prefix_ids, *prompt]
            room = block + 1 - len(head)
            if room < 2:
                raise LlmlabError(f"{source}: the prompt of record {number} has {len(head)} tokens, the context "
                                  f"{block}", "shorten the prompt or use a model with a longer context")  # fmt: skip
            tail = [*completion, eos] if ended[number - 1] else list(completion)
            cut += len(tail) > room
            ids = head + tail[:room]
            labels = [IGNORE] * (len(head) - 1) + ids[len(head) :]
            rows[side].append((ids[:-1], labels))
    return PairRows(rows["chosen"], rows["rejected"], cut)


@dataclass
class PairBatch(Batch):
    """2B rows (chosen, then rejected) and the B pairs' indices into the precomputed reference."""

    index: torch.Tensor | None = None

    def to(self, device: torch.device) -> PairBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return PairBatch(move(self.inputs), move(self.labels), move(self.attention_mask), None, move(self.index))

    @property
    def labelled(self) -> int:
        """Pairs: the preference losses are means over pairs."""
        return int(self.index.numel())


def collate_pairs(rows: PairRows, picked: list[int], pad_id: int) -> PairBatch:
    chosen = [rows.chosen[i] for i in picked]
    rejected = [rows.rejected[i] for i in picked]
    inputs, mask = pad_rows([ids for ids, _ in chosen + rejected], pad_id)
    labels, _ = pad_rows([lab for _, lab in chosen + rejected], IGNORE)
    return PairBatch(inputs, labels, mask, None, torch.tensor(picked))


def pair_batches(train: PairRows, val: PairRows, batch_size: int, grad_accum: int, seed: int, pad_id: int,
                 offset: int, share: slice | None = None,
                 collate: Callable[[PairRows, list[int], int], PairBatch] | None = None
                 ) -> Callable[[bool, int, int], PairBatch]:  # fmt: skip
    """(validation?, step, micro) -> batch, pure; validation pairs are indexed after the `offset`
    training pairs (one reference table holds both). `collate` makes a batch of picked pairs (stacked rows,
    or align.packing's segments)."""
    collate = collate or collate_pairs
    n_train, n_val = len(train.chosen), len(val.chosen)
    if not n_train or not n_val:
        raise LlmlabError("no training or no validation pair", "use more pairs or pass --val-data")
    rows = share or slice(None)

    def draw(validation: bool, step: int, micro: int) -> PairBatch:
        if validation:
            first = (step - 2**31) * batch_size
            picked = [(first + k) % n_val for k in range(batch_size)][rows]
            batch = collate(val, picked, pad_id)
            batch.index = batch.index + offset
            return batch
        picked = row_indices(n_train, batch_size, grad_accum, seed, step, micro)[rows]
        return collate(train, picked, pad_id)

    return draw
