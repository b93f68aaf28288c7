"""`llmlab plan model|memory|compute|formats`: planning before spending. The checks and the arithmetic
live in llmlab.plan (`memory_request`, `compute_request`, `verify`), so Python users get the same
answers; these functions turn flags into a request and print the report."""

from __future__ import annotations

import argparse
import dataclasses
import json

from llmlab.cli.common import print_table, read_text
from llmlab.errors import LlmlabError


def size(n: float) -> str:
    """Bytes in the largest decimal unit that keeps a digit before the point."""
    for unit, factor in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= factor:
            return f"{n / factor:,.2f} {unit}"
    return f"{n:,.0f} B"


def cmd_plan_model(args: argparse.Namespace) -> None:
    from llmlab.config import ModelConfig
    from llmlab.plan.model import parameter_breakdown

    if args.config:
        fix = "pass a JSON file of ModelConfig fields"
        text = read_text(args.config, "--config", fix)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LlmlabError(f"cannot read --config {args.config}: {exc}", fix) from None
        if not isinstance(data, dict):
            raise LlmlabError(f"--config {args.config} is not a JSON object", fix)
        config = ModelConfig.from_dict(data.get("model", data))  # a checkpoint's config.json works too
    else:
        config = ModelConfig.from_preset(args.preset, vocab_size=args.vocab_size)
    parts = parameter_breakdown(config)
    total = sum(parts.values())
    if args.json:
        print(json.dumps({**parts, "total": total}))
        return
    rows = [[name.replace("_", "-"), f"{n:,}", f"{n / total:.1%}"] for name, n in parts.items()]
    print_table([*rows, ["total", f"{total:,}", "100.0%"]], ["component", "parameters", "share"])


def _verify_memory(args: argparse.Namespace) -> None:
    """Predicted bytes against real llmlab tensors, and predicted step peaks against the allocator."""
    from llmlab.plan.verify import verify_memory_suite

    checks = verify_memory_suite(args.device, args.batch, args.seq_len, args.target_len)
    if args.json:
        print(json.dumps([dict(dataclasses.asdict(c), ratio=c.ratio) for c in checks]))
        return
    rows = [[c.preset, c.component, f"{c.predicted:,.0f}", f"{c.measured:,.0f}", f"{c.ratio:.3f}"] for c in checks]
    print_table(rows, ["model", "component", "predicted bytes", "measured bytes", "measured/predicted"])
    on_gpu = any("(cuda" in c.component for c in checks)
    print(
        "peaks measured by torch.cuda.max_memory_allocated"
        if on_gpu
        else "peaks measured from the CPU allocator's malloc/free events; on a GPU (--device cuda) "
        "the same check reads torch.cuda.max_memory_allocated"
    )


def _print_memory_plan(report) -> None:
    """The training and inference tables of a MemoryReport."""
    request, plan, params = report.request, report.plan, report.params
    what = "training" if request.method == "full" else f"fine-tuning with {request.method} (rank {request.lora_r})"
    print(
        f"{params:,.0f} parameters; {what} per GPU with {request.sharding} on {request.gpus} GPU(s), "
        f"{'mixed precision' if request.mixed_precision else request.dtype}, {request.optimizer}"
    )
    if report.trainable is not None:
        print(f"trainable: {report.trainable:,} adapter parameters ({report.trainable / params:.2%} of the base)")
    rows = [[name, size(n), f"{n / params:.2f}"] for name, n in plan.training.items()]
    states = list(plan.training).index("optimizer states") + 1
    model_states = ["  model states (what ZeRO shards)", size(plan.model_states), f"{plan.model_states / params:.2f}"]
    rows.insert(states, model_states)
    rows.append(["total", size(plan.training_total), f"{plan.training_total / params:.2f}"])
    print_table(rows, ["training", "bytes", "per parameter"])
    print()
    rows = [[name, size(n)] for name, n in plan.inference.items()] + [["total", size(plan.inference_total)]]
    print_table(rows, [f"inference ({request.dtype})", "bytes"])


