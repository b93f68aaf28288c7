"""Pre-training loop for every family and objective: one process, any device, exact resume.

AdamW (decay on matrices only), linear warmup then cosine decay, gradient clipping and accumulation,
mixed precision, step and wall-clock budgets, periodic validation, checkpoints every N steps and on
Ctrl-C. Batches are a pure function of (seed, step), so a resumed run sees exactly the same data.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from llmlab.checkpoint.folder import (
    load_tokenizer,
    load_weights,
    read_model_config,
    read_quantization,
    save_checkpoint,
    verify_checkpoint,
)
from llmlab.config import ModelConfig
from llmlab.data.objectives import (
    IGNORE,
    Batch,
    causal_lm_batch,
    check_objective,
    mlm_batch,
    seq2seq_batch,
    span_batch,
    span_lengths,
)
from llmlab.data.pairs import PairData, prepare_pairs
from llmlab.data.tokens import TokenData, prepare_data
from llmlab.device import autocast, resolve_device, resolve_dtype
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.load import load_checkpoint
from llmlab.model import LanguageModel, build_model
from llmlab.plan.compute import accelerator_peak_flops
from llmlab.plan.flops import step_flops
from llmlab.plan.measure import PeakWindow
from llmlab.plot import plot_loss
from llmlab.progress import MetricsLog, ProgressLine, format_duration
from llmlab.tokenizer import TextTokenizer
from llmlab.training.distributed import (
    DistContext,
    all_reduce_mean,
    barrier,
    full_model_state,
    gather_objects,
    init_distributed,
    load_rng,
    load_sharded,
    model_state_bytes,
    save_rng,
    save_sharded,
    unwrap,
    wrap_model,
)

DEFAULT_PRESETS = {"decoder": "llama-micro", "encoder": "bert-micro", "encoder-decoder": "t5-micro"}
DEFAULT_MAX_STEPS = 2000
MODEL_OVERRIDES = (
    "block_size",
    "n_layer",
    "n_decoder_layer",
    "n_head",
    "n_kv_head",
    "n_embd",
    "dropout",
    "positions",
    "norm",
    "mlp",
)


@dataclass
class TrainConfig:
    """Everything `llmlab pretrain` takes. Model fields left at None come from the preset."""

    out: str = "runs/default"
    # what to train
    family: str | None = None  # decoder, encoder or encoder-decoder; default: the preset's (decoder)
    objective: str | None = None  # clm, mlm, span or seq2seq; default: the family's own
    init: str | None = None  # start from this checkpoint's weights and tokenizer (e.g. seq2seq after span)
    # data
    data: str | None = None  # a text file, a folder, a .jsonl file; None = the default corpus
    glob: str = "**/*"
    text_field: str = "text"
    input_field: str = "input"  # seq2seq JSONL fields
    target_field: str = "target"
    mask_probability: float = 0.15  # mlm
    noise_density: float = 0.15  # span corruption
    mean_span_length: float = 3.0
    tokenizer: str = "bpe"
    vocab_size: int = 8192
    val_fraction: float = 0.1
    # model
    preset: str | None = None
    block_size: int | None = None
    n_layer: int | None = None
    n_decoder_layer: int | None = None
    n_head: int | None = None
    n_kv_head: int | None = None
    n_embd: int | None = None
    dropout: float | None = None
    positions: str | None = None  # learned, rope, sinusoidal or relative
    norm: str | None = None  # layernorm or rmsnorm
    mlp: str | None = None  # gelu, relu, swiglu or geglu
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
    # distributed (launch with torchrun)
    strategy: str = "none"  # none, ddp or fsdp
    zero: int = 3  # fsdp: 3 shards parameters too (reshard after forward), 2 keeps them gathered
    fsdp_mixed_precision: str | None = None  # fsdp: bf16 or fp16 parameters in compute, fp32 reductions

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
        for name in ("mask_probability", "noise_density"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise LlmlabError(
                    f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(self, name)}", "use e.g. 0.15"
                )
        if self.mean_span_length < 1:
            raise LlmlabError(f"--mean-span-length must be >= 1, got {self.mean_span_length}", "use e.g. 3")

    def resolved_family(self) -> str:
        """The family to train: --family, else the preset's, else decoder; a mismatch is an error."""
        from llmlab.config import FAMILIES, PRESETS

        if self.family is not None and self.family not in FAMILIES:
            raise LlmlabError(f"unknown family {self.family!r}", f"choose one of: {', '.join(FAMILIES)}")
        preset_family = PRESETS.get(self.preset, {}).get("family", "decoder") if self.preset else None
        if self.family and preset_family and self.family != preset_family:
            raise LlmlabError(
                f"preset {self.preset} is of family {preset_family}, not {self.family}",
                f"leave out --family or pick a preset of that family (default {DEFAULT_PRESETS[self.family]})",
            )
        return self.family or preset_family or "decoder"

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


