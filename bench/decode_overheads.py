"""What the two decode-speed findings of issue 21 rest on, measured in one run on the 82M Llama (llama-small):

1. Weight stream: the 49 bf16 matrices of a batch-1 step read by llmlab's kernel one after another, from the
   tensors PyTorch allocated and from the same tensors moved into 2 MiB pages (`model/huge_pages.py`).
2. Per-call cost of the compiled step: the same compiled bf16 step called through dynamo (its frame
   evaluation and every guard) and through `generation/guarded_shortcut.py` (direct call; inputs' guards on
   a trusted cache), interleaved on the same inputs and cache. In a tight loop the guards' objects stay in
   the CPU's caches; in a real decoding loop, where the weights stream between two checks, the full check
   costs more (0.4-0.5 ms measured there against ~0.07 ms here), so this is the saving's lower end.

Each figure is the median of interleaved rounds, with the ratio of the two sides measured in the same run.

    .venv/bin/python bench/decode_overheads.py        # ~2 minutes on 2 cores (plus ~30 s to compile once)
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.config import ModelConfig  # noqa: E402
from llmlab.generation.decode_step import DecodeStep  # noqa: E402
from llmlab.kernels import kernels_ready  # noqa: E402
from llmlab.model.cache import SlotCache  # noqa: E402
from llmlab.model.cpu_packing import packed_for_inference  # noqa: E402
from llmlab.model.huge_pages import into_huge_pages  # noqa: E402
from llmlab.model.transformer import DecoderLM  # noqa: E402


def median_ms(fn, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def weight_stream(model: DecoderLM, rounds: int) -> None:
    """The bf16 matrices through llmlab's kernel, in 4 KiB pages and in 2 MiB pages (one copy each)."""
    ordinary = [m.weight.detach().clone() for m in model.modules() if isinstance(m, torch.nn.Linear)]
    holder = torch.nn.Module()
    for i, w in enumerate(ordinary):
        holder.register_buffer(f"w{i}", w.clone())
    moved = into_huge_pages(holder)
    huge = list(holder.buffers())
    xs = {w.shape[1]: torch.randn(1, w.shape[1]).to(torch.bfloat16) for w in ordinary}
    nbytes = sum(w.numel() * w.element_size() for w in ordinary)
    sides = {"4 KiB pages": ordinary, "2 MiB pages": huge}
    times = {name: [] for name in sides}
    for _ in range(rounds):
        for name, weights in sides.items():
            times[name] += median_ms(lambda ws=weights: [torch.ops.llmlab_kernels.float_linear(xs[w.shape[1]], w, None)
                                                         for w in ws], 1)  # fmt: skip
    print(f"\n1. weight stream: {len(ordinary)} bf16 matrices, {nbytes / 1e6:.0f} MB ({moved / 1e6:.0f} MB moved)")
    for name, t in times.items():
        ms = statistics.median(t)
        print(f"   {name}: {ms:.2f} ms per token, {nbytes / ms / 1e6:.1f} GB/s")
    print(f"   ratio: {statistics.median(times['4 KiB pages']) / statistics.median(times['2 MiB pages']):.2f}x")


def step_calls(model: DecoderLM, rounds: int) -> None:
    """One compiled bf16 step through dynamo and through the shortcut, on one cache, interleaved."""
    runner = packed_for_inference(model)
    c = model.config
    through_dynamo = DecodeStep(runner, compile=True, report=lambda line: None)
    shortcut = DecodeStep(runner, compile=True, report=lambda line: None)
    through_dynamo._shortcut = None  # every call through dynamo's frame evaluation and guards
    with torch.inference_mode():
        cache = SlotCache(c.n_layer, 1, c.n_kv_head, 256, c.head_dim, model.compute_dtype, "cpu")
        args = (torch.tensor([[5]]), torch.tensor([[100]]), torch.tensor([100]),
                torch.ones(1, 1, 1, 101, dtype=torch.bool), cache)  # fmt: skip
        for step in (through_dynamo, shortcut):  # compile (or read the disk cache), then warm
            for _ in range(3):
                step(*args)
        times = {"through dynamo": [], "shortcut": []}
        for _ in range(rounds):
            for name, step in (("through dynamo", through_dynamo), ("shortcut", shortcut)):
                times[name] += [t / 16 for t in median_ms(lambda s=step: [s(*args) for _ in range(16)], 1)]
    print("\n2. the compiled bf16 step, batch 1, 101 positions read")
    for name, t in times.items():
        print(f"   {name}: {statistics.median(t):.3f} ms a step")
    dynamo, direct = statistics.median(times["through dynamo"]), statistics.median(times["shortcut"])
    print(f"   saved: {dynamo - direct:.3f} ms a step ({dynamo / direct:.2f}x)")


def main() -> None:
    if not kernels_ready():
        raise SystemExit("llmlab's CPU kernels are not available here (an x86 CPU with AVX-512 and g++ are needed)")
    torch.set_num_threads(2)
    print(describe())
    torch.manual_seed(0)
    model = DecoderLM(ModelConfig.from_preset("llama-small", vocab_size=8192)).eval().to(torch.bfloat16)
    weight_stream(copy.deepcopy(model), rounds=15)
    step_calls(model, rounds=15)


if __name__ == "__main__":
    main()
