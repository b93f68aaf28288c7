"""The lifecycle's select stage: which preset to pre-train in the time the recipe gives pre-training.

The Chinchilla question (the lowest loss for a fixed compute), answered with this machine's measured speed
rather than an assumed one: each candidate trains a few timed steps at the pretrain stage's batch shape and
precision, D is the tokens it would see in the pre-training time, N its parameters, and the published fit
`plan compute` uses predicts L(N, D). A candidate whose training memory (`plan memory`) exceeds what the
machine has is left out, and a budget that buys no candidate MIN_STEPS steps is refused before any
pre-training. The choice goes to the next pretrain stage unless it names its own preset.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.config import PRESETS, ModelConfig
from llmlab.device import autocast, resolve_device, resolve_dtype
from llmlab.errors import LlmlabError
from llmlab.model import build_model
from llmlab.plan.compute import CHINCHILLA_FITS
from llmlab.plan.memory import plan_memory
from llmlab.plan.model import parameter_breakdown
from llmlab.pretrain.config import MODEL_OVERRIDES, PretrainConfig

SELECT_OPTIONS = ("candidates", "seconds", "fit")
DEFAULT_CANDIDATES = ["llama-nano", "llama-micro", "llama-mini"]
MIN_STEPS = 20  # fewer optimizer steps than this trains nothing worth evaluating
TIMED_STEPS = 3


def check_select_options(options: dict[str, Any], at: str) -> None:
    """The recipe check: known decoder presets, a positive time, a known fit."""
    candidates = options.get("candidates", DEFAULT_CANDIDATES)
    decoders = [name for name, fields in PRESETS.items() if fields.get("family", "decoder") == "decoder"]
    if not isinstance(candidates, list) or not candidates or any(c not in decoders for c in candidates):
        raise LlmlabError(f"{at}.candidates: {candidates!r} is not a list of decoder presets",
                          f"choose from {', '.join(decoders)}")  # fmt: skip
    seconds = options.get("seconds")
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0):
        raise LlmlabError(f"{at}.seconds: {seconds!r} is not a positive number of seconds", "e.g. seconds: 180")
    if options.get("fit", "hoffmann2022") not in CHINCHILLA_FITS:
        raise LlmlabError(f"{at}.fit: unknown fit {options['fit']!r}", f"use one of {', '.join(CHINCHILLA_FITS)}")


def select_preset(options: dict[str, Any], pretrain: dict[str, Any], folder: Path, log=print) -> dict[str, Any]:
    """Measure every candidate, choose the lowest predicted loss that fits; select.json records it all."""
    cfg = PretrainConfig(**{k: v for k, v in pretrain.items() if k in PretrainConfig.__dataclass_fields__})
    seconds = float(options.get("seconds") or pretrain.get("max_time") or 0)
    if seconds <= 0:
        raise LlmlabError("the select stage has no pre-training time to plan for",
                          "give the pretrain stage a max_time, or the select stage seconds")  # fmt: skip
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    fit = CHINCHILLA_FITS[options.get("fit", "hoffmann2022")]
    candidates = options.get("candidates", DEFAULT_CANDIDATES)
    rows = [_measure(name, cfg, seconds, device, dtype, fit, log) for name in candidates]
    usable = [r for r in rows if r["fits_memory"] and r["steps"] >= MIN_STEPS]
    if not usable:
        smallest = min(rows, key=lambda r: r["parameters"])
        raise LlmlabError(f"{seconds:g} s of pre-training buys no candidate {MIN_STEPS} steps that fit in memory "
                          f"({smallest['preset']}: {smallest['steps']} steps)",
                          "raise the pretrain stage's max_time or add a smaller candidate")  # fmt: skip
    chosen = min(usable, key=lambda r: r["predicted_loss"])
    result = {"chosen": chosen["preset"], "seconds": seconds, "fit": options.get("fit", "hoffmann2022"),
              "batch_size": cfg.batch_size, "candidates": rows}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "select.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    log(f"select: {chosen['preset']} ({chosen['parameters']:,} parameters, {chosen['tokens']:,} tokens in "
        f"{seconds:g} s, predicted loss {chosen['predicted_loss']:.3f})")  # fmt: skip
    return result


def _measure(name: str, cfg: PretrainConfig, seconds: float, device, dtype, fit, log) -> dict[str, Any]:
    vocab = cfg.vocab_size if cfg.tokenizer == "bpe" else 256  # a character vocabulary is known only once trained
    overrides = {field: getattr(cfg, field) for field in MODEL_OVERRIDES}  # the pretrain stage's, as it builds
    config = ModelConfig.from_preset(name, **{**overrides, "vocab_size": vocab})
    params, block = sum(parameter_breakdown(config).values()), config.block_size
    plan = plan_memory(params, optimizer=cfg.optimizer if cfg.optimizer in ("adamw", "sgd") else "adamw",
                       mixed_precision=dtype != torch.float32, config=config, batch=cfg.batch_size,
                       seq_len=block)  # fmt: skip
    fits = plan.training_total < _available(device)
    tokens_per_s = _tokens_per_second(config, cfg.batch_size, block, device, dtype) if fits else 0.0  # no OOM
    per_step = cfg.batch_size * cfg.grad_accum * block  # an optimizer step's tokens
    steps = int(tokens_per_s * seconds / per_step)
    tokens = steps * per_step
    row = {"preset": name, "parameters": params, "tokens_per_s": round(tokens_per_s), "steps": steps,
           "tokens": tokens, "tokens_per_parameter": round(tokens / params, 3),
           "training_bytes": round(plan.training_total), "fits_memory": fits,
           "predicted_loss": round(fit.loss(params, max(tokens, 1)), 4)}  # fmt: skip
    log(f"select: {name}: {params:,} parameters, {tokens_per_s:,.0f} tokens/s -> {tokens:,} tokens "
        f"({row['tokens_per_parameter']:.2f} per parameter), predicted loss {row['predicted_loss']:.3f}")  # fmt: skip
    return row


def _tokens_per_second(config: ModelConfig, batch: int, block: int, device, dtype) -> float:
    """Forward, backward and an AdamW update on random tokens: one untimed step, then TIMED_STEPS timed. (AdamW
    whatever the recipe's optimizer: Muon's orthogonalisation costs more on wider matrices, so under Muon this
    errs towards the larger candidates.)"""
    torch.manual_seed(0)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(0, config.vocab_size, (batch, block), device=device)
    started = 0.0
    for i in range(TIMED_STEPS + 1):
        if i == 1:
            if device.type == "cuda":
                torch.cuda.synchronize()  # the untimed step's kernels finish before the clock starts
            started = time.perf_counter()
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float().flatten(0, 1), x.roll(-1, 1).flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return TIMED_STEPS * batch * block / (time.perf_counter() - started)


def _available(device) -> float:
    """Bytes a training run may use: the GPU's memory, or the memory the system has available."""
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    try:  # MemAvailable counts the page cache the kernel would give back; free memory alone would not
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")
