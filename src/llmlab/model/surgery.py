"""Model surgery: replacing linear layers by other modules, in one place.

Quantization (int8/int4 layers), CPU weight packing and adapters (LoRA, QLoRA) all swap some
`nn.Linear` modules of a model for modules of their own; they differ only in which layers and in what
they build. `replace_linears` does the walk; `in_blocks` is the selector for "inside the transformer
blocks", which is where quantization and adapters act (embeddings, heads and norms stay as they are).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Select = Callable[[str, nn.Linear], bool]  # (full module name, layer) -> replace it?
Make = Callable[[str, nn.Linear], nn.Module]  # (full module name, layer) -> its replacement


def in_blocks(name: str) -> bool:
    """True for a module or parameter inside a stack's transformer blocks (any family)."""
    return ".blocks." in f".{name}"


def every_linear(name: str, linear: nn.Linear) -> bool:
    """A selector that takes every linear layer."""
    return True


def linears_in_blocks(name: str, linear: nn.Linear) -> bool:
    """A selector for the linear layers inside the transformer blocks."""
    return in_blocks(name)


def find_linears(model: nn.Module, select: Select = every_linear) -> list[tuple[nn.Module, str, str, nn.Linear]]:
    """(parent, attribute, full name, layer) for every selected nn.Linear below `model`, in module order.
    A layer reachable by two paths is listed at each, so every place that holds it can be changed."""
    found = []
    for name, module in model.named_modules(remove_duplicate=False):
        if name and isinstance(module, nn.Linear) and select(name, module):
            parent, _, attr = name.rpartition(".")
            found.append((model.get_submodule(parent), attr, name, module))
    return found


def replace_linears(model: nn.Module, select: Select, make: Make) -> list[str]:
    """Replace, in place, every nn.Linear below `model` that `select(name, layer)` takes by
    `make(name, layer)`; returns the names replaced. All layers are found before any is replaced, so
    a replacement that wraps its layer (an adapter) is not visited again, and a layer shared by two
    places gets one replacement, shared the same way. `model` itself is never replaced."""
    made: dict[int, nn.Module] = {}
    names = []
    for parent, attr, name, linear in find_linears(model, select):
        if id(linear) not in made:
            made[id(linear)] = make(name, linear)
        setattr(parent, attr, made[id(linear)])
        names.append(name)
    return names


def disable_dropout(model: nn.Module) -> None:
    """RLHF compares log-probabilities of the same tokens across passes: dropout would make them noise. Both
    kinds: `nn.Dropout` modules and the attention probabilities' dropout (a rate the attention layers read)."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        elif isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
