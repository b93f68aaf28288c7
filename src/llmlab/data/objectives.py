"""Pre-training objectives: token ids -> (inputs, labels) batches, each a pure function of (seed, step).

    clm      causal LM (GPT): predict every next token
    mlm      masked LM (BERT): 15% of ordinary tokens chosen; 80% -> [MASK], 10% -> random, 10% kept
    span     span corruption (T5): noise spans replaced by sentinels, the decoder writes them back
    seq2seq  supervised pairs (input -> target) for encoder-decoder models

Labels of -100 carry no loss (PyTorch's cross-entropy `ignore_index`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from llmlab.data.collate import pad_rows
from llmlab.data.tokens import get_batch, sample_windows
from llmlab.errors import LlmlabError
from llmlab.family import SPECS, family_spec
from llmlab.tokenizer import TextTokenizer

IGNORE = -100


@dataclass
class Batch:
    inputs: torch.Tensor  # (B, T): the decoder's input (clm) or the encoder's (mlm, span, seq2seq)
    labels: torch.Tensor  # (B, T) or (B, T_decoder), IGNORE where there is no loss
    attention_mask: torch.Tensor | None = None  # (B, T) True for real tokens; None when all are
    decoder_inputs: torch.Tensor | None = None  # (B, T_decoder): start token + targets shifted right

    def to(self, device: torch.device) -> Batch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return Batch(move(self.inputs), move(self.labels), move(self.attention_mask), move(self.decoder_inputs))

    @property
    def dims(self) -> tuple[int, int, int | None]:
        """(rows, input length, target length or None): what the FLOP count and the peak plan take."""
        rows, length = self.inputs.shape
        return rows, length, None if self.decoder_inputs is None else self.decoder_inputs.shape[1]

    @property
    def labelled(self) -> int:
        """Positions that carry a loss."""
        return int((self.labels != IGNORE).sum())

    @property
    def tokens(self) -> int:
        """Tokens the model reads (both stacks, padding excluded): the unit of tokens/s."""
        n = self.inputs.numel() if self.attention_mask is None else int(self.attention_mask.sum())
        if self.decoder_inputs is not None:
            n += int((self.labels != IGNORE).sum())
        return n


def check_objective(family: str, objective: str | None) -> str:
    """The objective to use for a family (its default when None), or a clear error for a nonsense pair."""
    allowed = family_spec(family).objectives
    if objective is None:
        return allowed[0]
    if objective not in allowed:
        known = {o for spec in SPECS.values() for o in spec.objectives}
        if objective not in known:
            raise LlmlabError(f"unknown objective {objective!r}", f"choose one of: {', '.join(sorted(known))}")
        right = next(name for name, spec in SPECS.items() if objective in spec.objectives)
        raise LlmlabError(
            f"objective {objective!r} does not train {family} models",
            f"use --objective {' or '.join(allowed)} with --family {family}, or --family {right} for {objective}",
        )
    return objective


def _generator(seed: int, step: int, micro: int, salt: int) -> torch.Generator:
    entropy = np.random.default_rng([seed, step, micro, salt]).integers(2**62)
    return torch.Generator().manual_seed(int(entropy))


# -- causal LM ---------------------------------------------------------------------------------------


def causal_lm_batch(
    ids: np.ndarray, batch_size: int, block_size: int, seed: int, step: int, micro: int = 0, rows: slice | None = None
) -> Batch:
    return Batch(*get_batch(ids, batch_size, block_size, seed, step, micro, rows))


# -- masked LM ---------------------------------------------------------------------------------------


def mask_tokens(
    ids: torch.Tensor,
    special: torch.Tensor,
    mask_id: int,
    random_pool: torch.Tensor,
    generator: torch.Generator,
    probability: float = 0.15,
    share: tuple[int, slice | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking of (B, T) ids, returning (inputs, labels).

    In each row round(15%) of the non-special tokens are selected (at least one), as in BERT's
    create_pretraining_data; of those 80% become [MASK], 10% a random ordinary token from
    `random_pool`, 10% stay. Labels hold the original token at selected positions, IGNORE elsewhere.
    `share` = (whole batch size, rows): `ids` are those rows, and the random draws are those of the
    whole batch, so a rank's share is masked exactly as in one process.
    """
    full, rows = share if share is not None else (ids.shape[0], None)
    pick = rows or slice(None)

    def draw(fn) -> torch.Tensor:
        return fn((full, ids.shape[1]))[pick]

    candidates = (~special).sum(dim=1)
    n_select = (candidates.float() * probability).round().long().clamp(min=1).minimum(candidates)
    keys = draw(lambda shape: torch.rand(shape, generator=generator)).masked_fill(special, 2.0)  # specials last
    rank = torch.empty_like(ids)
    rank.scatter_(1, keys.argsort(dim=1), torch.arange(ids.shape[1]).expand_as(ids).contiguous())
    selected = rank < n_select[:, None]
    labels = torch.where(selected, ids, torch.full_like(ids, IGNORE))
    action = draw(lambda shape: torch.rand(shape, generator=generator))
    random_tokens = random_pool[draw(lambda shape: torch.randint(len(random_pool), shape, generator=generator))]
    inputs = torch.where(selected & (action < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_tokens, inputs)
    return inputs, labels


def ordinary_tokens(tokenizer: TextTokenizer) -> torch.Tensor:
    return torch.tensor(sorted(set(range(tokenizer.vocab_size)) - tokenizer.special_ids), dtype=torch.long)


def mlm_batch(
    ids: np.ndarray,
    tokenizer: TextTokenizer,
    batch_size: int,
    block_size: int,
    seed: int,
    step: int,
    micro: int = 0,
    probability: float = 0.15,
    rows: slice | None = None,
) -> Batch:
    """[CLS] window [SEP] rows with BERT masking; the [SEP]s between documents are never masked.
    `rows`: only these rows of the batch (one rank's share), drawn exactly as in the whole batch."""
    cls_id = tokenizer.require("cls", "for masked-LM training")
    sep_id = tokenizer.require("sep", "for masked-LM training")
    mask_id = tokenizer.require("mask", "for masked-LM training")
    window = torch.from_numpy(sample_windows(ids, batch_size, block_size - 2, seed, step, micro, rows))
    n = window.shape[0]
    tokens = torch.cat([torch.full((n, 1), cls_id), window, torch.full((n, 1), sep_id)], dim=1)
    special = torch.isin(tokens, torch.tensor(sorted(tokenizer.special_ids)))
    generator = _generator(seed, step, micro, 1)
    inputs, labels = mask_tokens(
        tokens, special, mask_id, ordinary_tokens(tokenizer), generator, probability, (batch_size, rows)
    )
    return Batch(inputs, labels)


# -- span corruption ---------------------------------------------------------------------------------


def _span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    noise = int(round(length * noise_density))
    noise = min(max(noise, 1), length - 1)
    spans = max(int(round(noise / mean_noise_span_length)), 1)
    return noise, spans


def span_lengths(
    input_length: int, noise_density: float = 0.15, mean_noise_span_length: float = 3.0
) -> tuple[int, int]:
    """(raw tokens to draw, target length) so that corrupted inputs have exactly `input_length` tokens.

    Inputs hold the kept tokens, one sentinel per span and end-of-sequence; targets one sentinel per
    span, the dropped tokens and end-of-sequence. Input 512 needs 568 raw tokens and gives 114 targets.
    """

    def lengths(raw: int) -> tuple[int, int]:
        noise, spans = _span_counts(raw, noise_density, mean_noise_span_length)
        return raw - noise + spans + 1, noise + spans + 1

    raw = input_length
    while lengths(raw + 1)[0] <= input_length:
        raw += 1
    return raw, lengths(raw)[1]


def random_segmentation(n_items: int, n_segments: int, rng: np.random.Generator) -> np.ndarray:
    """Split n_items into n_segments non-empty runs at uniformly random cut points; returns the lengths."""
    cuts = np.sort(rng.choice(np.arange(1, n_items), size=n_segments - 1, replace=False))
    return np.diff(np.concatenate([[0], cuts, [n_items]]))


def random_spans_noise_mask(
    length: int, noise_density: float, mean_noise_span_length: float, rng: np.random.Generator
) -> np.ndarray:
    """T5's noise mask: round(density * length) noise tokens in round(noise / mean) spans; kept and noise
    spans alternate, starting with a kept one, their lengths by random segmentation."""
    noise, spans = _span_counts(length, noise_density, mean_noise_span_length)
    noise_lengths = random_segmentation(noise, spans, rng)
    kept_lengths = random_segmentation(length - noise, spans, rng)
    mask = np.zeros(length, dtype=bool)
    position = 0
    for kept, noisy in zip(kept_lengths, noise_lengths):
        position += kept
        mask[position : position + noisy] = True
        position += noisy
    return mask


def span_corrupt(
    tokens: np.ndarray, noise_mask: np.ndarray, sentinel_ids: list[int], eos_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets): each noise span in the input becomes one sentinel; the target is each
    sentinel followed by the tokens it replaced. Both end with end-of-sequence."""
    starts = noise_mask & ~np.concatenate([[False], noise_mask[:-1]])
    span_index = np.cumsum(starts) - 1  # which span each noise token belongs to
    if starts.sum() > len(sentinel_ids):
        raise LlmlabError(
            f"{int(starts.sum())} noise spans but the tokenizer has {len(sentinel_ids)} sentinels",
            "use a shorter --block-size",
        )
    sentinels = np.asarray(sentinel_ids, dtype=tokens.dtype)
    with_sentinels = np.where(starts, sentinels[np.maximum(span_index, 0)], tokens)
    inputs = with_sentinels[~noise_mask | starts]
    # For each noise token: its sentinel first (at a span start), then the token itself. A mask picks them,
    # not a negative placeholder, which unsigned token ids (uint16) would wrap to a valid-looking id.
    pairs = np.stack([sentinels[np.maximum(span_index, 0)], tokens], axis=1)[noise_mask]
    keep = np.stack([starts, np.ones_like(starts)], axis=1)[noise_mask]
    eos = np.asarray([eos_id], dtype=tokens.dtype)
    return np.concatenate([inputs, eos]), np.concatenate([pairs[keep], eos])


def merge_span_corruption(inputs: np.ndarray, targets: np.ndarray, sentinel_ids: list[int], eos_id: int) -> np.ndarray:
    """Undo span_corrupt: put each sentinel's target tokens back in place of the sentinel."""
    index = {s: i for i, s in enumerate(sentinel_ids)}
    filled: dict[int, list[int]] = {}
    current = None
    for t in targets.tolist():
        if t == eos_id:
            break
        if t in index:
            current = index[t]
            filled[current] = []
        else:
            filled[current].append(t)
    out: list[int] = []
    for t in inputs.tolist():
        if t == eos_id:
            break
        out.extend(filled[index[t]] if t in index else [t])
    return np.asarray(out, dtype=inputs.dtype)


def span_batch(
    ids: np.ndarray,
    tokenizer: TextTokenizer,
    batch_size: int,
    input_length: int,
    start_id: int,
    seed: int,
    step: int,
    micro: int = 0,
    noise_density: float = 0.15,
    mean_noise_span_length: float = 3.0,
    rows: slice | None = None,
) -> Batch:
    """Span-corrupted windows: encoder inputs of exactly `input_length`, targets of fixed length.
    `rows`: only these rows of the batch (one rank's share); every row's noise mask is still drawn."""
    eos_id = tokenizer.require("eos", "for span corruption")
    if not tokenizer.sentinel_ids:
        raise LlmlabError("the tokenizer has no <extra_id_N> sentinels", "train an encoder-decoder tokenizer")
    raw, _ = span_lengths(input_length, noise_density, mean_noise_span_length)
    windows = sample_windows(ids, batch_size, raw, seed, step, micro, rows)
    rng = np.random.default_rng([seed, step, micro, 2])
    masks = [random_spans_noise_mask(raw, noise_density, mean_noise_span_length, rng) for _ in range(batch_size)]
    inputs, targets = [], []
    for row, mask in zip(windows, masks[rows or slice(None)]):
        x, y = span_corrupt(row, mask, tokenizer.sentinel_ids, eos_id)
        inputs.append(x)
        targets.append(y)
    labels = torch.from_numpy(np.stack(targets))
    decoder_inputs = torch.cat([torch.full((len(targets), 1), start_id), labels[:, :-1]], dim=1)
    return Batch(torch.from_numpy(np.stack(inputs)), labels, None, decoder_inputs)


# -- supervised sequence-to-sequence -----------------------------------------------------------------


def seq2seq_batch(
    sources: list[np.ndarray],
    targets: list[np.ndarray],
    batch_size: int,
    max_length: int,
    pad_id: int,
    eos_id: int,
    start_id: int,
    seed: int,
    step: int,
    micro: int = 0,
    rows: slice | None = None,
) -> Batch:
    """Random (input, target) pairs, each cut to max_length with end-of-sequence, padded to the longest.
    `rows`: only these rows of the batch (one rank's share)."""
    rng = np.random.default_rng([seed, step, micro, 3])
    picks = rng.integers(0, len(sources), size=batch_size)[rows or slice(None)]
    src = [np.append(sources[i][: max_length - 1], eos_id) for i in picks]
    tgt = [np.append(targets[i][: max_length - 1], eos_id) for i in picks]
    inputs, attention = pad_rows(src, pad_id)
    labels, _ = pad_rows(tgt, IGNORE)
    decoder_inputs = torch.cat([torch.full((len(picks), 1), start_id), labels[:, :-1]], dim=1)
    decoder_inputs = decoder_inputs.masked_fill(decoder_inputs == IGNORE, pad_id)
    return Batch(inputs, labels, attention, decoder_inputs)
