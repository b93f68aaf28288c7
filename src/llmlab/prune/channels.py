"""Structured pruning of the feed-forward layers: whole hidden channels go (a row of `up`, its gate row,
and a column of `down`), the same number in every block, so the model really is smaller and faster and
its checkpoint records the new `intermediate_size`. Which channels go is decided per block:

magnitude: ||down[:, j]|| * ||up[j]|| (and its gate row): the channel's weight on the way in and out.
wanda: ||down[:, j]|| * ||h_j||, the hidden activation's norm over calibration tokens times the weight it
meets (the channel form of Wanda's |W| * ||X||)."""

from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.layers import FeedForward


def channel_scores(mlp: FeedForward, method: str, hidden_norms: torch.Tensor | None) -> torch.Tensor:
    """(intermediate,) importance of each hidden channel."""
    out_norm = mlp.down.weight.detach().float().norm(dim=0)
    if method == "wanda":
        if hidden_norms is None:
            raise LlmlabError("wanda needs the hidden activations' norms", "pass --calibration FILE")
        return out_norm * hidden_norms.float()
    rows = mlp.up.weight.detach().float()
    in_norm = rows.view(2, -1, rows.shape[1]).norm(dim=2).sum(0) if mlp.gated else rows.norm(dim=1)
    return out_norm * in_norm


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    weight = weight if rows is None else weight[rows]
    weight = weight if cols is None else weight[:, cols]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None, device=weight.device,
                    dtype=weight.dtype)  # fmt: skip
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.detach() if rows is None else linear.bias.detach()[rows])
    return new


@torch.no_grad()
def prune_channels(model: nn.Module, sparsity: float, method: str,
                   norms: dict[str, torch.Tensor] | None = None) -> tuple[int, int]:  # fmt: skip
    """Drop the lowest-scoring `sparsity` of every feed-forward layer's hidden channels, in place;
    `norms` are the inputs of each `down` by module name (`input_norms`). Returns (before, after) width."""
    width = model.config.intermediate_size
    keep = width - int(width * sparsity)
    if keep < 1:
        raise LlmlabError(f"--sparsity {sparsity} leaves no channel of {width}", "prune less")
    for name, mlp in [(n, m) for n, m in model.named_modules() if isinstance(m, FeedForward)]:
        score = channel_scores(mlp, method, None if norms is None else norms.get(f"{name}.down"))
        kept = score.topk(keep).indices.sort().values
        rows = torch.cat([kept, kept + width]) if mlp.gated else kept
        mlp.up, mlp.down = _sliced(mlp.up, rows=rows), _sliced(mlp.down, cols=kept)
    model.config.intermediate_size = keep
    return width, keep
