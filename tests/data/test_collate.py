"""pad_rows: the one way rows of token ids become a padded batch and its mask."""

import numpy as np
import pytest
import torch

from llmlab.data.collate import pad_rows


def test_right_padding_keeps_rows_at_the_start_and_masks_the_rest():
    ids, mask = pad_rows([[5, 6, 7], [8], []], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0], [0, 0, 0]]
    assert mask.tolist() == [[True] * 3, [True, False, False], [False] * 3]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


def test_left_padding_ends_every_row_in_the_last_column():
    ids, mask = pad_rows([[5, 6, 7], [8]], pad_id=-1, side="left")
    assert ids.tolist() == [[5, 6, 7], [-1, -1, 8]]
    assert mask.tolist() == [[True] * 3, [False, False, True]]


def test_a_fixed_length_and_numpy_rows():
    ids, mask = pad_rows([np.array([1, 2], dtype=np.uint16), np.array([3], dtype=np.int32)], 9, length=4)
    assert ids.tolist() == [[1, 2, 9, 9], [3, 9, 9, 9]] and int(mask.sum()) == 3
    assert pad_rows([], 0)[0].shape == (0, 0)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="shorter than the longest row"):
        pad_rows([[1, 2, 3]], 0, length=2)
    with pytest.raises(ValueError, match="side"):
        pad_rows([[1]], 0, side="middle")