def _print_step_and_fit(report) -> None:
    """The llmlab step's peak phase by phase, and whether each plan fits the GPU's memory."""
    request, step = report.request, report.step
    if step is not None:
        what = "fp32" if request.dtype == "fp32" else f"{request.dtype} autocast over fp32 weights"
        if request.method == "qlora":
            what = "NF4 block layers, 16-bit embeddings and activations, fp32 adapters"
        where = f"one {request.device} device" + (f" of {request.gpus} in DDP" if request.gpus > 1 else "")
        command = "pretrain" if request.method == "full" else f"finetune --method {request.method}"
        print(f"\nllmlab {command} on {where} ({what}, AdamW): alive at each high point of a step")
        rows = [[name, size(n)] for name, n in step.components.items() if n]
        rows += [[f"at the {phase}", size(n)] for phase, n in step.phases.items()]
        rows.append([f"peak (at the {step.peak_phase})", size(step.peak)])
        print_table(rows, ["component / phase", "bytes"])
    if report.capacity is not None:
        verdict = lambda fits: "fits" if fits else "does not fit"  # noqa: E731
        print(
            f"\non {size(report.capacity)} per GPU: training {verdict(report.fits(report.plan.training_total))}, "
            f"inference {verdict(report.fits(report.plan.inference_total))}"
            + (
                ""
                if step is None
                else f", an llmlab {'pretrain' if request.method == 'full' else 'finetune'} step "
                f"{verdict(report.fits(step.peak))}"
            )
        )


def cmd_plan_memory(args: argparse.Namespace) -> None:
    from llmlab.plan.memory_request import MemoryRequest, plan_memory_request

    if args.verify:
        _verify_memory(args)  # measures on --device, else a GPU if there is one
        return
    request = MemoryRequest(
        params=args.params, preset=args.preset, model=args.model, vocab_size=args.vocab_size, dtype=args.dtype,
        optimizer=args.optimizer, mixed_precision=args.mixed_precision, batch=args.batch, seq_len=args.seq_len,
        recompute=args.recompute, target_len=args.target_len, gpus=args.gpus, strategy=args.strategy,
        gpu_memory=args.gpu_memory, device=args.device or "cuda",  # the step peak describes a GPU unless told
        method=args.method, lora_r=args.lora_r, lora_dropout=args.lora_dropout,
        lora_targets=tuple(t for t in args.lora_targets.split(",") if t),
    )  # fmt: skip
    report = plan_memory_request(request)
    if args.json:
        print(json.dumps(report.to_dict()))
        return
    _print_memory_plan(report)
    _print_step_and_fit(report)


def _verify_flops(args: argparse.Namespace) -> None:
    """Counted FLOPs of real llmlab models (every family) against the formula and against 6ND."""
    from llmlab.plan.verify import FLOP_CASES, verify_flops

    checks = verify_flops(FLOP_CASES)
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks]))
        return
    rows = [
        [c.preset, c.shape, f"{c.counted:.4g}", f"{c.formula:.4g}", f"{c.counted / c.formula:.4f}",
         f"{c.six_nd:.4g}", f"{c.counted / c.six_nd:.3f}"]
        for c in checks
    ]  # fmt: skip
    header = ["model", "batch", "counted FLOPs", "formula", "counted/formula", "6ND", "counted/6ND"]
    print_table(rows, header)
    print("counted: torch.utils.flop_counter over one forward + backward of llmlab's loss")


def _print_compute_plan(report, seq_len: int | None) -> None:
    from llmlab.plan.compute import inference_flops

    r, params, tokens = report, report.params, report.tokens
    pf = f"{r.pf_days:,.0f}" if r.pf_days >= 10 else f"{r.pf_days:.3g}"
    rows = [["training compute", f"{r.flops:.2e} FLOPs = {pf} petaflop/s-days"]]
    if params and tokens:
        rows.append(["model and data", f"{params:.4g} parameters x {tokens:.4g} tokens ({tokens / params:.1f}/param)"])
        rows.append([f"predicted loss ({r.chinchilla_fit})", f"{r.predicted_loss:.3f}"])
    if params:
        rows.append(["generation", f"{inference_flops(params, 1):.3g} FLOPs per token (2N)"])
    exact = r.training_flops_per_token_with_attention
    if exact:
        formula = f"{exact:.3g} with attention (6 x matmul weights + 12 L s h) = {exact / (6 * params):.3f} x 6N"
        rows.append([f"training FLOPs per token at {seq_len} positions", formula])
    rows.append([f"on {r.gpus} x {r.gpu} {r.dtype} at {r.mfu:.0%} MFU", f"{r.days:,.1f} days"])
    optimum = f"{r.optimal_params:.3g} parameters x {r.optimal_tokens:.3g} tokens, loss {r.optimal_loss:.3f}"
    rows.append([f"compute-optimal ({r.chinchilla_fit})", optimum])
    rows.append(["20 tokens per parameter", f"{r.rule_params:.3g} parameters x {r.rule_tokens:.3g} tokens"])
    print_table(rows, right=False)
    if r.plot:
        print(f"iso-loss contours with the frontier and the budget: {r.plot}")


