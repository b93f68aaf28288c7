"""Examples -> token rows -> batches for supervised fine-tuning.

A decoder reads prompt and response as one row (its tokenizer prefix first, end-of-sequence after the
response) and is trained on the response's tokens only; an encoder-decoder reads the prompt with its
encoder and is trained on the response as its target. Examples longer than the context are cut (the
prompt's middle first, as the prompt builder cuts a query) or dropped, and counted. With packing, a
decoder row holds several examples, each with its own positions and attending only to itself.

Batches are a pure function of (seed, step, micro-step), walking the rows in a fresh order each epoch,
so a resumed run sees the batches an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from llmlab.data.collate import pad_rows
from llmlab.data.objectives import IGNORE, Batch
from llmlab.errors import LlmlabError
from llmlab.family import FamilySpec
from llmlab.finetune.examples import Pieces
from llmlab.tokenizer import TextTokenizer


@dataclass
class Row:
    """One training row: token ids, which of them are trained, and (packed) each token's example."""

    ids: np.ndarray
    trained: np.ndarray  # bool per token: its prediction carries a loss
    segments: np.ndarray  # 1, 2, ... per example in the row
    positions: np.ndarray
    target: np.ndarray | None = None  # encoder-decoder: the response ids (ids are the encoder's input)


@dataclass
class LengthReport:
    examples: int = 0
    cut: int = 0
    dropped: int = 0
    tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def line(self, split: str) -> str:
        what = f"{split}: {self.examples - self.dropped:,} examples, {self.tokens:,} tokens"
        fixes = [f"{n:,} longer than the context were {how}" for n, how in ((self.cut, "cut"), (self.dropped,
                 "dropped")) if n]  # fmt: skip
        return what + (f" ({'; '.join(fixes)})" if fixes else "")


@dataclass
class SftBatch(Batch):
    """A batch with per-token positions and example ids (packed rows); None where rows hold one example."""

    positions: torch.Tensor | None = None
    segments: torch.Tensor | None = None

    def to(self, device: torch.device) -> SftBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return SftBatch(move(self.inputs), move(self.labels), move(self.attention_mask), move(self.decoder_inputs),
                        move(self.positions), move(self.segments))  # fmt: skip


def _cut_middle(ids: list[int], keep: int) -> list[int]:
    head = keep // 2
    return ids[:head] + ids[len(ids) - (keep - head) :] if keep > 0 else []


def decoder_row(pieces: Pieces, tok: TextTokenizer, spec: FamilySpec, limit: int, train_on_prompt: bool,
                report: LengthReport, drop: bool) -> Row | None:  # fmt: skip
    """prefix + pieces (+ eos) as one row of at most `limit` tokens, or None when dropped. The prompt is
    everything before the first trained piece; later untrained pieces (a chat's user turns) are kept
    in the response part, untrained."""
    prompt, response, flags = spec.prompt_prefix(tok), [], []
    for text, trained in pieces:
        ids = tok.encode(text)
        if not trained and not response:
            prompt += ids
        else:
            response += ids
            flags += [trained or train_on_prompt] * len(ids)
    eos = tok.require("eos", "to end a response")
    if response[-1:] != [eos]:
        response.append(eos)
        flags.append(True)
    return _fit(prompt, response, flags, limit, train_on_prompt, report, drop)


