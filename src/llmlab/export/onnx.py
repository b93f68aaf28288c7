"""ONNX: the model's forward pass (token ids to logits, no KV cache) as an ONNX graph by PyTorch's exporter
(`torch.onnx.export(dynamo=True)`), with batch and sequence length left free (up to the context length).

Every family: a decoder (`input_ids` -> `logits`), an encoder with its masked-LM head (`input_ids` ->
`logits`), an encoder-decoder (`input_ids`, `decoder_input_ids` -> `logits`, teacher forcing); a model with
a task head gives that head's outputs (`task_logits`). The graph is written in fp32 to a temporary file, run
by ONNX Runtime on two input shapes and compared with llmlab's own logits; a file whose logits differ by more
than the tolerance (1e-4) is deleted and the export refused, so a file that is left agrees.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from llmlab.errors import LlmlabError
from llmlab.export.common import write_atomically
from llmlab.model import LanguageModel
from llmlab.model.soft_prompt import prompt_length

TOLERANCE = 1e-4


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    inputs: tuple[str, ...]
    output: str
    max_abs_diff: float  # ONNX Runtime against llmlab, fp32, the largest over the shapes checked
    bytes: int


class _Forward(nn.Module):
    """The model's logits from token ids alone: what the graph computes (a task head's, if it has one)."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model
        self.task = model.config.task is not None

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.task_logits(input_ids) if self.task else self.model(input_ids)


class _Seq2SeqForward(nn.Module):
    """An encoder-decoder's logits by teacher forcing: source ids and the decoder's input ids."""

    def __init__(self, model: LanguageModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, decoder_input_ids)


def graph_module(model: LanguageModel) -> nn.Module:
    return _Seq2SeqForward(model) if model.config.family == "encoder-decoder" else _Forward(model)


def _refusals(model: LanguageModel) -> list[str]:
    c = model.config
    found = []
    if any(not t.is_floating_point() for t in model.state_dict().values()):
        found.append("quantized weights (PyTorch's int8/int4 kernels have no ONNX form; export the full-precision "
                     "checkpoint)")  # fmt: skip
    if c.family == "encoder" and c.task is None and not c.mlm_head:
        found.append("a bare encoder (no masked-LM head, no task head: no logits)")
    if c.family == "encoder-decoder" and c.task is not None:
        found.append(f"a task head on an encoder-decoder (task={c.task})")
    return found


def _inputs(model: LanguageModel, batch: int, length: int, seed: int) -> tuple[torch.Tensor, ...]:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, c.vocab_size, (batch, length), generator=g)
    if c.family == "encoder-decoder":
        return ids, torch.randint(0, c.vocab_size, (batch, max(1, length - 2)), generator=g)
    return (ids,)


def _names(model: LanguageModel) -> tuple[tuple[str, ...], str]:
    inputs = ("input_ids", "decoder_input_ids") if model.config.family == "encoder-decoder" else ("input_ids",)
    return inputs, "task_logits" if model.config.task is not None else "logits"


def _longest(model: LanguageModel) -> int:
    """The longest input the graph takes: the context, less a soft prompt's vectors."""
    return model.config.block_size - prompt_length(model)


def _export(forward: nn.Module, model: LanguageModel, path: Path) -> None:
    inputs, output = _names(model)
    longest = _longest(model)
    batch = torch.export.Dim("batch", min=1, max=4096)
    shapes = tuple({0: batch, 1: torch.export.Dim(f"{name}_length", min=1, max=longest)} for name in inputs)
    example = _inputs(model, 2, min(8, longest), seed=0)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        # SDPA traced as its math kernel: the fused CPU kernel's output strides break the exporter's
        # decomposition of an encoder-decoder's masked attention ("cannot view a tensor ...")
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), sdpa_kernel(SDPBackend.MATH):
            warnings.simplefilter("ignore")
            torch.onnx.export(forward, example, str(path), dynamo=True, dynamic_shapes=shapes, input_names=list(inputs),
                              output_names=[output], external_data=False, verbose=False)  # fmt: skip
    except Exception as e:  # the exporter raises many types, all meaning "this graph cannot be exported"
        cause = e.__cause__ or e
        raise LlmlabError(f"PyTorch's ONNX exporter failed: {type(cause).__name__}: {str(cause).splitlines()[0][:300]}",
                          "report it with the model's config.json") from None  # fmt: skip
    finally:
        quiet.setLevel(level)


def check_onnx(path: Path, model: LanguageModel, forward: nn.Module | None = None) -> float:
    """The largest absolute difference between ONNX Runtime's outputs and llmlab's (fp32), over two shapes."""
    import onnxruntime

    forward = forward or graph_module(model)
    inputs, _ = _names(model)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch, length, seed in ((2, min(8, _longest(model)), 1), (1, min(19, _longest(model)), 2)):
        ids = _inputs(model, batch, length, seed)
        with torch.no_grad():
            expected = forward(*ids).float()
        got = session.run(None, {name: x.numpy() for name, x in zip(inputs, ids)})[0]
        worst = max(worst, (torch.from_numpy(got) - expected).abs().max().item())
    return worst


def export_onnx(model: LanguageModel, out: str | Path, tolerance: float = TOLERANCE) -> OnnxExport:
    """Write the model's forward pass as an ONNX file (fp32), checked with ONNX Runtime against llmlab's
    logits; refused (nothing written) where they differ by more than `tolerance`."""
    try:
        import onnx  # noqa: F401  (the exporter's and ONNX Runtime's format)
        import onnxruntime  # noqa: F401
    except ImportError:
        raise LlmlabError("exporting to ONNX needs onnx and onnxruntime", "pip install 'llmlab[export]'") from None
    refusals = _refusals(model)
    if refusals:
        raise LlmlabError(f"the model cannot be written as ONNX: {'; '.join(refusals)}", "export it with --to hf")
    model = copy.deepcopy(model).float().cpu().eval()
    forward = graph_module(model).eval()
    found: dict[str, float] = {}

    def write(path: Path) -> None:
        _export(forward, model, path)
        found["diff"] = check_onnx(path, model, forward)
        if not found["diff"] <= tolerance:
            raise LlmlabError(
                f"ONNX Runtime's logits differ from llmlab's by {found['diff']:.2e} (more than {tolerance:g})",
                "nothing was written; report it with the model's config.json",
            )

    path = write_atomically(out, write)
    inputs, output = _names(model)
    return OnnxExport(path, inputs, output, found["diff"], path.stat().st_size)
