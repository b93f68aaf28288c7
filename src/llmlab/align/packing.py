"""Preference pairs packed for a decoder: the prompt read once for both completions, no padding between pairs.

A batch of B pairs stacked as chosen-over-rejected rows reads every prompt twice and pads every row to the
longest. Packed, a pair is one segment `prompt | chosen | rejected`: the rejected tokens take the positions
right after the prompt (as they would in their own row) and see the prompt but not the chosen tokens, so
every log-probability is the one the stacked rows give (up to float rounding). Segments are laid end to end
in rows (of 512 tokens, or the context) with a block-diagonal mask, and the head runs only where a
completion token is predicted: the prompt's last position predicts the first token of both completions. On
rt-polarity pairs (4-word prompts, 12-word completions) that is ~30% fewer tokens than stacked rows. TRL's
`padding_free` does the second half of this with flash-attention's variable-length kernels; this is the
CPU's version.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmlab.align.data import PairBatch, PairRows
from llmlab.data.objectives import IGNORE


@dataclass
class PackedPairBatch(PairBatch):
    """Rows of packed pair segments. `scored` holds (row, column) of each position whose next-token
    distribution scores a completion token, `targets` that token, `owner` its place in the 2B sums
    (chosen i -> i, rejected i -> B + i)."""

    positions: torch.Tensor | None = None  # (R, T) each token's position within its own sequence
    mask: torch.Tensor | None = None  # (R, 1, T, T) True where a query may attend to a key
    scored: tuple[torch.Tensor, torch.Tensor] | None = None
    targets: torch.Tensor | None = None
    owner: torch.Tensor | None = None

    def to(self, device: torch.device) -> PackedPairBatch:
        move = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return PackedPairBatch(move(self.inputs), move(self.labels), move(self.attention_mask), None,
                               move(self.index), move(self.positions), move(self.mask),
                               tuple(move(t) for t in self.scored), move(self.targets), move(self.owner))  # fmt: skip


def _segment(rows: PairRows, i: int) -> tuple[list[int], list[int], list[int]]:
    """Pair i's prompt (with the tokenizer's prefix) and its two completions, from its stacked rows."""
    (chosen_ids, chosen_labels), (rejected_ids, rejected_labels) = rows.chosen[i], rows.rejected[i]
    chosen = [t for t in chosen_labels if t != IGNORE]
    rejected = [t for t in rejected_labels if t != IGNORE]
    # the prompt from a row whose completion is not empty: an empty (cut) one's row lacks the prompt's last token
    ids, labels = (chosen_ids, chosen_labels) if chosen else (rejected_ids, rejected_labels)
    head = len(labels) - sum(label != IGNORE for label in labels) + 1
    return ids[:head], chosen, rejected


def collate_packed_pairs(rows: PairRows, picked: list[int], pad_id: int, row_tokens: int) -> PackedPairBatch:
    """The picked pairs as segments in rows of at most `row_tokens` tokens (a longer segment gets a row of its
    own); what each position reads, and which positions score which completion token. A segment holds the
    prompt and each completion but its last token, which is only ever predicted, never read."""
    B = len(picked)
    layout: list[list[int]] = [[]]  # the tokens of each row
    spans: list[tuple[int, int, list[int], list[int], list[int]]] = []  # (row, start, prompt, chosen, rejected)
    for i in picked:
        head, chosen, rejected = _segment(rows, i)
        segment = head + chosen[:-1] + rejected[:-1]  # [:-1] of an empty completion is empty too
        if layout[-1] and len(layout[-1]) + len(segment) > row_tokens:
            layout.append([])
        spans.append((len(layout) - 1, len(layout[-1]), head, chosen, rejected))
        layout[-1].extend(segment)
    T = max(len(r) for r in layout)
    inputs = torch.full((len(layout), T), pad_id, dtype=torch.long)
    for r, tokens in enumerate(layout):
        inputs[r, : len(tokens)] = torch.tensor(tokens)
    positions = torch.zeros((len(layout), T), dtype=torch.long)
    mask = torch.zeros((len(layout), 1, T, T), dtype=torch.bool)
    real = torch.zeros((len(layout), T), dtype=torch.bool)
    score_rows, score_cols, targets, owner = [], [], [], []
    for b, (row, start, head, chosen, rejected) in enumerate(spans):
        # C, R: the completions' tokens that are read (all but the last; none of an empty, cut completion)
        H, C, R = len(head), max(len(chosen) - 1, 0), max(len(rejected) - 1, 0)
        end = start + H + C + R
        positions[row, start:end] = torch.cat([torch.arange(H + C), torch.arange(H, H + R)])
        real[row, start:end] = True
        causal = torch.ones(end - start, end - start, dtype=torch.bool).tril()
        causal[H + C :, H : H + C] = False  # the rejected completion does not see the chosen one
        mask[row, 0, start:end, start:end] = causal
        for side, tokens, first in ((0, chosen, start + H), (1, rejected, start + H + C)):
            score_rows += [row] * len(tokens)
            score_cols += [start + H - 1, *range(first, first + len(tokens) - 1)][: len(tokens)]  # the prompt's last,
            # then its own
            targets += tokens
            owner += [side * B + b] * len(tokens)
    mask |= torch.eye(T, dtype=torch.bool)  # padding queries see themselves: no row of the softmax is empty
    scored = (torch.tensor(score_rows), torch.tensor(score_cols))
    return PackedPairBatch(inputs, torch.full_like(inputs, IGNORE), real, None, torch.tensor(picked), positions,
                           mask, scored, torch.tensor(targets), torch.tensor(owner))  # fmt: skip


def packed_pair_logps(model: torch.nn.Module, batch: PackedPairBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed completion log-probabilities, token counts) for the 2B completions: chosen, then rejected."""
    logits = model(batch.inputs, batch.positions, None, batch.mask, select=batch.scored).float()
    token_logps = logits.gather(-1, batch.targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    n = 2 * batch.index.numel()
    sums = torch.zeros(n, device=token_logps.device, dtype=token_logps.dtype).index_add(0, batch.owner, token_logps)
    counts = torch.zeros(n, device=token_logps.device, dtype=torch.long).index_add(
        0, batch.owner, torch.ones_like(batch.owner)
    )
    return sums, counts
