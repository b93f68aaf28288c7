"""Pre-training, a recipe on the training core: the language-model loss of the family's objective on
batches from a corpus. Every family: decoder (clm), encoder (mlm), encoder-decoder (span, seq2seq).

    llmlab pretrain --data corpus.txt --preset llama-micro --max-time 180
    llmlab.train(llmlab.TrainConfig(out="runs/demo", max_steps=300))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmlab.checkpoint.folder import load_tokenizer, read_model_config, read_quantization
from llmlab.checkpoint.lineage import DataSource, Stage
from llmlab.config import ModelConfig
from llmlab.data.objectives import check_objective
from llmlab.data.pairs import PairData
from llmlab.data.tokens import TokenData
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.load import load_checkpoint
from llmlab.model import build_model
from llmlab.plan.flops import step_flops
from llmlab.plan.peak import ModelShape, training_step_peak
from llmlab.pretrain.config import MODEL_OVERRIDES, PretrainConfig
from llmlab.pretrain.data import batch_source, load_training_data, require_windows
from llmlab.prune.keep import keeper_for_run
from llmlab.tokenizer import TextTokenizer
from llmlab.training.checkpointing import Checkpointer
from llmlab.training.loop import Job, TrainResult
from llmlab.training.losses import lm_loss
from llmlab.training.run import run
from llmlab.training.session import Session


def train(
    cfg: PretrainConfig,
    on_step: Callable[[int, float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Pre-train a model of any family as `cfg` says; returns the losses seen and where the checkpoint is.

    `on_step(step, loss)` runs after every optimizer step; raising KeyboardInterrupt there stops the
    run cleanly with a checkpoint, just like Ctrl-C.
    """
    return run(cfg, prepare_job, on_step, log)


