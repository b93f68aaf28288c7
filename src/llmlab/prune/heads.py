"""Structured pruning of attention heads: whole heads go (their query, key and value rows of `qkv` and their
columns of `proj`), the same number in every block, so the model really is smaller and faster and its
checkpoint records the new `n_head` / `n_kv_head` (with `head_size` kept, since n_embd / n_head changes).

With grouped-query attention the unit is a key/value group (one key/value head and the query heads that
share it), so every kept query still has its keys. Which groups go is decided per block:

magnitude: ||proj[:, group]|| * ||qkv rows of the group||: the group's weight on the way in and out.
wanda: sum over the group's output features d of ||proj[:, d]|| * ||y_d||, the attention output's norm over
calibration tokens times the weight it meets (Wanda's |W| * ||X|| summed over the group).
"""

from __future__ import annotations

import torch
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.layers import SelfAttention
from llmlab.prune.channels import _sliced


def _group_rows(attn: SelfAttention, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of qkv, columns of proj) that belong to the given key/value groups, in order."""
    d, per_group = attn.head_dim, attn.n_head // attn.n_kv_head
    q_heads = (groups[:, None] * per_group + torch.arange(per_group)[None, :]).flatten()
    q_cols = (q_heads[:, None] * d + torch.arange(d)[None, :]).flatten()
    kv = (groups[:, None] * d + torch.arange(d)[None, :]).flatten()
    q_width, kv_width = attn.n_head * d, attn.n_kv_head * d
    return torch.cat([q_cols, q_width + kv, q_width + kv_width + kv]), q_cols


def group_scores(attn: SelfAttention, method: str, out_norms: torch.Tensor | None) -> torch.Tensor:
    """(n_kv_head,) importance of each key/value group."""
    proj = attn.proj.weight.detach().float()
    scores = []
    for g in range(attn.n_kv_head):
        rows, cols = _group_rows(attn, torch.tensor([g]))
        if method == "wanda":
            if out_norms is None:
                raise LlmlabError("wanda needs the attention outputs' norms", "pass --calibration FILE")
            scores.append((proj[:, cols].norm(dim=0) * out_norms[cols].float()).sum())
        else:
            scores.append(proj[:, cols].norm() * attn.qkv.weight.detach().float()[rows].norm())
    return torch.stack(scores)


def check_heads(model: nn.Module) -> None:
    """Head pruning needs per-head state it can slice: plain self-attention without a per-head bias."""
    config = model.config
    if config.positions == "relative" or config.n_decoder_layer:
        raise LlmlabError("--structure heads prunes decoder and encoder models without relative positions",
                          "use --structure channels for this model")  # fmt: skip


@torch.no_grad()
def prune_heads(model: nn.Module, sparsity: float, method: str,
                norms: dict[str, torch.Tensor] | None = None) -> tuple[int, int]:  # fmt: skip
    """Drop the lowest-scoring `sparsity` of every block's key/value groups, in place; `norms` are the inputs
    of each `proj` by module name (`input_norms`). Returns (before, after) number of query heads."""
    check_heads(model)
    config = model.config
    groups, per_group, head_dim = config.n_kv_head, config.n_head // config.n_kv_head, config.head_dim
    keep = groups - int(groups * sparsity)
    if keep < 1:
        raise LlmlabError(f"--sparsity {sparsity} leaves no attention head of {config.n_head}", "prune less")
    for name, attn in [(n, m) for n, m in model.named_modules() if isinstance(m, SelfAttention)]:
        score = group_scores(attn, method, None if norms is None else norms.get(f"{name}.proj"))
        kept = score.topk(keep).indices.sort().values
        rows, cols = _group_rows(attn, kept)
        attn.qkv, attn.proj = _sliced(attn.qkv, rows=rows), _sliced(attn.proj, cols=cols)
        attn.n_head, attn.n_kv_head = keep * per_group, keep
    before = config.n_head
    config.head_size, config.n_head, config.n_kv_head = head_dim, keep * per_group, keep
    return before, config.n_head
