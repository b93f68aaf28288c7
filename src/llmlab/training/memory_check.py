"""Every run checks the plan: the allocator's peak of one steady step next to `plan memory`'s
prediction, and (distributed) each rank's real bytes of model states next to the plan's.

The step measured is the third after a (re)start: the first creates the optimizer states and DDP
rebuilds its buckets in the second. On CUDA the allocator's counter makes the check free, so it is
on by default; on CPU it needs the profiler (slower, and noisy on stderr), so it is opt-in
(`--check-memory-plan`) and the profiler's stderr is silenced for that one step.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from llmlab.plan.measure import PeakWindow, silent_stderr
from llmlab.progress import MetricsLog
from llmlab.training.distributed import DistContext, gather_objects, model_state_bytes

MEASURED_STEP = 3  # counted from the run's (re)start


def alive_bytes(model: nn.Module, optimizers: list[torch.optim.Optimizer]) -> int:
    """Weights, gradients and optimizer states: what a step starts from (the CPU window counts on it)."""
    tensors = [*model.parameters(), *(p.grad for p in model.parameters() if p.grad is not None)]
    tensors += [v for o in optimizers for state in o.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


class StepPeakCheck:
    """Measures one step's allocator peak and logs it next to `plan(batch)` (a PeakPlan or None)."""

    def __init__(
        self,
        device: torch.device,
        start_step: int,
        plan: Callable[[Any], Any],
        log: Callable[[str], None],
        metrics: MetricsLog | None,
    ) -> None:
        self.device, self.step, self.plan, self.log, self.metrics = (
            device,
            start_step + MEASURED_STEP,
            plan,
            log,
            metrics,
        )

    @contextlib.contextmanager
    def around(self, step: int, model: nn.Module, optimizers: list) -> Iterator[dict[str, Any]]:
        """Wrap the work of optimizer step number `step` (1-based); put its last batch in the yielded dict."""
        record: dict[str, Any] = {}
        if step != self.step:
            yield record
            return
        gc.collect()  # what earlier steps left to the garbage collector goes before the window
        window = PeakWindow(self.device, alive=alive_bytes(model, optimizers))
        quiet = silent_stderr() if self.device.type == "cpu" else contextlib.nullcontext()
        with quiet:
            window.open()
            try:
                yield record
            finally:
                measured = window.close()
        self._report(self.plan(record["batch"]), measured)

    def _report(self, planned, measured: int) -> None:
        if planned is None:
            return
        self.log(
            f"memory: peak of step {self.step} {measured / 1e9:.2f} GB allocated; plan memory predicted "
            f"{planned.peak / 1e9:.2f} GB (at the {planned.peak_phase}), measured/predicted "
            f"{measured / planned.peak:.3f}"
        )
        if self.metrics is not None:
            self.metrics.write(step=self.step, peak_memory=measured, planned_peak_memory=planned.peak)


def log_rank_memory(
    model: nn.Module,
    optimizers: list[torch.optim.Optimizer],
    ctx: DistContext,
    step: int,
    log: Callable[[str], None],
    metrics: MetricsLog | None,
) -> None:
    """Each rank's real bytes of weights, gradients and optimizer states next to `plan memory`'s figure."""
    from llmlab.plan.memory import plan_memory

    n_params = sum(p.numel() for p in model.parameters())  # DTensors count their global size
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # frozen ones (LoRA) have neither
    actual = gather_objects(model_state_bytes(model, optimizers), ctx)
    strategy = "ddp" if ctx.strategy == "ddp" else f"zero{ctx.zero}"
    planned = plan_memory(float(n_params), "fp32", "adamw", False, ctx.world, strategy).training
    if trainable < n_params:  # gradients and optimizer states exist for the trainable parameters only
        states = plan_memory(float(trainable), "fp32", "adamw", False, ctx.world, strategy).training
        planned = {**planned, "gradients": states["gradients"], "optimizer states": states["optimizer states"]}
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
