"""LoRA fine-tuning: llmlab's adapters against PEFT on transformers' LlamaForCausalLM, same model and batch.

One base model (preset llama-mini at an 8,192-token vocabulary, 16.1M parameters), one batch shape (8 x 256
random tokens), one LoRA setting (r 8, alpha 16, no dropout, every linear layer in the blocks), one
optimizer (torch AdamW, lr 1e-4, over the trainable parameters only), one loss (cross-entropy on the
logits, computed by this script for both). Side A: the llmlab model with `add_lora`. Side B:
`to_transformers` of the same base, wrapped by `peft.get_peft_model` (targets q/k/v/o/gate/up/down_proj).
A third side, llmlab full fine-tuning of the same base, shows what LoRA saves.

Per precision (fp32, then bf16 autocast where the CPU computes bf16): median seconds per step (forward,
backward, AdamW step) over interleaved steps after a warm-up (each side goes first in turn: this VM
drifts); then the allocator's peak of one steady step (the profiler's allocation events,
`llmlab.plan.measure.PeakWindow`, as `--check-memory-plan` measures it) and the bytes autograd saves for
the backward; then gradient and AdamW-state bytes. Last, the operators whose self CPU time differs most
between llmlab and PEFT (the least of 3 profiled steps per side and operator). ~2 minutes when the
machine is otherwise idle.

    .venv/bin/python bench/lora_vs_peft.py [--steps 10] [--warmup 3] [--no-profile]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.config import ModelConfig  # noqa: E402
from llmlab.device import resolve_dtype  # noqa: E402
from llmlab.hf.exporter import to_transformers  # noqa: E402
from llmlab.model import DecoderLM  # noqa: E402
from llmlab.model.lora import LoraSpec, add_lora  # noqa: E402
from llmlab.plan.measure import PeakWindow, silent_stderr  # noqa: E402
from llmlab.training.memory_check import alive_bytes  # noqa: E402

PRESET, VOCAB, BATCH, BLOCK = "llama-mini", 8192, 8, 256
R, ALPHA, LR = 8, 16.0, 1e-4
PEFT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MB = 1e6
PROFILED = 3  # profiled steps per side and precision


def base_model() -> DecoderLM:
    torch.manual_seed(0)
    return DecoderLM(ModelConfig.from_preset(PRESET, vocab_size=VOCAB, block_size=BLOCK)).train()


class Side:
    """One contestant: a model, its forward to logits, AdamW over its trainable parameters, its records."""

    def __init__(self, name: str, model: nn.Module, logits: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.name, self.model, self.logits = name, model, logits
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=LR)
        self.times: dict[str, list[float]] = {}
        self.peak: dict[str, int] = {}
        self.grad_bytes = self.state_bytes = 0
        self.first_loss: float | None = None

    def step(self, x: torch.Tensor, y: torch.Tensor, bf16: bool, record: str | None = None) -> None:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(self.logits(x).float().flatten(0, 1), y.flatten())
        loss.backward()
        self.grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in self.trainable if p.grad is not None)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - start
        if self.first_loss is None:
            self.first_loss = loss.item()
        if record is not None:
            self.times.setdefault(record, []).append(elapsed)
        self.state_bytes = sum(v.numel() * v.element_size() for s in self.optimizer.state.values()
                               for v in s.values() if torch.is_tensor(v))  # fmt: skip

    def measure_peak(self, x: torch.Tensor, y: torch.Tensor, bf16: bool, label: str) -> None:
        """The allocator's peak over one steady step: what is alive at its start plus the highest rise."""
        gc.collect()
        window = PeakWindow(torch.device("cpu"), alive=alive_bytes(self.model, [self.optimizer]))
        with silent_stderr():
            window.open()
            try:
                self.step(x, y, bf16)
            finally:
                self.peak[label] = window.close()

    def median(self, label: str) -> float:
        return statistics.median(self.times[label])


def lora_pair() -> tuple[nn.Module, nn.Module]:
    """llmlab's LoRA model and PEFT's on the exported base, from the same weights."""
    import peft

    ours = base_model()
    hf = to_transformers(ours).train()  # before the adapters: the plain base
    add_lora(ours, LoraSpec(r=R, alpha=ALPHA, dropout=0.0, targets=("all-linear",)))
    config = peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=PEFT_TARGETS, bias="none",
                             task_type="CAUSAL_LM")  # fmt: skip
    return ours, peft.get_peft_model(hf, config).train()