def _fit(prompt: list[int], response: list[int], flags: list[bool], limit: int, train_on_prompt: bool,
         report: LengthReport, drop: bool) -> Row | None:  # fmt: skip
    report.examples += 1
    if len(prompt) + len(response) > limit:
        if drop:
            report.dropped += 1
            return None
        report.cut += 1
        room = max(limit - len(response), min(len(prompt), limit // 2))  # a long response leaves half for the prompt
        prompt = _cut_middle(prompt, room)
        keep = limit - len(prompt)
        response, flags = response[:keep], flags[:keep]
    ids = np.array(prompt + response, dtype=np.int64)
    trained = np.array([train_on_prompt] * len(prompt) + flags, dtype=bool)
    report.tokens += len(ids)
    return Row(ids, trained, np.ones(len(ids), dtype=np.int64), np.arange(len(ids), dtype=np.int64))


def seq2seq_row(pieces: Pieces, tok: TextTokenizer, limit: int, report: LengthReport, drop: bool) -> Row | None:
    """Encoder input: every piece before the last trained one, then eos; target: that piece, then eos."""
    last = max(i for i, (_, trained) in enumerate(pieces) if trained)
    eos_id, eos_text = tok.require("eos", "to end inputs and targets"), tok.decode([tok.require("eos", "")])
    source = tok.encode("".join(text for text, _ in pieces[:last]))
    target = tok.encode(pieces[last][0].replace(eos_text, "").rstrip()) + [eos_id]
    report.examples += 1
    if len(source) + 1 > limit or len(target) > limit:
        if drop:
            report.dropped += 1
            return None
        report.cut += 1
        source, target = _cut_middle(source, limit - 1) if len(source) >= limit else source, target[:limit]
    ids = np.array(source + [eos_id], dtype=np.int64)
    report.tokens += len(ids) + len(target)
    ones = np.ones(len(ids), dtype=np.int64)
    return Row(ids, np.zeros(len(ids), dtype=bool), ones, np.arange(len(ids)), np.array(target, dtype=np.int64))


def tokenize(examples: list[Pieces], tok: TextTokenizer, spec: FamilySpec, block: int, train_on_prompt: bool,
             drop: bool) -> tuple[list[Row], LengthReport]:  # fmt: skip
    """Rows for every example that is kept; a decoder row has block + 1 tokens at most (inputs + last label)."""
    report = LengthReport()
    if spec.seq2seq:
        rows = [seq2seq_row(p, tok, block, report, drop) for p in examples]
    else:
        rows = [decoder_row(p, tok, spec, block + 1, train_on_prompt, report, drop) for p in examples]
    return [r for r in rows if r is not None], report


def pack(rows: list[Row], limit: int, seed: int) -> list[Row]:
    """Greedy packing in a fixed shuffled order: each row takes examples while they fit in `limit` tokens."""
    order = np.random.default_rng([seed, 7]).permutation(len(rows))
    packed: list[list[Row]] = []
    used: list[int] = []
    for i in order:
        row = rows[i]
        slot = next((k for k, n in enumerate(used) if n + len(row.ids) <= limit), None)  # first fit
        if slot is None:
            packed.append([row])
            used.append(len(row.ids))
        else:
            packed[slot].append(row)
            used[slot] += len(row.ids)
    return [_joined(group) for group in packed]


def _joined(group: list[Row]) -> Row:
    ids = np.concatenate([r.ids for r in group])
    trained = np.concatenate([r.trained for r in group])
    segments = np.concatenate([np.full(len(r.ids), k + 1) for k, r in enumerate(group)])
    positions = np.concatenate([np.arange(len(r.ids)) for r in group])
    return Row(ids, trained, segments, positions)


def padding_tokens(rows: list[Row], batch_size: int) -> int:
    """Padding an epoch of batches (rows in order, each batch padded to its longest) carries."""
    lengths = np.array([len(r.ids) for r in rows])
    return int(sum(len(c) * c.max() - c.sum() for c in np.array_split(lengths, max(1, len(rows) // batch_size))))


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 11]).permutation(n)


def row_indices(n: int, batch_size: int, grad_accum: int, seed: int, step: int, micro: int) -> list[int]:
    """The rows of one micro-batch: consecutive slots of an epoch-by-epoch shuffled walk over all rows."""
    start = (step * grad_accum + micro) * batch_size
    return [int(_epoch_order(n, seed, k // n)[k % n]) for k in range(start, start + batch_size)]


def collate(rows: list[Row], pad_id: int, start_id: int | None, packed: bool) -> SftBatch:
    """Rows -> a right-padded batch: inputs, labels shifted by one (decoder) or targets (encoder-decoder)."""
    if rows[0].target is not None:
        inputs, mask = pad_rows([r.ids for r in rows], pad_id)
        labels, _ = pad_rows([r.target for r in rows], IGNORE)
        decoder_inputs = torch.cat([torch.full((len(rows), 1), start_id), labels[:, :-1]], dim=1)
        return SftBatch(inputs, labels, mask, decoder_inputs.masked_fill(decoder_inputs == IGNORE, pad_id))
    inputs, mask = pad_rows([r.ids[:-1] for r in rows], pad_id)
    targets = [np.where(_same_example(r) & r.trained[1:], r.ids[1:], IGNORE) for r in rows]
    labels, _ = pad_rows(targets, IGNORE)
    if not packed:
        return SftBatch(inputs, labels, mask)
    positions, _ = pad_rows([r.positions[:-1] for r in rows], 0)
    segments, _ = pad_rows([r.segments[:-1] for r in rows], 0)
    return SftBatch(inputs, labels, mask, None, positions, segments)


def _same_example(row: Row) -> np.ndarray:
    """A label only where the next token belongs to the same packed example."""
    return row.segments[1:] == row.segments[:-1]


def packed_attention_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, T) example ids -> (B, 1, T, T): causal within each example, nothing across them; padding
    (id 0) attends to itself only, so no query row is empty."""
    T = segments.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segments.device).tril()
    same = segments[:, :, None] == segments[:, None, :]
    return ((same & causal & (segments[:, None, :] > 0)) | torch.eye(T, dtype=torch.bool, device=segments.device))[
        :, None
    ]


SftBatches = Callable[[bool, int, int], SftBatch]


def batch_source(train: list[Row], val: list[Row], batch_size: int, grad_accum: int, seed: int, pad_id: int,
                 start_id: int | None, packed: bool, rows: slice | None = None) -> SftBatches:  # fmt: skip
    """(validation?, step, micro) -> batch; `rows` is one rank's share of a global batch."""
    if not train or not val:
        raise LlmlabError("no training or no validation example is left", "use more data or a larger --block-size")
    share = rows or slice(None)

    def draw(validation: bool, step: int, micro: int) -> SftBatch:
        if validation:  # evaluation asks for steps 2**31 + i: the validation rows in order
            first = (step - 2**31) * batch_size
            picked = [val[(first + k) % len(val)] for k in range(batch_size)]
        else:
            picked = [train[i] for i in row_indices(len(train), batch_size, grad_accum, seed, step, micro)]
        return collate(picked[share], pad_id, start_id, packed)

    return draw
