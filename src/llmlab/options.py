"""Options written once: a config dataclass field carries its help text, so the CLI (generated from
the dataclasses) and the Python API describe the same option in the same words."""

from __future__ import annotations

import dataclasses
from typing import Any

HELP = "help"


def option(default: Any = dataclasses.MISSING, help: str = "", *, default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its help text: `lr: float = option(1e-3, "peak learning rate")`."""
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={HELP: help})
    return dataclasses.field(default=default, metadata={HELP: help})


def help_of(f: dataclasses.Field) -> str:
    """The help text a field was declared with ("" if none)."""
    return f.metadata.get(HELP, "")