def make_sides(compiled: bool) -> list[Side]:
    """llmlab LoRA, PEFT LoRA, llmlab full fine-tuning: all from the same weights; with `compiled`, both LoRA
    models again under `torch.compile` (default inductor settings, as `--compile` and TRL's `torch_compile`)."""
    ours, theirs = lora_pair()
    full = base_model()
    sides = [Side("llmlab LoRA", ours, lambda x: ours(x)),
             Side("PEFT LoRA", theirs, lambda x: theirs(input_ids=x).logits),
             Side("llmlab full fine-tuning", full, lambda x: full(x))]  # fmt: skip
    if compiled:
        fast_ours, fast_theirs = (torch.compile(m) for m in lora_pair())
        sides += [Side("llmlab LoRA compiled", fast_ours, lambda x: fast_ours(x)),
                  Side("PEFT LoRA compiled", fast_theirs, lambda x: fast_theirs(input_ids=x).logits)]  # fmt: skip
    return sides


def saved_bytes(side: Side, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> int:
    """Bytes of the tensors autograd keeps for the backward (distinct storages, parameters left out)."""
    params = {p.untyped_storage().data_ptr() for p in side.model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return t.detach()  # the tensor itself would tie a saved output to its own node: a leak

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(side.logits(x).float().flatten(0, 1), y.flatten())
    del loss  # frees the graph without a backward: the adapters are left as they were
    return sum(storages.values())


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, VOCAB, (BATCH, BLOCK + 1), generator=generator) for _ in range(count)]
    return [(t[:, :-1].contiguous(), t[:, 1:].contiguous()) for t in ids]


def op_times(side: Side, x: torch.Tensor, y: torch.Tensor, bf16: bool) -> dict[str, tuple[float, int]]:
    """Self CPU milliseconds and calls per operator over one profiled step."""
    from torch.profiler import ProfilerActivity, profile

    with silent_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        side.step(x, y, bf16)
    return {e.key: (e.self_cpu_time_total / 1e3, e.count) for e in prof.key_averages()}


def fastest(runs: list[dict[str, tuple[float, int]]]) -> dict[str, tuple[float, int]]:
    """Per operator, its least time over the runs: this shared VM's stalls land on one run's operators."""
    return {key: min((run[key] for run in runs if key in run), key=lambda v: v[0]) for key in set().union(*runs)}


