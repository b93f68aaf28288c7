"""The training loop every recipe runs: budgets (steps, seconds), Ctrl-C, progress, metrics.jsonl,
periodic validation and checkpoints, the loss plot. A recipe hands it a `Job` (model, batches, loss,
checkpointer); `Trainer.fit` delegates each step to `train_step` and each save to the checkpointer."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from llmlab.checkpoint.lineage import Stage
from llmlab.errors import LlmlabError
from llmlab.plan.compute import accelerator_peak_flops
from llmlab.plot import plot_loss
from llmlab.progress import MetricsLog, format_duration
from llmlab.training.card import StageRecorder
from llmlab.training.checkpointing import Checkpointer
from llmlab.training.config import TrainerConfig
from llmlab.training.memory_check import StepPeakCheck, log_rank_memory
from llmlab.training.optim import make_optimizers, set_learning_rate
from llmlab.training.report import progress_text, throughput_text
from llmlab.training.schedule import learning_rate
from llmlab.training.session import Session
from llmlab.training.state import TrainerState
from llmlab.training.step import BatchSource, LossFn, StepParts, StepResult, evaluate_loss, train_step
from llmlab.training.stop import AbortRequested, StopRequest
from llmlab.training.trackers import close_trackers, open_trackers


@dataclass
class TrainResult:
    out: Path
    step: int
    train_losses: dict[int, float] = field(default_factory=dict)  # step -> loss of that step
    best_val_loss: float = math.inf
    interrupted: bool = False


@dataclass
class Job:
    """What a recipe hands the trainer."""

    model: nn.Module  # the model trained (FSDP shards it in place)
    forward: nn.Module  # what a step calls: the model, or its DDP wrapper
    batches: BatchSource  # (validation?, step, micro) -> batch, a pure function: resume is exact
    loss: LossFn
    checkpointer: Checkpointer
    options: dict[str, Any]  # the recipe's config, saved in trainer_state.json for --resume
    flops_per_token: Callable[[Any], float] | None = None  # model FLOPs per token read, for a batch
    planned_peak: Callable[[Any], Any] | None = None  # `plan memory`'s peak of a step on a batch, or None
    description: str = ""  # one line about the model and the run, logged once training is set up
    saves: nn.Module | None = None  # what the checkpointer writes when not `model` (a policy without its value head)
    kept: KeptState | None = None  # more state an exact resume needs (an online run's rollout), in one process
    on_start: Callable[[], None] | None = None  # once before the first step, after a resume restored the weights
    after_update: Callable[[], None] | None = None  # after every optimizer step (a pruned model's zeros put back)
    stage: Stage | None = None  # what this run is, for the folder's lineage and model card (training/card.py)
    evaluate_first: bool = False  # validate before the first step of a fresh run: the baseline (reward at KL 0)


class KeptState(Protocol):
    """Tensors a recipe keeps beside the optimizer state, so that a resumed run continues exactly."""

    def tensors(self) -> dict[str, torch.Tensor]: ...

    def load(self, tensors: dict[str, torch.Tensor]) -> None: ...


class Trainer:
    """Owns the optimizers, the loss scaler and the run's state; `fit` trains within the budgets."""

    def __init__(self, cfg: TrainerConfig, session: Session, job: Job, saved: dict[str, Any] | None = None) -> None:
        self.cfg, self.session, self.job = cfg, session, job
        optimizers = make_optimizers(job.model, cfg, session.device)
        scaler = torch.amp.GradScaler(session.device.type, enabled=session.dtype == torch.float16)
        self.parts = StepParts(job.forward, job.model, optimizers, scaler, job.loss, session.device, session.dtype,
                               session.ctx)  # fmt: skip
        self.state = TrainerState()
        if saved is not None:
            self.state = job.checkpointer.restore(job.saves or job.model, optimizers, scaler, saved, session.device,
                                                  job.kept)  # fmt: skip
        self.start_step = self.state.step
        out = job.checkpointer.out
        out.mkdir(parents=True, exist_ok=True)
        resume_step = self.state.step if saved is not None else None
        self.metrics = MetricsLog(out / "metrics.jsonl", resume_step) if session.main else None
        self.card = StageRecorder(job.stage, out, saved is not None) if session.main and job.stage else None
        self.trackers = open_trackers(cfg.report_to, out, job.options, resume_step) if self.metrics else []
        for tracker in self.trackers:
            self.metrics.listeners.append(tracker.log)
        self.flops_per_token: float | None = None
        self.peak_flops = accelerator_peak_flops(session.device, session.dtype) * session.world
        self.peak_check = self._peak_check()
        self.lr = learning_rate(cfg, self.state.step, self.state.elapsed)
        self.stop = StopRequest()  # replaced by the one `fit` installs
        self._window = (time.perf_counter(), 0)  # (start, tokens) of the throughput since the last progress line
        if cfg.compile:
            self.parts.forward = torch.compile(self.parts.forward)

    def _peak_check(self) -> StepPeakCheck | None:
        """On where it is free (CUDA, one process or DDP) or asked for (CPU, one process)."""
        device, ctx = self.session.device, self.session.ctx
        on_cuda = device.type == "cuda" and (ctx is None or ctx.strategy == "ddp")
        on_cpu = device.type == "cpu" and ctx is None and self.cfg.check_memory_plan
        if self.cfg.check_memory_plan and not on_cpu and not on_cuda:
            self.session.log("memory: --check-memory-plan measures one process on CPU or CUDA (DDP on CUDA); skipped")
        if self.job.planned_peak is None or not (on_cuda or on_cpu):
            return None
        return StepPeakCheck(device, self.start_step, self.job.planned_peak, self.session.log, self.metrics)

    @property
    def model(self) -> nn.Module:
        return self.job.model

    def budget_left(self) -> bool:
        cfg, state = self.cfg, self.state
        return (cfg.max_steps is None or state.step < cfg.max_steps) and (
            cfg.max_time is None or state.elapsed < cfg.max_time
        )

    def fit(self, on_step: Callable[[int, float], None] | None = None) -> TrainResult:
        """Train until a budget runs out or Ctrl-C (which saves a resumable checkpoint first)."""
        self.model.train()
        result = TrainResult(
            out=self.job.checkpointer.out, step=self.state.step, best_val_loss=self.state.best_val_loss
        )
        self._window = (time.perf_counter(), 0)
        status = "FAILED"  # until the loop ends the way it should
        with StopRequest() as stop, contextlib.ExitStack() as closing:
            closing.callback(lambda: close_trackers(self.trackers, status))
            self.stop = stop
            if self.job.on_start is not None:
                self.job.on_start()
            if self.job.evaluate_first and self.state.step == 0:
                self.evaluate()
            try:
                while self._continue():
                    step = self.step()
                    result.train_losses[self.state.step] = step.loss
                    self._agree()
                    self._after_step(step, result)
                    if on_step is not None:
                        on_step(self.state.step, step.loss)
            except AbortRequested:  # the second Ctrl-C: no save of possibly half-updated weights
                raise
            except KeyboardInterrupt:  # the first Ctrl-C inside a step, or on_step asking to stop
                stop.requested = True
            result.step, result.interrupted = self.state.step, stop.requested
            self.save("interrupted; continue with --resume" if stop.requested else "done")
            status = "KILLED" if stop.requested else "FINISHED"
        self._finish()
        return result

    def _continue(self) -> bool:
        """Budget left and no stop asked for, as every rank agrees."""
        self._agree()
        return self.budget_left() and not self.stop.requested

    def _agree(self) -> None:
        """Distributed: every rank takes the slowest rank's clock and anyone's stop request, so all
        ranks see the same learning rate and budget and stop (and save) at the same step."""
        ctx = self.session.ctx
        if ctx is not None:
            values = [self.state.elapsed, float(self.stop.requested)]
            shared = torch.tensor(values, dtype=torch.float64, device=ctx.device)
            torch.distributed.all_reduce(shared, op=torch.distributed.ReduceOp.MAX)
            self.state.elapsed, self.stop.requested = float(shared[0]), bool(shared[1])

    def step(self) -> StepResult:
        """One optimizer step at the scheduled learning rate, with the checks of the plan around it."""
        t0, state, cfg = time.perf_counter(), self.state, self.cfg
        if self.flops_per_token is None and self.job.flops_per_token is not None:  # batches are pure: draw it again
            self.flops_per_token = self.job.flops_per_token(self.job.batches(False, state.step, 0))
        check = self.peak_check.around if self.peak_check else _no_check
        with check(state.step + 1, self.model, self.parts.optimizers) as record:
            self.lr = learning_rate(cfg, state.step, state.elapsed)
            set_learning_rate(self.parts.optimizers, self.lr)
            draw = functools.partial(self.job.batches, False, state.step)
            result = train_step(self.parts, draw, cfg.grad_accum, cfg.grad_clip, self._rank_memory())
            if self.job.after_update is not None:
                self.job.after_update()
            if result.skipped:
                state.skipped_steps += 1
                scale = self.parts.scaler.get_scale()
                self.session.log(
                    f"step {state.step + 1}: fp16 gradients overflowed; step skipped, loss scale {scale:g}"
                )
            state.step += 1
            record["batch"] = result.last
        state.elapsed += time.perf_counter() - t0
        state.tokens_seen += result.tokens
        self._window = (self._window[0], self._window[1] + result.tokens)
        if not math.isfinite(result.loss) and not self.parts.scaler.is_enabled():  # fp16: the scaler skips them
            raise LlmlabError(f"loss became {result.loss} at step {state.step}", "lower --lr or use --dtype fp32")
        return result

    def _rank_memory(self) -> Callable[[], None] | None:
        """Distributed runs: each rank's real model-state bytes at the first step, next to the plan."""
        ctx = self.session.ctx
        if ctx is None or self.state.step != self.start_step:
            return None
        return functools.partial(log_rank_memory, self.model, self.parts.optimizers, ctx, self.state.step + 1,
                                 self.session.log, self.metrics)  # fmt: skip

    def _after_step(self, done: StepResult, result: TrainResult) -> None:
        step, cfg = self.state.step, self.cfg
        if step % cfg.log_interval == 0 or not self.budget_left():
            self._log_progress(done.loss, done.metrics)
        if step % cfg.eval_interval == 0 or not self.budget_left():
            result.best_val_loss = self.evaluate()
        if step % cfg.checkpoint_interval == 0 and self.budget_left():
            self.save(f"every {cfg.checkpoint_interval} steps")

    def _log_progress(self, loss: float, extra: dict[str, float]) -> None:
        now, (start, tokens) = time.perf_counter(), self._window
        tps = tokens / max(now - start, 1e-9)
        self._window = (now, 0)
        flops = tps * (self.flops_per_token or 0.0)
        state = self.state
        if self.metrics is not None:
            self.metrics.write(
                step=state.step, train_loss=round(loss, 5), lr=self.lr, tokens_per_s=round(tps, 1),
                elapsed=round(state.elapsed, 2),
                **({"model_flops_per_s": round(flops)} if self.flops_per_token else {}),
                **({"skipped_steps": state.skipped_steps} if self.parts.scaler.is_enabled() else {}),
                **{f"train_{name}": round(value, 5) for name, value in extra.items()},
            )  # fmt: skip
        if self.session.main:
            throughput = throughput_text(flops, self.peak_flops) if self.flops_per_token else ""
            self.session.progress.update(progress_text(self.cfg, state.step, loss, self.lr, tps, state.elapsed,
                                                       throughput))  # fmt: skip

    def evaluate(self) -> float:
        """Validation loss now; its time counts against --max-time but not against tokens/s."""
        t0, state = time.perf_counter(), self.state
        val, extra = evaluate_loss(self.parts, self.job.batches, self.cfg.eval_iters)
        state.best_val_loss = min(state.best_val_loss, val)
        extra = {f"val_{name}": round(value, 5) for name, value in extra.items()}
        if self.metrics is not None:
            self.metrics.write(step=state.step, val_loss=round(val, 5), elapsed=round(state.elapsed, 2), **extra)
        shown = "".join(f", {name} {value:.4f}" for name, value in extra.items())
        self.session.log(f"step {state.step}: validation loss {val:.4f} (best {state.best_val_loss:.4f}){shown}")
        spent = time.perf_counter() - t0
        state.elapsed += spent
        self._window = (self._window[0] + spent, self._window[1])
        self._agree()
        return state.best_val_loss

    def save(self, reason: str) -> None:
        parts, session = self.parts, self.session
        trainer_state = {
            **self.state.to_dict(),
            "train_config": self.job.options,
            "scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else None,
            "world": session.world,
        }
        job = self.job
        kept = job.kept.tensors() if job.kept is not None else None
        job.checkpointer.save(job.saves or self.model, parts.optimizers, trainer_state, reason, kept)
        if self.card is not None:
            self._record_card(job)

    def _record_card(self, job: Job) -> None:
        """The folder's lineage and model card: a failure to write them is a warning, never the run's end."""
        if self.flops_per_token is None and job.flops_per_token is not None:  # a resumed run that took no step
            self.flops_per_token = job.flops_per_token(job.batches(False, self.state.step, 0))
        try:
            self.card.record(self.state, job.saves or self.model, self.flops_per_token)
        except (OSError, ValueError) as exc:
            self.session.log(f"warning: model card not updated ({exc})")

    def _finish(self) -> None:
        state, out = self.state, self.job.checkpointer.out
        n_params = sum(p.numel() for p in self.model.parameters())
        if self.metrics is not None:
            plot_loss(self.metrics.records(), out / "loss.png", title=f"{out.name}: {n_params / 1e6:.1f}M parameters")
        self.session.log(
            f"done: {state.step} steps, {state.tokens_seen:,} tokens in {format_duration(state.elapsed)}, "
            f"best validation loss {state.best_val_loss:.4f}; loss curve {out / 'loss.png'}"
        )


def _no_check(step: int, model: nn.Module, optimizers: list) -> contextlib.AbstractContextManager[dict[str, Any]]:
    return contextlib.nullcontext({})