def cmd_plan_compute(args: argparse.Namespace) -> None:
    from llmlab.plan.compute_request import ComputeRequest, plan_compute_request

    if args.verify:
        _verify_flops(args)
        return
    tokens = args.tokens
    if args.tokens_from:
        if tokens is not None:
            raise LlmlabError("--tokens and --tokens-from both give D", "pass one of them")
        from llmlab.curate.pipeline import curated_tokens

        tokens = float(curated_tokens(args.tokens_from))
    request = ComputeRequest(
        params=args.params, tokens=tokens, budget_flops=args.budget_flops, budget_pf_days=args.budget_pf_days,
        flops_per_token=args.flops_per_token, preset=args.preset, vocab_size=args.vocab_size, seq_len=args.seq_len,
        gpu=args.gpu, dtype=args.dtype, gpus=args.gpus, mfu=args.mfu, fit=args.fit, chinchilla=args.chinchilla,
    )  # fmt: skip
    report = plan_compute_request(request)
    if args.json:
        print(json.dumps(report.to_dict()))
        return
    _print_compute_plan(report, args.seq_len)


def cmd_plan_formats(args: argparse.Namespace) -> None:
    from llmlab.plan.formats import FLOAT_FORMATS, encode_float, quantize_int8

    floats = [encode_float(args.value, name) for name in FLOAT_FORMATS]
    try:
        others = [float(v) for v in args.tensor.split(",")] if args.tensor else []
    except ValueError:
        raise LlmlabError(f"--tensor {args.tensor!r} is not a list of numbers", "write it like 1.5,-2,0.25") from None
    tensor = others + [args.value]
    ints = [quantize_int8(tensor, method) for method in ("absmax", "zeropoint")]
    if args.json:
        asdicts = lambda items: [dataclasses.asdict(x) for x in items]  # noqa: E731
        print(json.dumps({"floats": asdicts(floats), "int8": asdicts(ints)}))
        return
    rows = [
        [f.format, f.bits, f"{f.stored:.10g}", f"{f.abs_error:.3g}", f"{f.max:.5g}", f"{f.smallest_normal:.3g}",
         f"{f.eps:.3g}" + ("  (out of range: saturated)" if abs(args.value) > f.max else "")]
        for f in floats
    ]  # fmt: skip
    print_table(rows, ["format", "sign exponent fraction", "stored", "error", "max", "min normal", "epsilon"])
    print(f"\nint8 of the tensor {tensor} (the value is its last element):")
    rows = [
        [q.method, f"{q.scale:.6g}", str(q.zero_point), str(q.quantized[-1]), f"{q.dequantized[-1]:.10g}",
         f"{q.max_abs_error:.3g}"]
        for q in ints
    ]  # fmt: skip
    print_table(rows, ["method", "scale", "zero point", "int8", "dequantized", "max error over tensor"])


