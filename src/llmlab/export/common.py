"""What the deployment exports share: what a model carries that a format may not hold, and writing a file
so that a failure leaves nothing behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from torch import nn

from llmlab.errors import LlmlabError
from llmlab.model.lora import LoRALinear, MultiLoRALinear
from llmlab.model.soft_prompt import prompt_length


def extras_of(model: nn.Module) -> list[str]:
    """What the model carries beyond its plain weights: an unmerged LoRA adapter, quantized layers, a soft
    prompt, a task head (each named, for a refusal)."""
    found = []
    if any(isinstance(m, (LoRALinear, MultiLoRALinear)) for m in model.modules()):
        found.append("a LoRA adapter not merged (llmlab merge ADAPTER OUT first)")
    if any(not t.is_floating_point() for t in model.state_dict().values()):
        found.append("quantized weights (export the full-precision checkpoint)")
    if prompt_length(model):
        found.append(f"a soft prompt ({prompt_length(model)} vectors)")
    if getattr(model.config, "task", None) is not None:
        found.append(f"a task head (task={model.config.task})")
    return found


def require_new_file(out: str | Path) -> Path:
    out = Path(out)
    if out.exists():
        raise LlmlabError(f"{out} already exists", "choose another output file or remove it")
    return out


def write_atomically(out: str | Path, write: Callable[[Path], None]) -> Path:
    """`write(temporary path)` beside `out`, then renamed onto it: an error leaves no file at `out`."""
    out = require_new_file(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.tmp-")
    os.close(handle)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
