"""Pre-training loop for causal language models: one process, any device, exact resume.

AdamW (decay on matrices only), linear warmup then cosine decay, gradient clipping and accumulation,
mixed precision, step and wall-clock budgets, periodic validation, checkpoints every N steps and on
Ctrl-C. Batches are a pure function of (seed, step), so a resumed run sees exactly the same data.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.checkpoint import load_weights, read_model_config, save_checkpoint, verify_checkpoint
from llmlab.config import ModelConfig
from llmlab.data.tokens import TokenData, get_batch, prepare_data
from llmlab.device import autocast, resolve_device, resolve_dtype
from llmlab.errors import LlmlabError
from llmlab.generate import GenerationConfig
from llmlab.model import DecoderLM
from llmlab.plot import plot_loss
from llmlab.progress import MetricsLog, ProgressLine, format_duration
from llmlab.tokenizer import TextTokenizer

DEFAULT_PRESET = "llama-micro"
DEFAULT_MAX_STEPS = 2000
MODEL_OVERRIDES = ("block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "dropout")


@dataclass
class TrainConfig:
    """Everything `llmlab pretrain` takes. Model fields left at None come from the preset."""

    out: str = "runs/default"
    # data
    data: str | None = None  # a text file, a folder, a .jsonl file; None = the default corpus
    glob: str = "**/*"
    text_field: str = "text"
    tokenizer: str = "bpe"
    vocab_size: int = 8192
    val_fraction: float = 0.1
    # model
    preset: str | None = None
    block_size: int | None = None
    n_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    # optimisation
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr: float | None = None  # default lr / 10
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    optimizer: str = "adamw"  # or "muon": Muon for the blocks' matrices, AdamW for the rest
    # budgets and bookkeeping
    max_steps: int | None = None  # neither budget given: DEFAULT_MAX_STEPS
    max_time: float | None = None  # seconds of training, evaluation included
    eval_interval: int = 250
    eval_iters: int = 20
    log_interval: int = 10
    checkpoint_interval: int = 1000
    # execution
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False
    seed: int = 0
    resume: bool = False
    overwrite: bool = False

    def validate(self) -> None:
        positive = (
            "vocab_size",
            "batch_size",
            "grad_accum",
            "eval_interval",
            "eval_iters",
            "log_interval",
            "checkpoint_interval",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise LlmlabError(
                    f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}", "pass a positive number"
                )
        if self.optimizer not in ("adamw", "muon"):
            raise LlmlabError(f"unknown optimizer {self.optimizer!r}", "use adamw or muon")
        if self.lr <= 0:
            raise LlmlabError(f"--lr must be positive, got {self.lr}", "use e.g. 1e-3")
        if self.warmup_steps < 0:
            raise LlmlabError(f"--warmup-steps must be >= 0, got {self.warmup_steps}", "use e.g. 100")
        if self.max_steps is not None and self.max_steps <= 0:
            raise LlmlabError(f"--max-steps must be positive, got {self.max_steps}", "pass e.g. 2000")
        if self.max_time is not None and self.max_time <= 0:
            raise LlmlabError(f"--max-time must be positive, got {self.max_time}", "pass seconds, e.g. 180")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    out: Path
    step: int
    train_losses: dict[int, float] = field(default_factory=dict)  # step -> loss of that step
    best_val_loss: float = math.inf
    interrupted: bool = False


def learning_rate(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """Linear warmup over warmup_steps, then cosine from lr to min_lr over the budget's progress."""
    min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = 0.0
    if cfg.max_steps is not None:
        progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    if cfg.max_time is not None:
        progress = max(progress, elapsed / cfg.max_time)
    progress = min(1.0, progress)
    return min_lr + 0.5 * (cfg.lr - min_lr) * (1 + math.cos(math.pi * progress))


def build_model_config(cfg: TrainConfig, vocab_size: int) -> ModelConfig:
    overrides = {name: getattr(cfg, name) for name in MODEL_OVERRIDES}
    return ModelConfig.from_preset(cfg.preset or DEFAULT_PRESET, vocab_size=vocab_size, **overrides)


