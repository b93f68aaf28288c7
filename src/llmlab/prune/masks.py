"""Which weights to keep, written here because the criteria are the subject being taught.

magnitude: |W|, the smallest fraction of each layer removed (Han et al., 2015).
wanda: |W_ij| * ||X_j||, the weight times the norm of the input feature it multiplies over calibration
tokens, compared within each output row (Sun et al., 2023): a small weight on a large activation matters.
Structure: unstructured (any weights), or 2:4 (in every group of 4 consecutive inputs of a row, the 2
lowest scores go: the pattern NVIDIA's sparse tensor cores run at up to 2x); whole feed-forward channels
are `channels.py`'s, whole attention heads `heads.py`'s.
"""

from __future__ import annotations

import torch

from llmlab.errors import LlmlabError

METHODS = ("magnitude", "wanda")
STRUCTURES = ("unstructured", "2:4", "channels", "heads")


def scores(weight: torch.Tensor, method: str, input_norms: torch.Tensor | None) -> torch.Tensor:
    """(out, in) importance of each weight."""
    magnitude = weight.detach().float().abs()
    if method == "magnitude":
        return magnitude
    if input_norms is None:
        raise LlmlabError("wanda needs the inputs' norms from calibration text", "pass --calibration FILE")
    return magnitude * input_norms.float()[None, :]


def keep_mask(score: torch.Tensor, sparsity: float, method: str, structure: str, name: str = "") -> torch.Tensor:
    """A boolean (out, in) mask, True where the weight stays."""
    out_features, in_features = score.shape
    if structure == "2:4":
        if in_features % 4:
            raise LlmlabError(f"{name} has {in_features} inputs, not a multiple of 4, so 2:4 cannot apply",
                              "use --structure unstructured for this model")  # fmt: skip
        groups = score.reshape(out_features, in_features // 4, 4)
        drop = groups.topk(2, dim=-1, largest=False).indices
        mask = torch.ones_like(groups, dtype=torch.bool).scatter_(-1, drop, False)
        return mask.reshape(out_features, in_features)
    if method == "wanda":  # per output row
        k = int(in_features * sparsity)
        mask = torch.ones_like(score, dtype=torch.bool)
        if k:
            mask.scatter_(1, score.topk(k, dim=1, largest=False).indices, False)
        return mask
    k = int(score.numel() * sparsity)  # magnitude: across the layer
    mask = torch.ones(score.numel(), dtype=torch.bool)
    if k:
        mask[score.flatten().topk(k, largest=False).indices] = False
    return mask.reshape(score.shape)