def print_profile(ours: Side, theirs: Side, x: torch.Tensor, y: torch.Tensor, bf16: bool, label: str) -> None:
    runs: dict[str, list[dict[str, tuple[float, int]]]] = {ours.name: [], theirs.name: []}
    for i in range(PROFILED):
        for side in (ours, theirs) if i % 2 == 0 else (theirs, ours):
            runs[side.name].append(op_times(side, x, y, bf16))
    a, b = (fastest(runs[side.name]) for side in (ours, theirs))
    print(
        f"\n{label}: self CPU ms (calls) per operator, each the least of {PROFILED} profiled steps per side; the "
        "largest differences\n"
    )
    print("| operator | llmlab ms (calls) | PEFT ms (calls) | PEFT - llmlab ms |")
    print("| --- | --- | --- | --- |")
    zero = (0.0, 0)
    keys = sorted(set(a) | set(b), key=lambda k: -abs(b.get(k, zero)[0] - a.get(k, zero)[0]))
    for key in keys[:12]:
        (ta, na), (tb, nb) = a.get(key, zero), b.get(key, zero)
        print(f"| `{key}` | {ta:.1f} ({na}) | {tb:.1f} ({nb}) | {tb - ta:+.1f} |")
    ta, tb = sum(t for t, _ in a.values()), sum(t for t, _ in b.values())
    na, nb = sum(n for _, n in a.values()), sum(n for _, n in b.values())
    print(f"| all operators | {ta:.1f} ({na}) | {tb:.1f} ({nb}) | {tb - ta:+.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per side and precision")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side and precision first")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-operator profile")
    parser.add_argument("--compile", action="store_true", help="also both LoRA models under torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(describe())
    sides = make_sides(args.compile)
    ours, theirs, full = sides[:3]
    counts = {s.name: (sum(p.numel() for p in s.trainable), sum(p.numel() for p in s.model.parameters()))
              for s in sides}  # fmt: skip
    data = batches(args.warmup + args.steps)
    precisions = {"fp32": False}
    if resolve_dtype("auto", torch.device("cpu")) == torch.bfloat16:
        precisions["bf16 autocast"] = True
    for label, bf16 in precisions.items():
        for i, (x, y) in enumerate(data):
            record = label if i >= args.warmup else None
            for side in sides[i % len(sides) :] + sides[: i % len(sides)]:  # each side first in turn
                side.step(x, y, bf16, record)
            times = ", ".join(f"{s.name} {s.times[label][-1]:.3f} s" for s in sides) if record else "warm-up"
            print(f"{label} step {i + 1}/{len(data)}: {times}", file=sys.stderr, flush=True)
        if label == "fp32":  # both start from the base model: the same loss, or the comparison is void
            first = (ours.first_loss, theirs.first_loss)
            assert abs(first[0] - first[1]) < 1e-4, f"the two models differ: first losses {first}"
            for side in sides[3:]:  # compiled: the same model, so the same first loss up to fused rounding
                assert abs(side.first_loss - first[0]) < 1e-3, f"{side.name}: first loss {side.first_loss}"
    x, y = data[0]
    saved: dict[tuple[str, str], int] = {}
    for label, bf16 in precisions.items():  # after the timing: the profiler's after-effect speeds steps up
        for side in sides:
            side.measure_peak(x, y, bf16, label)
            if side in (ours, theirs, full):  # saved-tensor hooks are read in eager mode only
                saved[side.name, label] = saved_bytes(side, x, y, bf16)

    config = ours.model.config
    print(
        f"\n{PRESET} ({config.n_layer} layers, {config.n_embd} wide, vocabulary {VOCAB}), batch {BATCH} x {BLOCK}, "
        f"LoRA r {R} alpha {ALPHA:g} on every block linear, AdamW lr {LR:g}; median of {args.steps} interleaved "
        f"steps after {args.warmup} warm-up steps, {torch.get_num_threads()} threads"
    )
    print(f"first-step loss (fp32, adapters start at zero): llmlab {first[0]:.6f}, PEFT {first[1]:.6f}\n")
    print("| precision | llmlab s/step | PEFT s/step | llmlab speedup | llmlab peak MB | PEFT peak MB | "
          "peak llmlab / PEFT | saved for backward MB, llmlab / PEFT |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for label in precisions:
        a, b = ours.median(label), theirs.median(label)
        pa, pb = ours.peak[label], theirs.peak[label]
        sa, sb = saved[ours.name, label], saved[theirs.name, label]
        print(f"| {label} | {a:.3f} | {b:.3f} | **{b / a:.2f}x** | {pa / MB:,.1f} | {pb / MB:,.1f} | "
              f"**{pa / pb:.2f}** | {sa / MB:,.1f} / {sb / MB:,.1f} |")  # fmt: skip
    if len(sides) > 3:
        fast_ours, fast_theirs = sides[3:]
        print("\nUnder torch.compile (compiled at the first warm-up step of each precision):\n")
        print("| precision | llmlab compiled s/step | PEFT compiled s/step | llmlab compiled vs PEFT eager | "
              "llmlab compiled vs PEFT compiled | peak MB, llmlab / PEFT compiled |")  # fmt: skip
        print("| --- | --- | --- | --- | --- | --- |")
        for label in precisions:
            a, b, e = fast_ours.median(label), fast_theirs.median(label), theirs.median(label)
            print(f"| {label} | {a:.3f} | {b:.3f} | **{e / a:.2f}x** | **{b / a:.2f}x** | "
                  f"{fast_ours.peak[label] / MB:,.1f} / {fast_theirs.peak[label] / MB:,.1f} |")  # fmt: skip

    print("\n| run | trainable params | of all | gradient MB | AdamW state MB | " +
          " | ".join(f"s/step, {label} | step peak MB, {label}" for label in precisions) + " |")  # fmt: skip
    print("| --- | --- | --- | --- | --- |" + " --- | --- |" * len(precisions))
    for side in sides:
        trainable, total = counts[side.name]
        cells = " | ".join(f"{side.median(label):.3f} | {side.peak[label] / MB:,.1f}" for label in precisions)
        print(f"| {side.name} | {trainable:,} | {trainable / total:.2%} | {side.grad_bytes / MB:.2f} | "
              f"{side.state_bytes / MB:.2f} | {cells} |")  # fmt: skip
    states = (ours.grad_bytes + ours.state_bytes) / (full.grad_bytes + full.state_bytes)
    print(f"\nllmlab LoRA / full fine-tuning: gradients + AdamW states {states:.4f} (trainable fraction "
          f"{counts[ours.name][0] / counts[full.name][0]:.4f}); step peak " +
          ", ".join(f"{ours.peak[label] / full.peak[label]:.2f} ({label})" for label in precisions) +
          "; step time " + ", ".join(f"{ours.median(label) / full.median(label):.2f} ({label})"
                                     for label in precisions))  # fmt: skip

    if not args.no_profile:
        for label, bf16 in precisions.items():
            print_profile(ours, theirs, x, y, bf16, label)


if __name__ == "__main__":
    main()
