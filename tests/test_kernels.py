"""llmlab's native kernels: built once per torch version and CPU into their folder, loaded after that; a build
that cannot happen (no compiler) is one warning line and PyTorch's kernels serve; LLMLAB_KERNELS=off skips it."""

from __future__ import annotations

import platform

import pytest
import torch

from llmlab import kernels
from llmlab.model.quantize import Int8Linear


@pytest.fixture
def fresh_state(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {})


def test_a_failed_build_is_one_warning_and_pytorch_s_kernel_serves(fresh_state, monkeypatch, capsys, tmp_path):
    import torch.utils.cpp_extension as builder

    def no_compiler(**kwargs):
        raise RuntimeError("Error building extension 'llmlab_int8': g++: not found\nmore lines")

    monkeypatch.setattr(builder, "load", no_compiler)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("LLMLAB_KERNELS_DIR", str(tmp_path / "kernels"))
    assert kernels.int8_linear_ready() is False
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert lines == ["warning: llmlab's int8 kernel could not be built (Error building extension 'llmlab_int8': "
                     "g++: not found); using PyTorch's"]  # fmt: skip
    assert kernels.int8_linear_ready() is False  # tried once per process
    layer = Int8Linear.from_linear(torch.nn.Linear(32, 8), "absmax")
    with torch.no_grad():
        assert layer(torch.randn(2, 32)).shape == (2, 8)  # PyTorch's kernel


def test_llmlab_kernels_off_never_builds(fresh_state, monkeypatch):
    import torch.utils.cpp_extension as builder

    monkeypatch.setenv("LLMLAB_KERNELS", "off")
    monkeypatch.setattr(builder, "load", lambda **kwargs: pytest.fail("built although LLMLAB_KERNELS=off"))
    assert kernels.int8_linear_ready() is False


def test_built_kernels_are_kept_per_torch_version_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_KERNELS_DIR", str(tmp_path))
    folder = kernels.kernels_dir()
    assert folder.parent == tmp_path and torch.__version__ in folder.name and platform.machine() in folder.name
    monkeypatch.setattr(kernels, "_cpu_tag", lambda: "another-cpu")
    assert kernels.kernels_dir() != folder


def test_the_kernel_refuses_what_it_cannot_compute():
    if not kernels.int8_linear_ready():
        pytest.skip("llmlab's int8 kernel is built on x86 with a compiler")
    weight, scales = torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        torch.ops.llmlab_kernels.int8_linear(torch.zeros(1, 9), weight, scales)
    with pytest.raises(RuntimeError, match="dtypes"):
        torch.ops.llmlab_kernels.int8_linear(torch.zeros(1, 8), weight.float(), scales)
    with pytest.raises(RuntimeError, match="at most 32768 input features"):
        torch.ops.llmlab_kernels.int8_linear(torch.zeros(1, 32769), torch.zeros(4, 32769, dtype=torch.int8), scales)
