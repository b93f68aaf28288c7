"""What quantization costs, measured: size, memory, perplexity and decode speed per format."""

from __future__ import annotations

import copy
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from llmlab.checkpoint.folder import model_state, save_checkpoint
from llmlab.data.tokens import prepare_data
from llmlab.errors import LlmlabError
from llmlab.evaluation.perplexity import window_perplexity
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.load import load_checkpoint
from llmlab.model.quantize import Int4Linear, Int8Linear, NF4Linear, QuantizationSpec, in_blocks, quantize_model


def variants(model) -> list[tuple[str, QuantizationSpec | None]]:
    """fp32, bf16, fp16, int8, int4 at two group sizes (128 and 32, halved until they divide the widths)
    and NF4 (blocks of 64)."""
    widths = [m.in_features for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and in_blocks(n)]
    found = [
        ("fp32", None),
        ("bf16", QuantizationSpec("bf16")),
        ("fp16", QuantizationSpec("fp16")),
        ("int8", QuantizationSpec("int8")),
    ]
    for group in (128, 32):
        while group > 2 and any(w % group for w in widths):
            group //= 2
        if f"int4-g{group}" not in dict(found):
            found.append((f"int4-g{group}", QuantizationSpec("int4", group_size=group)))
    found.append(("nf4", QuantizationSpec("nf4")))
    found.append(("int8+embeddings", QuantizationSpec("int8", embeddings=True)))
    largest = next(name for name, _ in found if name.startswith("int4"))
    found.append(
        (f"{largest}+embeddings", QuantizationSpec("int4", group_size=dict(found)[largest].group_size, embeddings=True))
    )
    return found


@dataclass
class ReportRow:
    variant: str
    disk_mb: float
    weight_memory_mb: float
    perplexity: float
    perplexity_change: float
    tokens_per_s_batch1: float
    tokens_per_s_batch8: float
    max_layer_error: float  # the largest relative Frobenius error of one layer's weights


def _layer_error(original, quantized) -> float:
    worst = 0.0
    reference = dict(original.named_modules())
    reference["embed.table"] = reference["embed"]  # a quantized embedding's table is the embedding matrix
    for name, module in quantized.named_modules():
        if name in reference and isinstance(module, Int8Linear | Int4Linear | NF4Linear | torch.nn.Linear):
            w = reference[name].weight.detach().float()
            q = module.dequantized(torch.float32) if hasattr(module, "dequantized") else module.weight.float()
            worst = max(worst, ((q - w).norm() / w.norm()).item())
    return worst


def _decode_speed(generator: Generator, prompts: list[str], new_tokens: int, repeats: int = 3) -> float:
    """Median tokens/s of `repeats` greedy generations after a warm-up (this VM's speed drifts)."""
    config = GenerationConfig(greedy=True, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    generator.generate(prompts, GenerationConfig(greedy=True, max_new_tokens=4))  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        generator.generate(prompts, config)
        times.append(time.perf_counter() - start)
    return len(prompts) * new_tokens / sorted(times)[len(times) // 2]


def require_decoder(config) -> None:
    """--report measures perplexity and decoding: decoders only (checked before anything is written)."""
    if not family_spec(config).causal:
        raise LlmlabError(
            f"--report measures decoder-only models (perplexity, decode speed), not {config.family}",
            "quantize it without --report, or report on a decoder checkpoint",
        )


def quantize_report(
    checkpoint: str | Path,
    data: str | None = None,
    batches: int = 8,
    batch_size: int = 8,
    new_tokens: int = 64,
    log=print,
) -> list[ReportRow]:
    base = load_checkpoint(checkpoint)
    require_decoder(base.model.config)
    state = Path(checkpoint) / "trainer_state.json"
    if data is None and state.is_file():
        data = json.loads(state.read_text())["train_config"]["data"]
    tokens = prepare_data(data, tokenizer=base.tokenizer, log=lambda s: None)
    block = base.model.config.block_size
    new_tokens = min(new_tokens, block // 2)
    prompt_ids = [tokens.val[i * 997 : i * 997 + 8].tolist() for i in range(8)]
    prompts = [base.tokenizer.decode(ids) for ids in prompt_ids]
    rows: list[ReportRow] = []
    reference_ppl = None
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in variants(base.model):
            model = copy.deepcopy(base.model)
            if spec is not None:
                quantize_model(model, spec)
            path = save_checkpoint(
                Path(tmp) / name, model, base.tokenizer, quantization=spec.to_dict() if spec else None
            )
            disk = (path / "model.safetensors").stat().st_size / 1e6
            memory = sum(t.numel() * t.element_size() for t in model_state(model).values()) / 1e6
            ppl = window_perplexity(model, tokens.val, batches, batch_size, block)
            reference_ppl = reference_ppl or ppl
            generator = Generator(model, base.tokenizer)
            row = ReportRow(
                variant=name,
                disk_mb=disk,
                weight_memory_mb=memory,
                perplexity=ppl,
                perplexity_change=ppl / reference_ppl - 1,
                tokens_per_s_batch1=_decode_speed(generator, prompts[:1], new_tokens),
                tokens_per_s_batch8=_decode_speed(generator, prompts, new_tokens),
                max_layer_error=_layer_error(base.model, model),
            )
            log(f"{name}: {disk:.1f} MB, perplexity {ppl:.3f}, {row.tokens_per_s_batch1:.0f} tokens/s at batch 1")
            rows.append(row)
    return rows


def plot_report(rows: list[ReportRow], out: Path) -> Path:
    from llmlab.plot import pyplot, save_figure

    fig, axes = pyplot().subplots(1, 3, figsize=(12, 3.6), dpi=110)
    names = [r.variant for r in rows]
    for ax, values, title in (
        (axes[0], [r.disk_mb for r in rows], "size on disk (MB)"),
        (axes[1], [100 * r.perplexity_change for r in rows], "perplexity change vs fp32 (%)"),
        (axes[2], [r.tokens_per_s_batch1 for r in rows], "decode tokens/s, batch 1"),
    ):
        ax.bar(names, values, color="steelblue")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", rotation=45, labelsize=8)
    fig.tight_layout()
    return save_figure(fig, out)


def report_json(rows: list[ReportRow]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=2)