def make_optimizers(model: DecoderLM, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW with weight decay on matrices (weights, embeddings) but not on biases and norm gains.

    With `optimizer="muon"`, the matrices inside the blocks go to Muon (orthogonalised momentum, with
    its learning rate scaled to match AdamW's update size, so the same --lr serves both) and the
    embeddings, head, norms and biases stay with AdamW.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if cfg.optimizer == "muon" and p.dim() == 2 and ".blocks." in f".{n}"]
    taken = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in taken]
    groups = [
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
    if not hidden:
        return [adamw]
    muon = torch.optim.Muon(hidden, lr=cfg.lr, weight_decay=cfg.weight_decay, adjust_lr_fn="match_rms_adamw")
    return [adamw, muon]


def optimizer_tensors(optimizers: list[torch.optim.Optimizer]) -> tuple[dict[str, torch.Tensor], list[list[dict]]]:
    """Optimizer states as flat tensors (for safetensors) plus JSON-able parameter groups."""
    tensors, groups = {}, []
    for j, optimizer in enumerate(optimizers):
        state = optimizer.state_dict()
        tensors.update({f"opt{j}.state.{i}.{k}": v for i, s in state["state"].items() for k, v in s.items()})
        groups.append(state["param_groups"])
    return tensors, groups


def load_optimizers(optimizers: list[torch.optim.Optimizer], tensors: dict[str, torch.Tensor], groups: list) -> None:
    if len(groups) != len(optimizers):
        raise LlmlabError("--resume with a different --optimizer", "resume with the original run's optimizer")
    for j, optimizer in enumerate(optimizers):
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(f"opt{j}.state."):
                _, _, index, name = key.split(".", 3)
                state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": groups[j]})


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@torch.no_grad()
def evaluate_loss(model, ids, cfg: TrainConfig, block_size: int, device, dtype) -> float:
    """Mean loss over a fixed set of validation windows (the same ones at every evaluation)."""
    model.eval()
    losses = []
    for i in range(cfg.eval_iters):
        x, y = get_batch(ids, cfg.batch_size, block_size, seed=cfg.seed, step=2**31 + i)
        with autocast(device, dtype):
            logits = model(x.to(device))
        losses.append(F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten()).item())
    model.train()
    return sum(losses) / len(losses)


