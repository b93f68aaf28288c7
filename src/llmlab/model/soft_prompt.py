"""Prompt tuning (Lester et al. 2021): a few trainable vectors in front of every input, the model frozen.

The vectors live in the embedding space and take the first positions: a decoder reads them before its
tokens (and keeps them in its KV cache, so generation sees them once), an encoder-decoder's encoder reads
them before the input. Initialised from the embeddings of real tokens (a text, such as the task's
instruction, or tokens drawn from the vocabulary), which the paper found to train far better than noise.
"""

from __future__ import annotations

import torch
from torch import nn


def add_soft_prompt(model: nn.Module, tokens: int, init_ids: list[int] | None = None, seed: int = 0) -> None:
    """Freeze `model` and give it `tokens` trainable prompt vectors (in place)."""
    for p in model.parameters():
        p.requires_grad_(False)
    table = model.embed.weight.detach()
    if init_ids:
        ids = torch.tensor([init_ids[i % len(init_ids)] for i in range(tokens)])
    else:
        ids = torch.randint(0, table.shape[0], (tokens,), generator=torch.Generator().manual_seed(seed))
    model.soft_prompt = nn.Parameter(table[ids.to(table.device)].clone().float())


def prompt_length(model: nn.Module) -> int:
    prompt = getattr(model, "soft_prompt", None)
    return 0 if prompt is None else prompt.shape[0]


def prepend(
    prompt: torch.Tensor, x: torch.Tensor, positions: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A decoder's first call: the prompt before the tokens, the tokens' positions moved up by its length,
    and a (B, 1, T, S) mask grown to cover it (every token sees the prompt; the prompt is causal)."""
    P, (B, T, _) = prompt.shape[0], x.shape
    x = torch.cat([prompt.to(x.dtype).expand(B, P, -1), x], dim=1)
    front = torch.arange(P, device=x.device)
    if positions is None:
        positions = torch.arange(P + T, device=x.device)
    elif positions.dim() == 1:
        positions = torch.cat([front, positions + P])
    else:
        positions = torch.cat([front.expand(B, P), positions + P], dim=1)
    if mask is not None:
        S = mask.shape[-1]
        top = torch.ones(P, P, dtype=torch.bool, device=x.device).tril()
        top = torch.cat([top, torch.zeros(P, S, dtype=torch.bool, device=x.device)], dim=1).expand(B, 1, P, P + S)
        bottom = torch.cat([mask.new_ones(B, 1, T, P), mask.expand(B, 1, T, S)], dim=-1)
        mask = torch.cat([top, bottom], dim=2)
    return x, positions, mask


def after_prompt(
    P: int, positions: torch.Tensor | None, mask: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A later (cached) call: positions the caller counted without the prompt move up by P, and its mask
    over the cache gets the prompt's P slots at the front."""
    if positions is not None:
        positions = positions + P
    if mask is not None:
        mask = torch.cat([mask.new_ones(*mask.shape[:-1], P), mask], dim=-1)
    return positions, mask
