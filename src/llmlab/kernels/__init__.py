"""Native CPU kernels that PyTorch lacks, compiled from this folder's C++ on first use.

`int8_linear`: a weight-only int8 linear layer that reads each weight once per call at any batch size
(`int8_linear.cpp` says how); `float_linear`: bf16 and fp32 linear layers for a few rows at a time, which
stream their weights faster than oneDNN's packed kernels at batch 1 (`float_linear.cpp`). They are built
with PyTorch's own extension builder (g++ and ninja, both installed by the project's install step) into
$LLMLAB_KERNELS_DIR or $LLMLAB_CACHE/kernels, one folder per torch version and CPU (they are compiled for
the CPU they run on), once: ~30 s, then a load in milliseconds. Where they cannot be built (no compiler,
another architecture) one line says so and the callers use PyTorch's kernels instead, as they do with
LLMLAB_KERNELS=off.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import threading
from pathlib import Path

import torch

_SOURCES = [Path(__file__).with_name(name) for name in ("int8_linear.cpp", "float_linear.cpp")]
_lock = threading.Lock()
_state: dict[str, bool] = {}  # "built": whether the kernels are loaded (absent: not tried yet); "fake": shape rules


def kernels_dir() -> Path:
    """Where built kernels are kept: per torch version and CPU, since they are compiled for this CPU."""
    root = os.environ.get("LLMLAB_KERNELS_DIR") or Path(os.environ.get("LLMLAB_CACHE", Path.home() / ".cache" /
                                                                       "llmlab")) / "kernels"  # fmt: skip
    return Path(root) / f"torch-{torch.__version__}-{platform.machine()}-{_cpu_tag()}"


def _cpu_flags() -> str:
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return platform.processor()


def _cpu_tag() -> str:
    return hashlib.sha256(_cpu_flags().encode()).hexdigest()[:12]


def cpu_has(feature: str) -> bool:
    """Whether this CPU reports `feature` (a /proc/cpuinfo flag such as avx512_bf16)."""
    return feature in _cpu_flags().split()


def kernels_ready() -> bool:
    """Whether `torch.ops.llmlab_kernels.*` can be called: built (or loaded) on the first call."""
    if "built" not in _state:
        with _lock:
            if "built" not in _state:
                _state["built"] = os.environ.get("LLMLAB_KERNELS", "on") != "off" and _build()
    return _state["built"]


def _build() -> bool:
    if platform.machine() not in ("x86_64", "AMD64") or not cpu_has("avx512bw"):
        return False  # the kernels are written for AVX-512 (their plain loops are slower than PyTorch's kernels)
    folder = kernels_dir()
    try:
        from torch.utils.cpp_extension import load

        _ninja_on_path()
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.glob("*.so")):
            print("building llmlab's CPU kernels for this CPU (once, ~30 s)", file=sys.stderr, flush=True)
        load(name="llmlab_kernels", sources=[str(s) for s in _SOURCES], build_directory=str(folder),
             extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], is_python_module=False,
             verbose=False)  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - any failure (no compiler, no ninja) means: use PyTorch's kernel
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"warning: llmlab's CPU kernels could not be built ({first}); using PyTorch's", file=sys.stderr)
        return False
    if not _state.get("fake"):  # the shape rule torch.compile traces with, registered once per process
        torch.library.register_fake("llmlab_kernels::int8_linear")(_int8_linear_shape)
        torch.library.register_fake("llmlab_kernels::float_linear")(_float_linear_shape)
        torch.library.register_fake("llmlab_kernels::packed_linear")(_packed_linear_shape)
        _state["fake"] = True
    return True


def _ninja_on_path() -> None:
    """PyTorch's builder runs `ninja` from PATH: the pip-installed one lives beside this Python, which a
    venv's python run without activating the venv does not put on PATH."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _int8_linear_shape(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def _packed_linear_shape(
    x: torch.Tensor, packed: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], out_features))


def _float_linear_shape(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))
