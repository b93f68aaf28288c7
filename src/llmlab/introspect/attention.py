"""Attention you can see: the weights of every head of every layer, as tensors and as heat maps.

Normal forward passes use the fused attention kernel, which never materialises the weights. Inside
`capture_attention` the attention modules compute them explicitly and keep them; outside, the only
cost is one `is None` check per layer.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.introspect.encode import model_input
from llmlab.model import LanguageModel
from llmlab.model.layers import CrossAttention, SelfAttention
from llmlab.plot import pyplot, save_figure
from llmlab.tokenizer import TextTokenizer


@contextlib.contextmanager
def capture_attention(model: LanguageModel) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Within the block, every attention module appends its (B, H, T, S) weights to records[name]."""
    records: dict[str, list[torch.Tensor]] = {}
    modules = [(n, m) for n, m in model.named_modules() if isinstance(m, (SelfAttention, CrossAttention))]
    for name, module in modules:
        module.record = records.setdefault(name, [])
    try:
        yield records
    finally:
        for _, module in modules:
            module.record = None


@dataclass
class AttentionMap:
    kind: str  # "encoder", "decoder" (self-attention) or "cross" (decoder queries, encoder keys)
    query_tokens: list[str]
    key_tokens: list[str]
    weights: torch.Tensor  # (layers, heads, queries, keys), each row sums to 1


def token_labels(tokenizer: TextTokenizer, ids: list[int]) -> list[str]:
    """Readable per-token labels: spaces shown as '·', newlines as '\\n'."""
    return [tokenizer.decode([i]).replace(" ", "·").replace("\n", "\\n") or "∅" for i in ids]


def _stack(records: dict[str, list[torch.Tensor]], prefix: str, suffix: str) -> torch.Tensor:
    names = sorted(
        (n for n in records if n.startswith(prefix) and n.endswith(suffix)), key=lambda n: int(n.split(".")[2])
    )
    return torch.stack([records[n][0][0] for n in names]).float().cpu()


@torch.inference_mode()
def attention_maps(
    model: LanguageModel, tokenizer: TextTokenizer, text: str, target: str | None = None
) -> dict[str, AttentionMap]:
    """Attention weights of `text` for every stack of the model, keyed by kind.

    For encoder-decoder models the decoder reads `target` (teacher forcing) or, if none is given,
    the model's own greedy output for the text (up to 32 tokens).
    """
    model.eval()
    ids = model_input(model, tokenizer, text)
    x = torch.tensor([ids], device=model.device)
    labels = token_labels(tokenizer, ids)
    spec = family_spec(model.config)
    if not spec.seq2seq:
        with capture_attention(model) as records:
            model(x)
        (kind,) = spec.attention_kinds
        return {kind: AttentionMap(kind, labels, labels, _stack(records, kind, ".attn"))}
    if target is None:
        from llmlab.generation.config import GenerationConfig
        from llmlab.generation.generator import Generator

        out = Generator(model, tokenizer).generate([text], GenerationConfig(max_new_tokens=32, greedy=True))
        target_ids = out[0][0].token_ids
    else:
        target_ids = tokenizer.encode(target)
    decoder_ids = [spec.start_id(model.config, tokenizer), *target_ids][: model.config.block_size]
    y = torch.tensor([decoder_ids], device=model.device)
    with capture_attention(model) as records:
        model(x, y)
    decoder_labels = token_labels(tokenizer, decoder_ids)
    return {
        "encoder": AttentionMap("encoder", labels, labels, _stack(records, "encoder", ".attn")),
        "decoder": AttentionMap("decoder", decoder_labels, decoder_labels, _stack(records, "decoder", ".attn")),
        "cross": AttentionMap("cross", decoder_labels, labels, _stack(records, "decoder", ".cross")),
    }


def plot_attention(amap: AttentionMap, out: Path, layer: int, head: int | None = None) -> Path:
    """A heat map (queries down, keys across) of one head, or a grid of all heads of the layer."""
    n_layers, n_heads = amap.weights.shape[:2]
    if not -n_layers <= layer < n_layers:
        raise LlmlabError(f"layer {layer} does not exist: the {amap.kind} has {n_layers}", f"use 0..{n_layers - 1}")
    if head is not None and not 0 <= head < n_heads:
        raise LlmlabError(f"head {head} does not exist: layers have {n_heads}", f"use 0..{n_heads - 1}")
    layer = layer % n_layers
    heads = [head] if head is not None else list(range(n_heads))
    cols = math.ceil(math.sqrt(len(heads)))
    rows = math.ceil(len(heads) / cols)
    T, S = len(amap.query_tokens), len(amap.key_tokens)
    cell = max(2.5, 0.22 * max(T, S))
    plt = pyplot()
    fig, axes = plt.subplots(rows, cols, figsize=(cell * cols + 1, cell * rows + 0.8), dpi=110, squeeze=False)
    label_size = max(4, min(9, 200 // max(T, S)))
    top = float(amap.weights[layer, heads].max())  # one colour scale for the figure, stretched to its peak
    for ax in axes.flat[len(heads) :]:
        ax.axis("off")
    for ax, h in zip(axes.flat, heads):
        image = ax.imshow(amap.weights[layer, h].numpy(), cmap="viridis", vmin=0.0, vmax=top, aspect="auto")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xticks(range(S), amap.key_tokens, rotation=90, fontsize=label_size)
        ax.set_yticks(range(T), amap.query_tokens, fontsize=label_size)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    fig.suptitle(f"{amap.kind} attention, layer {layer} (rows: queries, columns: keys)")
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)