def _register_memory(plan: argparse._SubParsersAction) -> None:
    from llmlab.plan.memory_request import STRATEGY_CHOICES

    pmem = plan.add_parser("memory", help="bytes of weights, gradients, optimizer, activations, KV cache per GPU")
    pmem.add_argument("--params", type=float, help="parameter count (e.g. 7e9)")
    pmem.add_argument("--preset", help="count parameters and take the architecture from a preset")
    pmem.add_argument("--model", help="an llmlab checkpoint folder, or a Hugging Face folder or hub id")
    pmem.add_argument("--vocab-size", type=int, default=8192)
    pmem.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16", "int8", "int4"])
    pmem.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd", "adam8bit"])
    pmem.add_argument("--mixed-precision", action="store_true", help="16-bit weights/grads + fp32 master and states")
    pmem.add_argument("--batch", type=int)
    pmem.add_argument("--seq-len", type=int)
    pmem.add_argument("--recompute", default="none", choices=["none", "selective", "full"])
    pmem.add_argument("--target-len", type=int, help="an encoder-decoder's target length (default: --seq-len)")
    pmem.add_argument("--gpus", type=int, default=1)
    pmem.add_argument("--strategy", default="ddp", choices=list(STRATEGY_CHOICES))
    pmem.add_argument("--gpu-memory", help="memory per GPU, e.g. 80GB, to say whether it fits")
    pmem.add_argument(
        "--device",
        choices=["cuda", "cpu"],
        help="device of the llmlab step's peak (its kernels differ); --verify measures there (default: a GPU if any)",
    )
    pmem.add_argument(
        "--method", default="full", choices=["full", "lora", "qlora"],
        help="full training, or a fine-tuning step with LoRA adapters on a frozen base (qlora: an NF4 base)",
    )  # fmt: skip
    pmem.add_argument("--lora-r", type=int, default=8, help="LoRA rank (with --method lora/qlora)")
    pmem.add_argument("--lora-targets", default="attention", help="as llmlab finetune: attention, qv, mlp, "
                      "all-linear or layer names, comma-separated")  # fmt: skip
    pmem.add_argument("--lora-dropout", type=float, default=0.05, help="dropout on the adapters' input")
    pmem.add_argument("--verify", action="store_true", help="compare predictions with real llmlab tensors")
    pmem.add_argument("--json", action="store_true")
    pmem.set_defaults(func=cmd_plan_memory)


def _register_compute(plan: argparse._SubParsersAction) -> None:
    pc = plan.add_parser("compute", help="training FLOPs, petaflop/s-days, GPU-days, Chinchilla optimum")
    pc.add_argument("--params", type=float, help="parameters N (e.g. 7e9)")
    pc.add_argument("--preset", help="take N from a preset (with --seq-len: FLOPs per token with attention)")
    pc.add_argument("--vocab-size", type=int, default=8192)
    pc.add_argument("--seq-len", type=int, help="context length for the attention FLOPs (with --preset)")
    pc.add_argument("--verify", action="store_true", help="count the FLOPs of real llmlab models against 6ND")
    pc.add_argument("--tokens", type=float, help="training tokens D (e.g. 2e12)")
    pc.add_argument("--tokens-from", metavar="CURATED", help="D from a `llmlab data clean --tokenizer` folder")
    pc.add_argument("--budget-flops", type=float, help="a compute budget instead of N and D")
    pc.add_argument("--budget-pf-days", type=float, help="a compute budget in petaflop/s-days")
    pc.add_argument("--flops-per-token", type=float, default=6.0, help="FLOPs per parameter per token (T5: 3)")
    pc.add_argument("--gpu", default="H100", help="V100, A100, H100 or H200")
    pc.add_argument("--dtype", default="bf16", help="fp32, tf32, bf16, fp16 or fp8 (as the GPU has)")
    pc.add_argument("--gpus", type=int, default=1)
    pc.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation, 0-1")
    pc.add_argument("--fit", default="hoffmann2022", choices=["hoffmann2022", "besiroglu2024"])
    pc.add_argument(
        "--chinchilla",
        nargs="?",
        const="chinchilla.png",
        metavar="PNG",
        help="draw iso-loss contours, the compute-optimal frontier and the budget (default chinchilla.png)",
    )
    pc.add_argument("--json", action="store_true")
    pc.set_defaults(func=cmd_plan_compute)


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "plan before spending: parameters, memory, compute, number formats"
    plan = subparsers.add_parser("plan", help=help_text).add_subparsers(dest="plan_command", required=True)
    pm = plan.add_parser("model", help="parameters by component for a preset or a config file")
    pm.add_argument("--preset", default="llama-micro")
    pm.add_argument("--config", help="a JSON file of ModelConfig fields, or a checkpoint's config.json")
    pm.add_argument("--vocab-size", type=int, default=8192)
    pm.add_argument("--json", action="store_true")
    pm.set_defaults(func=cmd_plan_model)
    _register_memory(plan)
    _register_compute(plan)
    pf = plan.add_parser("formats", help="how a value is stored in fp32/fp16/bf16/fp8 and int8")
    pf.add_argument("value", type=float)
    pf.add_argument("--tensor", help="other values of the tensor for int8 quantization, comma-separated")
    pf.add_argument("--json", action="store_true")
    pf.set_defaults(func=cmd_plan_formats)
