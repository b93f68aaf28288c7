"""The package's imports point down the layers and never form a cycle (imports inside functions
count too: a cycle closed by a lazy import is still a cycle). docs/architecture.md draws the same layers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module may import modules of its own layer or of a lower one. The longest matching
# prefix places a module (plan's calculators sit low; `plan.verify`, which trains models, sits high).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundation",
        ("llmlab.errors", "llmlab.options", "llmlab.device", "llmlab.progress", "llmlab.plot", "llmlab.kernels"),
    ),
    ("vocabulary", ("llmlab.config", "llmlab.tokenizer", "llmlab.family")),
    ("model", ("llmlab.model",)),
    ("data, decoding, calculators", ("llmlab.data", "llmlab.generation", "llmlab.plan")),
    ("checkpoint format", ("llmlab.checkpoint",)),
    ("hugging face, deployment formats", ("llmlab.hf", "llmlab.export")),
    ("any source", ("llmlab.load",)),
    ("training core", ("llmlab.training",)),
    (
        "recipes and uses",
        (
            "llmlab.pretrain",
            "llmlab.finetune",
            "llmlab.align",
            "llmlab.distill",
            "llmlab.chat",
            "llmlab.serve",
            "llmlab.tasks",
            "llmlab.evaluation",
            "llmlab.introspect",
            "llmlab.report",
            "llmlab.prune",
            "llmlab.rag",
            "llmlab.retrieval",
            "llmlab.tools",
            "llmlab.curate",
            "llmlab.lifecycle",
            "llmlab.scaling",
            "llmlab.plan.verify",
            "llmlab.plan.memory_request",
            "llmlab.plan.compute_request",
        ),
    ),  # fmt: skip
    ("interface", ("llmlab.cli", "llmlab.__init__", "llmlab.__main__")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / "llmlab").rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every llmlab module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level:
            pytest.fail(f"{path}: relative import; write `from llmlab... import` so the layers can be read")
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known and n.startswith("llmlab")}
    return found


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    if module == "llmlab":
        return len(LAYERS) - 1  # the package's __init__: the public API, at the top
    if rank is None:
        pytest.fail(f"{module} is in no layer: add it to LAYERS here and to docs/architecture.md")
    return rank


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def test_every_import_points_down_or_sideways():
    upward = [
        f"{m} ({LAYERS[layer_of(m)][0]}) imports {d} ({LAYERS[layer_of(d)][0]})"
        for m, deps in graph().items()
        for d in sorted(deps)
        if layer_of(d) > layer_of(m)
    ]
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if d == "llmlab":  # the facade re-exports; nothing inside imports it
                continue
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_lazy_imports_and_upward_ones(tmp_path):
    """The checker itself: an import inside a function counts, and model code importing training is upward."""
    file = tmp_path / "m.py"
    file.write_text("def f():\n    from llmlab.training.loop import Trainer\n")
    assert imports_of(file, {"llmlab.training.loop"}) == {"llmlab.training.loop"}
    assert layer_of("llmlab.training.loop") > layer_of("llmlab.model.layers")
    assert layer_of("llmlab.plan.verify") > layer_of("llmlab.training.loop") > layer_of("llmlab.plan.peak")
