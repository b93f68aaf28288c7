"""Prune a model in place: the linear layers inside the blocks (embeddings, heads and norms stay), their
weights multiplied by a keep-mask; for wanda, calibration text first gives each layer's input norms."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.surgery import find_linears, linears_in_blocks
from llmlab.prune.channels import prune_channels
from llmlab.prune.heads import prune_heads
from llmlab.prune.masks import METHODS, STRUCTURES, keep_mask, scores

SHRINKERS = {"channels": prune_channels, "heads": prune_heads}  # structures that make the model smaller


@dataclass
class PruneReport:
    layers: int
    pruned: int  # weights set to zero
    total: int  # weights in the pruned layers

    @property
    def sparsity(self) -> float:
        return self.pruned / self.total if self.total else 0.0


def check_settings(sparsity: float, method: str, structure: str) -> None:
    if not 0 <= sparsity < 1:
        raise LlmlabError(f"--sparsity {sparsity} is outside [0, 1)", "pass e.g. --sparsity 0.5")
    if structure == "2:4" and sparsity not in (0.0, 0.5):
        raise LlmlabError(f"--sparsity {sparsity} with --structure 2:4, which is 50% by construction",
                          "leave --sparsity at 0.5 for 2:4")  # fmt: skip
    if method not in METHODS or structure not in STRUCTURES:
        raise LlmlabError(f"--method {method} --structure {structure}",
                          f"methods: {', '.join(METHODS)}; structures: {', '.join(STRUCTURES)}")  # fmt: skip


@torch.no_grad()
def input_norms(model: nn.Module, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each pruned layer's ||X_j||_2 over every calibration token (forward hooks, one pass per batch)."""
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for _, _, name, linear in find_linears(model, linears_in_blocks):

        def record(module, inputs, output, name=name):
            x = inputs[0].detach().float().flatten(0, -2)
            sums[name] = sums.get(name, 0) + (x * x).sum(0)

        hooks.append(linear.register_forward_hook(record))
    try:
        for batch in batches:
            model(batch)
    finally:
        for hook in hooks:
            hook.remove()
    return {name: total.sqrt() for name, total in sums.items()}


@torch.no_grad()
def prune_model(model: nn.Module, sparsity: float, method: str = "magnitude", structure: str = "unstructured",
                norms: dict[str, torch.Tensor] | None = None) -> PruneReport:  # fmt: skip
    """Zero the weights the criterion ranks lowest, layer by layer; returns how many went."""
    check_settings(sparsity, method, structure)
    if sparsity == 0:
        return PruneReport(0, 0, 0)
    if structure in SHRINKERS:
        before = sum(p.numel() for p in model.parameters())
        SHRINKERS[structure](model, sparsity, method, norms)
        return PruneReport(model.config.n_layer + (model.config.n_decoder_layer or 0), before - sum(
            p.numel() for p in model.parameters()), before)  # fmt: skip
    layers = find_linears(model, linears_in_blocks)
    if not layers:
        raise LlmlabError("the model has no linear layers inside its blocks", "prune a transformer checkpoint")
    report, seen = PruneReport(0, 0, 0), set()
    for _, _, name, linear in layers:
        if id(linear) in seen:
            continue
        seen.add(id(linear))
        score = scores(linear.weight, method, None if norms is None else norms.get(name))
        mask = keep_mask(score, sparsity, method, structure, name)
        linear.weight.mul_(mask.to(linear.weight.dtype))
        report.layers += 1
        report.pruned += int((~mask).sum())
        report.total += mask.numel()
    return report