def build_model_config(cfg: TrainConfig, tokenizer: TextTokenizer) -> ModelConfig:
    family = cfg.resolved_family()
    overrides = {name: getattr(cfg, name) for name in MODEL_OVERRIDES}
    if family == "encoder-decoder":
        overrides["decoder_start_token_id"] = tokenizer.require("pad", "as the decoder's start token")
    elif cfg.n_decoder_layer is not None:
        raise LlmlabError(
            "--n-decoder-layer is for encoder-decoder models", "leave it out or use --family encoder-decoder"
        )
    preset = cfg.preset or DEFAULT_PRESETS[family]
    return ModelConfig.from_preset(preset, vocab_size=tokenizer.vocab_size, **overrides)


BatchSource = Callable[[bool, int, int], Batch]  # (validation?, step, micro) -> batch


def batch_source(
    objective: str, cfg: TrainConfig, data: TokenData | PairData, config: ModelConfig, rows: slice | None = None
) -> BatchSource:
    """The objective's batches for training and validation, each a pure function of (seed, step, micro).
    `rows` picks one rank's share of each batch of `cfg.batch_size` rows; only those rows are read."""
    B, block, tok, seed = cfg.batch_size, config.block_size, data.tokenizer, cfg.seed
    start = config.decoder_start_token_id
    if objective == "seq2seq":
        assert isinstance(data, PairData)
        pad = tok.require("pad", "to pad sequence-to-sequence batches")
        eos = tok.require("eos", "to end sequence-to-sequence inputs and targets")

        def pairs(val: bool, step: int, micro: int) -> Batch:
            src, tgt = (data.val_sources, data.val_targets) if val else (data.train_sources, data.train_targets)
            return seq2seq_batch(src, tgt, B, block, pad, eos, start, seed, step, micro, rows)

        return pairs
    split = lambda val: data.val if val else data.train  # noqa: E731
    if objective == "clm":
        return lambda val, step, micro: causal_lm_batch(split(val), B, block, seed, step, micro, rows)
    if objective == "mlm":
        p = cfg.mask_probability
        return lambda val, step, micro: mlm_batch(split(val), tok, B, block, seed, step, micro, p, rows)
    density, mean = cfg.noise_density, cfg.mean_span_length
    return lambda val, step, micro: span_batch(split(val), tok, B, block, start, seed, step, micro, density, mean, rows)


def load_training_data(
    cfg: TrainConfig, objective: str, family: str, tokenizer: TextTokenizer | None, log: Callable[[str], None]
) -> TokenData | PairData:
    """JSONL pairs for seq2seq, else the cached token stream; the tokenizer is trained if not given."""
    if objective == "seq2seq":
        if cfg.data is None:
            raise LlmlabError("seq2seq training needs pairs", "pass --data FILE.jsonl with input and target fields")
        return prepare_pairs(
            cfg.data, cfg.input_field, cfg.target_field, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction,
            tokenizer, log, family,
        )  # fmt: skip
    return prepare_data(
        cfg.data, cfg.glob, cfg.text_field, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, tokenizer, log, family
    )


def window_length(objective: str, cfg: TrainConfig, block: int) -> int:
    """Raw tokens one training row reads from the token stream."""
    if objective == "clm":
        return block + 1
    if objective == "mlm":
        return block - 2
    return span_lengths(block, cfg.noise_density, cfg.mean_span_length)[0]


def batch_loss(model: LanguageModel, batch: Batch, normalizer: float | None = None) -> torch.Tensor:
    """Cross-entropy over the labelled positions, whatever the family: their mean, or their sum divided
    by `normalizer` (a rank's share of a global batch: global labelled count / world size)."""
    family = unwrap(model).config.family
    reduction = "mean" if normalizer is None else "sum"
    if family == "encoder":
        selected = batch.labels != IGNORE
        logits = model(batch.inputs, batch.attention_mask, select=selected)
        loss = F.cross_entropy(logits.float(), batch.labels[selected], reduction=reduction)
    else:
        if family == "encoder-decoder":
            logits = model(batch.inputs, batch.decoder_inputs, batch.attention_mask)
        else:
            logits = model(batch.inputs)
        flat = logits.float().flatten(0, 1)
        loss = F.cross_entropy(flat, batch.labels.flatten(), ignore_index=IGNORE, reduction=reduction)
    return loss if normalizer is None else loss / normalizer


