"""The plans against real llmlab models: model-state bytes against the tensors, the peak of a training
step against the allocator, the FLOPs of a step against torch's FLOP counter."""

from __future__ import annotations

import gc
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from llmlab.config import ModelConfig
from llmlab.data.objectives import IGNORE, Batch
from llmlab.family import family_spec
from llmlab.model import DecoderLM, LanguageModel, build_model
from llmlab.plan.measure import PeakWindow, cpu_allocation_timeline
from llmlab.plan.memory import activation_bytes, logits_bytes, masked_positions, plan_memory


@dataclass
class MemoryCheck:
    preset: str
    component: str
    predicted: float
    measured: float

    @property
    def ratio(self) -> float:
        return self.measured / self.predicted if self.predicted else float("nan")


def _bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_activation_bytes(model: DecoderLM, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> int:
    """Bytes autograd keeps for the backward pass of one forward, counting each storage once and
    leaving out the parameters themselves (and their 16-bit copies, which are weights, not activations)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    param_shapes = {tuple(p.shape) for p in model.parameters() if p.dim() >= 2}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        is_weight_copy = t.dtype != torch.float32 and tuple(t.shape) in param_shapes
        if ptr not in params and not is_weight_copy:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = model(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    loss.backward()
    return sum(seen.values())


def verify(presets: list[str], batch: int = 4, seq_len: int = 256, vocab_size: int = 512) -> list[MemoryCheck]:
    """One AdamW step per preset in fp32: weights, gradients and Adam moments must match exactly; the
    16-bit activations saved for backward (bf16 autocast) are compared with the per-layer formula
    plus the output layer's logits."""
    checks: list[MemoryCheck] = []
    for preset in presets:
        torch.manual_seed(0)
        config = ModelConfig.from_preset(preset, vocab_size=vocab_size, block_size=seq_len)
        model = DecoderLM(config)
        n = model.num_parameters()
        plan = plan_memory(n, dtype="fp32", optimizer="adamw")
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randint(0, vocab_size, (batch, seq_len))
        y = torch.randint(0, vocab_size, (batch, seq_len))
        F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
        optimizer.step()
        params = list(model.parameters())
        moments = [v for s in optimizer.state.values() for k, v in s.items() if k in ("exp_avg", "exp_avg_sq")]
        checks += [
            MemoryCheck(preset, "weights", plan.training["weights"], _bytes(params)),
            MemoryCheck(preset, "gradients", plan.training["gradients"], _bytes(p.grad for p in params)),
            MemoryCheck(preset, "optimizer states", plan.training["optimizer states"], _bytes(moments)),
        ]
        optimizer.zero_grad(set_to_none=True)
        measured = saved_activation_bytes(model, x, y, torch.bfloat16)
        # llmlab trains sequences of <= 128 positions on CPU with the math kernel, which keeps the scores
        mode = "none" if seq_len <= 128 else "selective"
        predicted = activation_bytes(config, batch, seq_len, mode) + logits_bytes(config, batch, seq_len)
        checks.append(MemoryCheck(preset, f"activations (bf16, recompute {mode})", predicted, measured))
    return checks


def synthetic_batch(config: ModelConfig, batch: int, seq_len: int, target_len: int | None = None) -> Batch:
    """Random ids shaped as the family's objective feeds them: next-token pairs (decoder); a masked-LM
    row with exactly round(15%) of positions labelled (encoder); an input and a target of `target_len`
    (encoder-decoder)."""
    vocab = config.vocab_size
    inputs = torch.randint(0, vocab, (batch, seq_len))
    spec = family_spec(config)
    if spec.causal:
        return Batch(inputs, torch.randint(0, vocab, (batch, seq_len)))
    if spec.masked_lm:
        labels = torch.full((batch, seq_len), IGNORE)
        picked = torch.rand(batch, seq_len).argsort(dim=1)[:, : masked_positions(seq_len)]
        labels.scatter_(1, picked, torch.randint(0, vocab, picked.shape))
        return Batch(inputs, labels)
    T = target_len or seq_len
    return Batch(inputs, torch.randint(0, vocab, (batch, T)), decoder_inputs=torch.randint(0, vocab, (batch, T)))


def measured_step_peaks(
    model: LanguageModel,
    batch: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype,
    accumulation_steps: int = 1,
    target_len: int | None = None,
    ddp: bool = False,
) -> dict[str, int]:
    """Peak bytes of the forward + backward and of the optimizer step of the third training step (the
    steady state), running llmlab's own trainer code: batch_loss under autocast,
    backward, optimizer_step; with `ddp`, through DistributedDataParallel (a process group must be up).
    On CUDA the allocator's peak; on CPU the model's weights and the batch plus everything the allocator
    recorded from the wrapping on (optimizer states, DDP's buckets, each step's temporaries)."""
    from torch.profiler import record_function

    from llmlab.device import autocast
    from llmlab.training.config import OptimConfig
    from llmlab.training.losses import lm_loss
    from llmlab.training.optim import make_optimizers, optimizer_step

    model.to(device)
    data = synthetic_batch(model.config, batch, seq_len, target_len).to(device)
    trainer: dict = {}

    def setup() -> None:
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [device.index or 0] if device.type == "cuda" else None
        trainer["forward"] = DistributedDataParallel(model, device_ids=device_ids) if ddp else model
        trainer["optimizers"] = make_optimizers(model, OptimConfig(), device)

    def forward_backward() -> None:
        for _ in range(accumulation_steps):
            with autocast(device, dtype):
                loss = lm_loss(trainer["forward"], data) / accumulation_steps
            loss.backward()

    def update() -> None:
        optimizer_step(model, trainer["optimizers"], torch.amp.GradScaler(device.type, enabled=False), 1.0)

    phases = {"forward and backward": forward_backward, "optimizer step": update}

    def warm_up() -> None:  # the first step creates the optimizer states; DDP rebuilds its buckets in the second
        setup()
        for _ in range(2):
            forward_backward()
            update()
        gc.collect()  # what the warm-up left to the garbage collector goes before the measured step

    if device.type == "cuda":
        warm_up()
        peaks = {}
        for phase, run in phases.items():
            window = PeakWindow(device)
            window.open()
            run()
            peaks[phase] = window.close()
        return peaks

    def steps() -> None:
        warm_up()
        for phase, run in phases.items():
            with record_function(f"llmlab.peak.{phase}"):
                run()

    held = _bytes(model.parameters()) + _bytes(model.buffers())  # NF4 layers keep their weights as buffers
    held += _bytes(t for t in vars(data).values() if t is not None)
    events, regions = cpu_allocation_timeline(steps)
    peaks = dict.fromkeys(regions, 0)
    for time, size in events:
        held += size
        for phase, (begin, end) in regions.items():
            if time <= end:  # what is held when a phase begins counts as well as what it adds
                peaks[phase] = max(peaks[phase], held) if time >= begin else held
    return peaks


def verify_peak(
    presets: list[str],
    batch: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype,
    vocab_size: int = 8192,
    accumulation_steps: int = 1,
    target_len: int | None = None,
    ddp: bool = False,
) -> list[MemoryCheck]:
    """Predicted peaks of a training step's two halves, and of the whole step, against the allocator's."""
    from llmlab.plan.peak import ModelShape, training_step_peak

    checks = []
    precision = "fp32" if dtype == torch.float32 else "autocast"
    for preset in presets:
        torch.manual_seed(0)
        config = ModelConfig.from_preset(preset, vocab_size=vocab_size, block_size=max(seq_len, target_len or 0))
        model = build_model(config)
        step = training_step_peak(
            config, ModelShape.of(model), batch, seq_len, device.type, precision, accumulation_steps, target_len, ddp
        )
        measured = measured_step_peaks(model, batch, seq_len, device, dtype, accumulation_steps, target_len, ddp)
        backward = [bytes_ for phase, bytes_ in step.phases.items() if phase != "optimizer step"]
        predicted = {"forward and backward": max(backward), "optimizer step": step.phases["optimizer step"]}
        where = f"{device.type}, {precision}, b{batch} x {seq_len}" + (f" -> {target_len}" if target_len else "")
        where += f", {accumulation_steps} micro-batches" if accumulation_steps > 1 else ""
        where += ", DDP" if ddp else ""
        checks += [MemoryCheck(preset, f"peak: {k} ({where})", predicted[k], measured[k]) for k in predicted]
        checks.append(MemoryCheck(preset, f"peak of a step ({where})", step.peak, max(measured.values())))
        del model
        gc.collect()  # the last model's DDP reducer and optimizer states, before the next one is measured
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return checks


def verify_adapter_peak(
    presets: list[str],
    batch: int,
    seq_len: int,
    device: torch.device,
    dtype: torch.dtype,
    method: str = "lora",
    targets: tuple[str, ...] = ("attention",),
    vocab_size: int = 8192,
    target_len: int | None = None,
) -> list[MemoryCheck]:
    """A LoRA / QLoRA fine-tuning step's predicted peaks (plan/adapter_peak.py) against the allocator's:
    rank 8 on `targets`, the base frozen (QLoRA: its block layers in NF4, as `llmlab finetune` makes it)."""
    from llmlab.load import quantize_nf4_base
    from llmlab.model.lora import LoraSpec, add_lora
    from llmlab.plan.adapter_peak import AdapterShape, adapter_step_peak

    checks = []
    precision = "fp32" if dtype == torch.float32 else "autocast"
    for preset in presets:
        torch.manual_seed(0)
        config = ModelConfig.from_preset(preset, vocab_size=vocab_size, block_size=max(seq_len, target_len or 0))
        model = build_model(config)
        add_lora(model, LoraSpec(r=8, targets=targets))
        if method == "qlora":
            quantize_nf4_base(model)
        shape = AdapterShape.of(config, method, 8, targets)
        step = adapter_step_peak(config, shape, batch, seq_len, device.type, precision, target_len)
        measured = measured_step_peaks(model, batch, seq_len, device, dtype, target_len=target_len)
        predicted = {"forward and backward": max(v for k, v in step.phases.items() if k != "optimizer step"),
                     "optimizer step": step.phases["optimizer step"]}  # fmt: skip
        where = f"{method} on {','.join(targets)}, {device.type}, {precision}, b{batch} x {seq_len}"
        where += f" -> {target_len}" if target_len else ""
        checks += [MemoryCheck(preset, f"peak: {k} ({where})", predicted[k], measured[k]) for k in predicted]
        checks.append(MemoryCheck(preset, f"peak of a step ({where})", step.peak, max(measured.values())))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return checks


@dataclass
class FlopCheck:
    preset: str
    shape: str
    counted: float  # FLOPs torch's FlopCounterMode saw in one forward + backward
    formula: float  # plan.flops.step_flops
    six_nd: float  # the rule, with N all parameters and D every input and target token


def count_step_flops(model: LanguageModel, batch: Batch) -> int:
    """FLOPs of one forward + backward of llmlab's training loss, counted op by op by torch. Attention
    runs on the math kernel here, so that its matmuls are seen (the fused kernels' are not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from llmlab.training.losses import lm_loss

    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        lm_loss(model, batch).backward()
    return counter.get_total_flops()


def verify_flops(cases: list[tuple[str, int, int, int | None]], vocab_size: int = 8192) -> list[FlopCheck]:
    """(preset, batch, seq_len, target_len) cases: counted FLOPs against the term-by-term formula and 6ND."""
    from llmlab.plan.flops import step_flops

    checks = []
    for preset, batch, seq_len, target_len in cases:
        torch.manual_seed(0)
        config = ModelConfig.from_preset(preset, vocab_size=vocab_size, block_size=max(seq_len, target_len or 0))
        model = build_model(config)
        counted = count_step_flops(model, synthetic_batch(config, batch, seq_len, target_len))
        tokens = batch * (seq_len + (target_len or 0) if family_spec(config).seq2seq else seq_len)
        shape = f"b{batch} x {seq_len}" + (f" -> {target_len}" if target_len else "")
        formula = sum(step_flops(config, batch, seq_len, target_len).values())
        checks.append(FlopCheck(preset, shape, counted, formula, 6.0 * model.num_parameters() * tokens))
    return checks


# (preset, batch, seq_len, target_len): every family, and an encoder-decoder with a shorter target
FLOP_CASES: list[tuple[str, int, int, int | None]] = [
    ("gpt2-micro", 2, 256, None),
    ("llama-micro", 2, 256, None),
    ("bert-micro", 2, 128, None),
    ("t5-micro", 2, 128, 128),
    ("t5-micro", 2, 128, 32),
    ("transformer-base", 1, 64, 64),
]


def verify_memory_suite(
    device: str | None = None, batch: int | None = None, seq_len: int | None = None, target_len: int | None = None
) -> list[MemoryCheck]:
    """`llmlab plan memory --verify`: exact model-state checks on CPU, then the peak of a step on `device`
    (default: a GPU when there is one) in bf16 autocast and fp32, for every family. Small models on CPU,
    ~100M-parameter ones on a GPU, where the fixed cuBLAS workspaces are noise."""
    from llmlab.device import resolve_device

    where = resolve_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = where.type == "cuda"
    size = "small" if on_gpu else "micro"
    presets = [f"gpt2-{size}", f"llama-{size}", "bert-base" if on_gpu else "bert-micro", f"t5-{size}"]
    batch, seq_len = batch or (8 if on_gpu else 4), seq_len or (512 if on_gpu else 256)
    checks = verify(["gpt2-nano", "gpt2-micro", "llama-nano", "llama-micro"])
    vocab_size = 32768 if on_gpu else 8192
    for dtype in (torch.bfloat16, torch.float32):  # autocast (the trainer's default) and plain fp32
        for preset in presets:  # encoder-decoders: targets a quarter of the input, as span corruption makes
            seq2seq = family_spec(ModelConfig.from_preset(preset)).seq2seq
            target = (target_len or seq_len // 4) if seq2seq else None
            checks += verify_peak([preset], batch, seq_len, where, dtype, vocab_size, target_len=target)
    for method, targets in (("lora", ("attention",)), ("qlora", ("all-linear",))):  # fine-tuning steps
        for preset in presets[1::2]:  # llama and t5: a decoder and an encoder-decoder
            seq2seq = family_spec(ModelConfig.from_preset(preset)).seq2seq
            target = (target_len or seq_len // 4) if seq2seq else None
            checks += verify_adapter_peak([preset], batch, seq_len, where, torch.bfloat16, method, targets,
                                          vocab_size, target)  # fmt: skip
    return checks