class _StopRequest:
    """First Ctrl-C asks the loop to stop after the current step and save; a second one aborts."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> _StopRequest:
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: Ctrl-C is not ours to handle
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def train(
    cfg: TrainConfig,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train a decoder-only model as `cfg` says; returns the losses seen and where the checkpoint is.

    `on_step(step, loss)` runs after every optimizer step; raising KeyboardInterrupt there stops the
    run cleanly with a checkpoint, just like Ctrl-C.
    """
    cfg.validate()
    if cfg.max_steps is None and cfg.max_time is None:
        cfg = dataclasses.replace(cfg, max_steps=DEFAULT_MAX_STEPS)
    progress = ProgressLine()
    log = log or progress.message
    out = Path(cfg.out)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.float16 and device.type != "cuda":
        raise LlmlabError("fp16 training needs a CUDA GPU (it relies on loss scaling)", "use --dtype bf16 or fp32")

    state: dict[str, Any] = {}
    tokenizer: TextTokenizer | None = None
    if cfg.resume:
        verify_checkpoint(out)
        if not (out / "trainer_state.json").is_file() or not (out / "optimizer.safetensors").is_file():
            raise LlmlabError(f"{out} has no trainer state to resume from", "train without --resume")
        state = json.loads((out / "trainer_state.json").read_text())
        tokenizer = TextTokenizer.load(out / "tokenizer.json")
    elif (out / "config.json").exists() and not cfg.overwrite:
        raise LlmlabError(
            f"{out} already holds a checkpoint",
            "pass --resume to continue it, --overwrite to replace it, or another --out",
        )

    torch.manual_seed(cfg.seed)
    data: TokenData = prepare_data(
        cfg.data, cfg.glob, cfg.text_field, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, tokenizer, log
    )
    model_config = build_model_config(cfg, data.tokenizer.vocab_size)
    if cfg.resume:
        saved = read_model_config(out)
        changed = [
            f"{k}: {v} -> {model_config.to_dict()[k]}"
            for k, v in saved.to_dict().items()
            if model_config.to_dict()[k] != v
        ]
        if changed:
            raise LlmlabError(
                f"--resume with a changed model config ({'; '.join(changed)})",
                "resume with the options of the original run, or train a new --out",
            )
    block = model_config.block_size
    for split, ids in (("training", data.train), ("validation", data.val)):
        if len(ids) <= block + 1:
            raise LlmlabError(
                f"the {split} split has {len(ids)} tokens, fewer than one window of {block + 1}",
                "use more data or a smaller --block-size",
            )

    model = DecoderLM(model_config).to(device)
    optimizers = make_optimizers(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, elapsed, best_val = 0, 0.0, math.inf
    if cfg.resume:
        from safetensors.torch import load_file

        load_weights(model, out / "model.safetensors")
        model.to(device)
        tensors = load_file(out / "optimizer.safetensors")
        load_optimizers(optimizers, {k: v.to(device) for k, v in tensors.items()}, state["optimizer_param_groups"])
        restore_rng(tensors)
        step, elapsed, best_val = state["step"], state["elapsed"], state["best_val_loss"]
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        log(f"resuming {out} at step {step}")
    out.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if cfg.resume else None)
    n_params = model.num_parameters()
    log(
        f"model: {cfg.preset or DEFAULT_PRESET}, {n_params:,} parameters ({n_params / 1e6:.2f}M), "
        f"{model_config.n_layer} layers, {model_config.n_embd} dims, context {block}; "
        f"device {device}, {str(dtype).replace('torch.', '')}{', compiled' if cfg.compile else ''}"
    )
    forward = torch.compile(model) if cfg.compile else model
    model.train()
    tokens_per_step = cfg.batch_size * cfg.grad_accum * block
    result = TrainResult(out=out, step=step, best_val_loss=best_val)

    def save(reason: str) -> None:
        tensors, groups = optimizer_tensors(optimizers)
        trainer_state = {
            "step": step,
            "elapsed": elapsed,
            "best_val_loss": best_val,
            "tokens_seen": step * tokens_per_step,
            "optimizer_param_groups": groups,
            "train_config": cfg.to_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        }
        defaults = GenerationConfig(max_new_tokens=min(128, block // 2))  # leave room for a prompt
        save_checkpoint(out, model, data.tokenizer, defaults, trainer_state, {**tensors, **rng_tensors()})
        log(f"checkpoint: {out} at step {step} ({reason})")

    def budget_left() -> bool:
        return (cfg.max_steps is None or step < cfg.max_steps) and (cfg.max_time is None or elapsed < cfg.max_time)

    window_start, window_tokens = time.perf_counter(), 0
    with _StopRequest() as stop:
        try:
            while budget_left() and not stop.requested:
                t0 = time.perf_counter()
                lr = learning_rate(cfg, step, elapsed)
                for optimizer in optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                loss_sum = 0.0
                for micro in range(cfg.grad_accum):
                    x, y = get_batch(data.train, cfg.batch_size, block, cfg.seed, step, micro)
                    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                    with autocast(device, dtype):
                        logits = forward(x)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten()) / cfg.grad_accum
                    scaler.scale(loss).backward()
                    loss_sum += loss.item()
                for optimizer in optimizers:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                for optimizer in optimizers:
                    scaler.step(optimizer)
                    optimizer.zero_grad(set_to_none=True)
                scaler.update()
                step += 1
                elapsed += time.perf_counter() - t0
                window_tokens += tokens_per_step
                result.train_losses[step] = loss_sum
                if not math.isfinite(loss_sum):
                    raise LlmlabError(f"loss became {loss_sum} at step {step}", "lower --lr or use --dtype fp32")

                if step % cfg.log_interval == 0 or not budget_left():
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    metrics.write(
                        step=step,
                        train_loss=round(loss_sum, 5),
                        lr=lr,
                        tokens_per_s=round(tps, 1),
                        elapsed=round(elapsed, 2),
                    )
                    progress.update(_progress_text(cfg, step, loss_sum, lr, tps, elapsed))

                if step % cfg.eval_interval == 0 or not budget_left():
                    t_eval = time.perf_counter()
                    val = evaluate_loss(model, data.val, cfg, block, device, dtype)
                    best_val = min(best_val, val)
                    result.best_val_loss = best_val
                    metrics.write(step=step, val_loss=round(val, 5), elapsed=round(elapsed, 2))
                    log(f"step {step}: validation loss {val:.4f} (best {best_val:.4f})")
                    eval_time = time.perf_counter() - t_eval
                    elapsed += eval_time
                    window_start += eval_time

                if step % cfg.checkpoint_interval == 0 and budget_left():
                    save(f"every {cfg.checkpoint_interval} steps")
                if on_step is not None:
                    on_step(step, loss_sum)
        except KeyboardInterrupt:
            stop.requested = True
        result.step = step
        if stop.requested:
            result.interrupted = True
            save("interrupted; continue with --resume")
        else:
            save("done")
    plot_loss(metrics.records(), out / "loss.png", title=f"{out.name}: {n_params / 1e6:.1f}M parameters")
    log(
        f"done: {step} steps, {step * tokens_per_step:,} tokens in {format_duration(elapsed)}, "
        f"best validation loss {best_val:.4f}; loss curve {out / 'loss.png'}"
    )
    return result


def _progress_text(cfg: TrainConfig, step: int, loss: float, lr: float, tps: float, elapsed: float) -> str:
    per_step = elapsed / max(step, 1)
    remaining = []
    if cfg.max_steps is not None:
        remaining.append((cfg.max_steps - step) * per_step)
    if cfg.max_time is not None:
        remaining.append(cfg.max_time - elapsed)
    total = f"/{cfg.max_steps}" if cfg.max_steps is not None else ""
    return (
        f"step {step}{total} | loss {loss:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | "
        f"{format_duration(elapsed)} elapsed | ETA {format_duration(min(remaining))}"
    )
