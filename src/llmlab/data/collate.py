"""Token rows of different lengths -> one padded batch and the mask of its real tokens.

Every batch llmlab builds from rows (generation prompts, scored continuations, sequence-to-sequence
pairs, sentences to embed) is padded here, so the side and the mask mean the same thing everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

Side = Literal["left", "right"]


def pad_rows(
    rows: Sequence[Sequence[int] | np.ndarray],
    pad_id: int,
    side: Side = "right",
    length: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): (B, length) int64 ids with `pad_id` filling each row on `side`, and a bool mask,
    True at real tokens. `length` defaults to the longest row.

    Right padding suits models whose real tokens never see later positions (causal) or see a mask;
    left padding puts every row's last token in the same column, where generation continues."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max((len(r) for r in rows), default=0)
    width = longest if length is None else length
    if width < longest:
        raise ValueError(f"length {width} is shorter than the longest row ({longest} tokens)")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = len(row)
        columns = slice(0, n) if side == "right" else slice(width - n, width)
        ids[i, columns] = torch.from_numpy(np.asarray(row, dtype=np.int64))
        mask[i, columns] = True
    return ids, mask