def make_optimizers(model: LanguageModel, cfg: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
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


def global_counts(batch: Batch, ctx: DistContext | None) -> tuple[float | None, int]:
    """(loss normaliser, tokens read) for this rank's share of a global batch: the normaliser is the
    global labelled count / world (None for one process: the mean), the tokens are summed over ranks."""
    if ctx is None:
        return None, batch.tokens
    counts = torch.tensor([batch.labelled, batch.tokens], dtype=torch.float64, device=ctx.device)
    torch.distributed.all_reduce(counts)
    return float(counts[0]) / ctx.world, int(counts[1])


@torch.no_grad()
def evaluate_loss(
    model: LanguageModel, batches: BatchSource, cfg: TrainConfig, device, dtype, ctx: DistContext | None = None
) -> float:
    """Mean loss over a fixed set of validation batches (the same ones at every evaluation)."""
    model.eval()
    losses = []
    for i in range(cfg.eval_iters):
        local = batches(True, 2**31 + i, 0)
        normalizer, _ = global_counts(local, ctx)
        with autocast(device, dtype):
            losses.append(all_reduce_mean(batch_loss(model, local.to(device), normalizer).item(), ctx))
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
    ctx = init_distributed(cfg.strategy, cfg.zero, cfg.device)
    if ctx is not None and cfg.optimizer == "muon":
        raise LlmlabError("Muon is not supported with --strategy ddp/fsdp", "use --optimizer adamw")
    main = ctx is None or ctx.is_main
    progress = ProgressLine()
    log = (log or progress.message) if main else (lambda message: None)  # only rank 0 speaks
    out = Path(cfg.out)
    device = ctx.device if ctx is not None else resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if dtype == torch.float16 and device.type != "cuda":
        raise LlmlabError("fp16 training needs a CUDA GPU (it relies on loss scaling)", "use --dtype bf16 or fp32")

    state: dict[str, Any] = {}
    tokenizer: TextTokenizer | None = None
    sharded_dir = out / "sharded"  # resumable state of distributed runs, any world size
    if cfg.resume:
        verify_checkpoint(out)
        resumable = (out / "optimizer.safetensors").is_file() or sharded_dir.is_dir()
        if not (out / "trainer_state.json").is_file() or not resumable:
            raise LlmlabError(f"{out} has no trainer state to resume from", "train without --resume")
        state = json.loads((out / "trainer_state.json").read_text())
        tokenizer = load_tokenizer(out)
    elif (out / "config.json").exists() and not cfg.overwrite:
        raise LlmlabError(
            f"{out} already holds a checkpoint",
            "pass --resume to continue it, --overwrite to replace it, or another --out",
        )

    family = cfg.resolved_family()
    objective = check_objective(family, cfg.objective)
    init_config, init_state = None, None
    if cfg.init is not None and not cfg.resume:  # an llmlab checkpoint or a Hugging Face folder / hub id
        init = load_checkpoint(cfg.init)
        if read_quantization(init.path):
            raise LlmlabError(f"--init {cfg.init} is quantized", "start from the full-precision checkpoint")
        init_config, init_state, tokenizer = init.model.config, init.model.state_dict(), init.tokenizer
        if init_config.family != family:
            raise LlmlabError(
                f"--init {cfg.init} holds a model of family {init_config.family}, not {family}",
                f"pass --family {init_config.family}",
            )

    torch.manual_seed(cfg.seed)
    if ctx is not None and not main:
        barrier(ctx)  # rank 0 trains the tokenizer and writes the token cache; the others then read it
    data = load_training_data(cfg, objective, family, tokenizer, log)
    if ctx is not None and main:
        barrier(ctx)
    model_config = init_config or build_model_config(cfg, data.tokenizer)
    if cfg.resume:
        saved = read_model_config(out)
        changed = [
            f"{k}: {v} -> {model_config.to_dict()[k]}"
            for k, v in saved.to_dict().items()
            if model_config.to_dict()[k] != v
        ]
        if changed and state.get("train_config", {}).get("init") is None:
            raise LlmlabError(
                f"--resume with a changed model config ({'; '.join(changed)})",
                "resume with the options of the original run, or train a new --out",
            )
        model_config = saved
    block = model_config.block_size
    if objective != "seq2seq":
        window = window_length(objective, cfg, block)
        for split, ids in (("training", data.train), ("validation", data.val)):
            if len(ids) <= window:
                raise LlmlabError(
                    f"the {split} split has {len(ids)} tokens, fewer than one window of {window}",
                    "use more data or a smaller --block-size",
                )
    world = ctx.world if ctx is not None else 1
    rows = slice(ctx.rank * cfg.batch_size, (ctx.rank + 1) * cfg.batch_size) if ctx is not None else None
    global_cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * world)
    batches = batch_source(objective, global_cfg, data, model_config, rows)  # this rank's rows of the global batch

    model = build_model(model_config).to(device)
    if init_state is not None:
        model.load_state_dict(init_state)
        model.to(device)
        log(f"initialised from {cfg.init}")
    forward = model
    if ctx is not None:  # DDP wraps; FSDP shards the model in place
        forward = wrap_model(model, ctx, cfg.fsdp_mixed_precision)
        log(f"distributed: {ctx.world} ranks, {ctx.strategy}{f' (ZeRO-{ctx.zero})' if ctx.sharded else ''}, "
            f"{cfg.batch_size} sequences per rank")  # fmt: skip
    optimizers = make_optimizers(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, elapsed, best_val = 0, 0.0, math.inf
    if cfg.resume and sharded_dir.is_dir():
        load_sharded(model, optimizers, sharded_dir)
        if not load_rng(sharded_dir, ctx):
            log("random-number state not restored (another world size): dropout masks will differ")
        step, elapsed, best_val = state["step"], state["elapsed"], state["best_val_loss"]
        log(f"resuming {out} at step {step} from its sharded checkpoint (written by {state.get('world', '?')} ranks)")
    elif cfg.resume:
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
    metrics = MetricsLog(out / "metrics.jsonl", resume_step=step if cfg.resume else None) if main else None
    n_params = sum(p.numel() for p in model.parameters())  # DTensors count their global size
    layers = model_config.n_layer + (model_config.n_decoder_layer or 0)
    log(
        f"model: {cfg.init or cfg.preset or DEFAULT_PRESETS[family]} ({family}, objective {objective}), "
        f"{n_params:,} parameters ({n_params / 1e6:.2f}M), "
        f"{layers} layers, {model_config.n_embd} dims, context {block}; "
        f"device {device}, {str(dtype).replace('torch.', '')}{', compiled' if cfg.compile else ''}"
    )
    # the allocator's peak of the third step (the first creates the optimizer states, DDP rebuilds its
    # buckets in the second) next to `plan memory`'s: a check of the plan in every run (on CPU one
    # process only: DDP's buckets are not visible there)
    watch_peak = (device.type == "cuda" and (ctx is None or ctx.strategy == "ddp")) or (
        device.type == "cpu" and ctx is None
    )
    peak_window: PeakWindow | None = None
    flops_per_token: float | None = None
    peak_flops = accelerator_peak_flops(device, dtype) * (ctx.world if ctx is not None else 1)
    forward = torch.compile(forward) if cfg.compile else forward
    model.train()
    tokens_seen = state.get("tokens_seen", 0)
    skipped_steps = state.get("skipped_steps", 0)  # fp16 steps the loss scaler threw away
    result = TrainResult(out=out, step=step, best_val_loss=best_val)

    def save(reason: str) -> None:
        trainer_state = {
            "step": step,
            "elapsed": elapsed,
            "best_val_loss": best_val,
            "tokens_seen": tokens_seen,
            "skipped_steps": skipped_steps,
            "train_config": cfg.to_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "world": world,
        }
        # leave room for a prompt in a decoder's context; an encoder-decoder's output has its own
        defaults = GenerationConfig(max_new_tokens=min(128, block if family == "encoder-decoder" else block // 2))
        if ctx is None:
            tensors, groups = optimizer_tensors(optimizers)
            trainer_state["optimizer_param_groups"] = groups
            save_checkpoint(out, model, data.tokenizer, defaults, trainer_state, {**tensors, **rng_tensors()})
            shutil.rmtree(sharded_dir, ignore_errors=True)  # a stale one would win the next --resume
        else:  # every rank writes its shards; rank 0 the consolidated checkpoint
            staging = out.parent / f".{out.name}.sharded-{step}"
            save_sharded(model, optimizers, staging)
            save_rng(staging, ctx)
            full = full_model_state(model)
            if main:
                plain = build_model(model_config)
                plain.load_state_dict(full)
                save_checkpoint(out, plain, data.tokenizer, defaults, trainer_state)
                shutil.rmtree(sharded_dir, ignore_errors=True)
                os.replace(staging, sharded_dir)
            barrier(ctx)
        log(f"checkpoint: {out} at step {step} ({reason})")

    def budget_left() -> bool:
        return (cfg.max_steps is None or step < cfg.max_steps) and (cfg.max_time is None or elapsed < cfg.max_time)

    window_start, window_tokens = time.perf_counter(), 0
    with _StopRequest() as stop:
        try:
            while budget_left() and not stop.requested:
                t0 = time.perf_counter()
                if watch_peak and step == state.get("step", 0) + 2:  # the window: the whole third step
                    gc.collect()  # what earlier steps left to the garbage collector goes before the window
                    peak_window = PeakWindow(device, alive=_alive_bytes(model, optimizers))
                    peak_window.open()
                lr = learning_rate(cfg, step, elapsed)
                for optimizer in optimizers:
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                loss_sum, step_tokens = 0.0, 0
                for micro in range(cfg.grad_accum):
                    local = batches(False, step, micro)
                    normalizer, tokens = global_counts(local, ctx)
                    step_tokens += tokens
                    if flops_per_token is None:  # the model FLOPs of this batch's shapes, per token read
                        flops_per_token = sum(step_flops(model_config, *_batch_shape(local)).values()) / local.tokens
                    with autocast(device, dtype):
                        loss = batch_loss(forward, local.to(device), normalizer) / cfg.grad_accum
                    scaler.scale(loss).backward()
                    loss_sum += loss.item()
                loss_sum = all_reduce_mean(loss_sum, ctx)
                measure = None
                if ctx is not None and step == state.get("step", 0):  # every rank's real bytes, next to the plan
                    measure = functools.partial(_log_memory, model, optimizers, ctx, step + 1, n_params, log, metrics)
                if optimizer_step(model, optimizers, scaler, cfg.grad_clip, before_zero_grad=measure):
                    skipped_steps += 1
                    log(f"step {step + 1}: fp16 gradients overflowed; step skipped, loss scale {scaler.get_scale():g}")
                step += 1
                if peak_window is not None and step == state.get("step", 0) + 3:
                    planned = _planned_step_peak(model, cfg, local, device, dtype, ddp=ctx is not None)
                    _log_step_peak(planned, peak_window.close(), step, log, metrics)
                    peak_window = None
                elapsed += time.perf_counter() - t0
                window_tokens += step_tokens
                tokens_seen += step_tokens
                result.train_losses[step] = loss_sum
                if not math.isfinite(loss_sum) and not scaler.is_enabled():  # fp16: the scaler skips such steps
                    raise LlmlabError(f"loss became {loss_sum} at step {step}", "lower --lr or use --dtype fp32")

                if step % cfg.log_interval == 0 or not budget_left():
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    if metrics is not None:
                        metrics.write(
                            step=step,
                            train_loss=round(loss_sum, 5),
                            lr=lr,
                            tokens_per_s=round(tps, 1),
                            model_flops_per_s=round(tps * flops_per_token),
                            elapsed=round(elapsed, 2),
                            **({"skipped_steps": skipped_steps} if scaler.is_enabled() else {}),
                        )
                    if main:
                        throughput = _throughput_text(tps * flops_per_token, peak_flops)
                        progress.update(_progress_text(cfg, step, loss_sum, lr, tps, elapsed, throughput))

                if step % cfg.eval_interval == 0 or not budget_left():
                    t_eval = time.perf_counter()
                    val = evaluate_loss(forward, batches, cfg, device, dtype, ctx)
                    best_val = min(best_val, val)
                    result.best_val_loss = best_val
                    if metrics is not None:
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
    if metrics is not None:
        plot_loss(metrics.records(), out / "loss.png", title=f"{out.name}: {n_params / 1e6:.1f}M parameters")
    log(
        f"done: {step} steps, {tokens_seen:,} tokens in {format_duration(elapsed)}, "
        f"best validation loss {best_val:.4f}; loss curve {out / 'loss.png'}"
    )
    return result


def optimizer_step(
    model: torch.nn.Module,
    optimizers: list[torch.optim.Optimizer],
    scaler: torch.amp.GradScaler,
    grad_clip: float,
    before_zero_grad: Callable[[], None] | None = None,
) -> bool:
    """Unscale, clip, step every optimizer and update the loss scale; True when the scaler skipped the
    step (fp16 gradients with inf/NaN: the weights are left as they were and the scale is lowered)."""
    for optimizer in optimizers:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scale = scaler.get_scale() if scaler.is_enabled() else None
    for optimizer in optimizers:
        scaler.step(optimizer)
    if before_zero_grad is not None:
        before_zero_grad()
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    scaler.update()
    return scale is not None and scaler.get_scale() < scale


def _planned_step_peak(
    model, cfg: TrainConfig, batch: Batch, device: torch.device, dtype: torch.dtype, ddp: bool = False
):
    """`plan memory`'s peak for a step on this batch's shapes, where it models the run: CUDA, one
    process or DDP, AdamW, eager mode. None elsewhere."""
    from llmlab.plan.peak import ModelShape, training_step_peak

    if device.type not in ("cuda", "cpu") or cfg.optimizer != "adamw" or cfg.compile:
        return None
    rows, length, target = _batch_shape(batch)
    precision = "fp32" if dtype == torch.float32 else "autocast"
    shape = ModelShape.of(model)
    return training_step_peak(model.config, shape, rows, length, device.type, precision, cfg.grad_accum, target, ddp)


def _alive_bytes(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    """Weights, gradients and optimizer states: what a step starts from (the CPU window counts on it)."""
    tensors = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None)]
    tensors += [v for o in optimizers for state in o.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def _log_step_peak(planned, measured: int, step: int, log, metrics) -> None:
    """The allocator's peak over one steady-state step next to the prediction: the check of the plan."""
    if planned is None:
        return
    log(
        f"memory: peak of step {step} {measured / 1e9:.2f} GB allocated; plan memory predicted "
        f"{planned.peak / 1e9:.2f} GB (at the {planned.peak_phase}), measured/predicted {measured / planned.peak:.3f}"
    )
    if metrics is not None:
        metrics.write(step=step, peak_memory=measured, planned_peak_memory=planned.peak)


def _log_memory(model, optimizers, ctx: DistContext, step: int, n_params: int, log, metrics) -> None:
    """Each rank's real bytes of weights, gradients and optimizer states next to `plan memory`'s figure."""
    from llmlab.plan.memory import plan_memory

    actual = gather_objects(model_state_bytes(model, optimizers), ctx)
    strategy = "ddp" if ctx.strategy == "ddp" else f"zero{ctx.zero}"
    planned = plan_memory(float(n_params), "fp32", "adamw", False, ctx.world, strategy).training
    for rank, parts in enumerate(actual):
        log(f"memory rank {rank}: " + ", ".join(
            f"{name} {parts[name] / 1e6:.2f} MB (plan {planned[name] / 1e6:.2f})" for name in parts))  # fmt: skip
    if strategy == "zero2":
        log("memory: under ZeRO-2 the plan counts the weights gathered between forward and backward; "
            "measured at the optimizer step they are sharded")  # fmt: skip
    if metrics is not None:
        metrics.write(
            step=step, memory=actual, planned={k: planned[k] for k in actual[0]}, strategy=strategy, world=ctx.world
        )


def _batch_shape(batch: Batch) -> tuple[int, int, int | None]:
    """(rows, input length, target length or None): what `plan.flops.step_flops` takes."""
    rows, length = batch.inputs.shape
    return rows, length, batch.decoder_inputs.shape[1] if batch.decoder_inputs is not None else None


def _throughput_text(flops_per_s: float, peak: float | None) -> str:
    """Model FLOP/s (6 x matmul weights x tokens + attention, plan/flops.py) and, where the accelerator's
    peak is known, the model FLOPs utilisation."""
    text = f"{flops_per_s / 1e12:.2f} TFLOP/s" if flops_per_s >= 1e11 else f"{flops_per_s / 1e9:.1f} GFLOP/s"
    return text + (f" (MFU {flops_per_s / peak:.0%})" if peak else "")


def _progress_text(
    cfg: TrainConfig, step: int, loss: float, lr: float, tps: float, elapsed: float, throughput: str = ""
) -> str:
    per_step = elapsed / max(step, 1)
    remaining = []
    if cfg.max_steps is not None:
        remaining.append((cfg.max_steps - step) * per_step)
    if cfg.max_time is not None:
        remaining.append(cfg.max_time - elapsed)
    total = f"/{cfg.max_steps}" if cfg.max_steps is not None else ""
    return (
        f"step {step}{total} | loss {loss:.4f} | lr {lr:.2e} | {tps:,.0f} tok/s | "
        + (f"{throughput} | " if throughput else "")
        + f"{format_duration(elapsed)} elapsed | ETA {format_duration(min(remaining))}"
    )