def prepare_job(cfg: PretrainConfig, session: Session, saved: dict[str, Any] | None,
                tokenizer: TextTokenizer | None = None) -> Job:  # fmt: skip
    """Data, model and batches for the trainer, in the order that makes runs reproducible: seed, data
    (rank 0 first: it trains the tokenizer and writes the token cache), then the model's initialisation.
    `tokenizer`: read the data with this one instead of training one (a distillation's teacher's)."""
    family = cfg.resolved_family()
    objective = check_objective(family, cfg.objective)
    out = Path(cfg.out)
    init_config, init_state, init_tokenizer = _initial_weights(cfg, family) if saved is None else (None, None, None)
    tokenizer = init_tokenizer or tokenizer
    tokenizer = load_tokenizer(out) if saved is not None else tokenizer
    torch.manual_seed(cfg.seed)
    with session.rank0_first():
        data = load_training_data(cfg, objective, family, tokenizer, session.log)
    model_config = init_config or build_model_config(cfg, data.tokenizer)
    if saved is not None:
        model_config = _resumed_config(out, model_config, saved)
    require_windows(objective, cfg, data, model_config.block_size)
    global_cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size * session.world)
    batches = batch_source(objective, global_cfg, data, model_config, session.rows(cfg.batch_size))
    model = _build(model_config, init_state, cfg, session)
    keeper = keeper_for_run(cfg.keep_sparsity, model, session, resuming=saved is not None)
    forward = session.wrap(model, cfg.fsdp_mixed_precision, f"{cfg.batch_size} sequences per rank")
    block = model_config.block_size
    # leave room for a prompt in a decoder's context; an encoder-decoder's output has its own
    generation = GenerationConfig(max_new_tokens=min(128, block if family_spec(family).seq2seq else block // 2))
    ddp = session.ctx is not None
    return Job(
        model=model, forward=forward, batches=batches, loss=lm_loss,
        checkpointer=Checkpointer(out, data.tokenizer, generation, session.ctx, session.log),
        options=cfg.to_dict(),
        flops_per_token=functools.partial(_flops_per_token, model_config),
        planned_peak=functools.partial(_planned_step_peak, model, cfg, session.device, session.dtype, ddp),
        description=_describe(cfg, model, family, objective, session),
        on_start=keeper.record if keeper else None,
        after_update=keeper.restore if keeper else None,
        stage=_stage(cfg, objective, data),
    )  # fmt: skip


def _stage(cfg: PretrainConfig, objective: str, data: TokenData | PairData) -> Stage:
    """This run for the model card: its objective, corpus and the options that shaped it."""
    if isinstance(data, PairData):
        pairs = len(data.train_sources) + len(data.val_sources)
        tokens = sum(
            len(ids) for ids in (*data.train_sources, *data.train_targets, *data.val_sources, *data.val_targets)
        )
        source = DataSource(str(cfg.data), pairs, tokens, data.corpus_hash)
    else:
        source = DataSource(data.source, data.documents, len(data.train) + len(data.val), data.corpus_hash)
    settings = {
        "preset": cfg.preset,
        "optimizer": cfg.optimizer,
        "lr": cfg.lr,
        "batch size": cfg.batch_size,
        "context": cfg.block_size,
        "curated": cfg.curate,
        "kept sparsity": cfg.keep_sparsity or None,
    }
    return Stage(kind="pre-training", method=objective, base=cfg.init, data=[source], settings=settings)  # fmt: skip


def build_model_config(cfg: PretrainConfig, tokenizer: TextTokenizer) -> ModelConfig:
    """The preset (or the family's default) with the options given, at the tokenizer's vocabulary."""
    spec = family_spec(cfg.resolved_family())
    overrides = {name: getattr(cfg, name) for name in MODEL_OVERRIDES}
    if spec.seq2seq:
        overrides["decoder_start_token_id"] = tokenizer.require("pad", "as the decoder's start token")
        if cfg.n_decoder_layer is None:  # --n-layer alone sizes both stacks, as T5's num_decoder_layers defaults
            overrides["n_decoder_layer"] = cfg.n_layer
    elif cfg.n_decoder_layer is not None:
        raise LlmlabError(
            "--n-decoder-layer is for encoder-decoder models", "leave it out or use --family encoder-decoder"
        )
    return ModelConfig.from_preset(cfg.preset or spec.default_preset, vocab_size=tokenizer.vocab_size, **overrides)


def _initial_weights(cfg: PretrainConfig, family: str) -> tuple[ModelConfig | None, dict | None, TextTokenizer | None]:
    """--init: an llmlab checkpoint or a Hugging Face folder / hub id to start from (config, weights, tokenizer)."""
    if cfg.init is None:
        return None, None, None
    init = load_checkpoint(cfg.init)
    if read_quantization(init.path):
        raise LlmlabError(f"--init {cfg.init} is quantized", "start from the full-precision checkpoint")
    if init.model.config.family != family:
        raise LlmlabError(
            f"--init {cfg.init} holds a model of family {init.model.config.family}, not {family}",
            f"pass --family {init.model.config.family}",
        )
    return init.model.config, init.model.state_dict(), init.tokenizer


def _resumed_config(out: Path, model_config: ModelConfig, saved: dict[str, Any]) -> ModelConfig:
    """--resume keeps the saved architecture; options that would change it are refused."""
    stored = read_model_config(out)
    wanted = model_config.to_dict()
    changed = [f"{k}: {v} -> {wanted[k]}" for k, v in stored.to_dict().items() if wanted[k] != v]
    if changed and saved.get("train_config", {}).get("init") is None:
        raise LlmlabError(
            f"--resume with a changed model config ({'; '.join(changed)})",
            "resume with the options of the original run, or train a new --out",
        )
    return stored


def _build(config: ModelConfig, init_state: dict | None, cfg: PretrainConfig, session: Session):
    """The model on the device, initialised from --init's weights if given."""
    model = build_model(config).to(session.device)
    if init_state is not None:
        model.load_state_dict(init_state)
        model.to(session.device)
        session.log(f"initialised from {cfg.init}")
    return model


def _describe(cfg: PretrainConfig, model, family: str, objective: str, session: Session) -> str:
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())  # DTensors count their global size
    layers = c.n_layer + (c.n_decoder_layer or 0)
    return (
        f"model: {cfg.init or cfg.preset or family_spec(family).default_preset} ({family}, objective {objective}), "
        f"{n_params:,} parameters ({n_params / 1e6:.2f}M), {layers} layers, {c.n_embd} dims, "
        f"context {c.block_size}; device {session.device}, {str(session.dtype).replace('torch.', '')}"
        f"{', compiled' if cfg.compile else ''}"
    )


def _flops_per_token(config: ModelConfig, batch) -> float:
    """Model FLOPs of a step on this batch's shapes, per token read (plan/flops.py)."""
    return sum(step_flops(config, *batch.dims).values()) / batch.tokens


def _planned_step_peak(model, cfg: PretrainConfig, device: torch.device, dtype: torch.dtype, ddp: bool, batch):
    """`plan memory`'s peak for a step on this batch's shapes, where it models the run: CUDA or CPU, one
    process or DDP, AdamW, eager mode. None elsewhere."""
    if device.type not in ("cuda", "cpu") or cfg.optimizer != "adamw" or cfg.compile:
        return None
    rows, length, target = batch.dims
    precision = "fp32" if dtype == torch.float32 else "autocast"
    shape = ModelShape.of(model)
    return training_step_peak(model.config, shape, rows, length, device.type, precision, cfg.grad_accum, target, ddp)
