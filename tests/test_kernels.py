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
        raise RuntimeError("Error building extension 'llmlab_kernels': g++: not found\nmore lines")

    monkeypatch.setattr(builder, "load", no_compiler)
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: "flags : avx512f avx512bw avx512_vnni")
    monkeypatch.setenv("LLMLAB_KERNELS_DIR", str(tmp_path / "kernels"))
    assert kernels.kernels_ready() is False
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert lines == ["warning: llmlab's CPU kernels could not be built (Error building extension 'llmlab_kernels': "
                     "g++: not found); using PyTorch's"]  # fmt: skip
    assert kernels.kernels_ready() is False  # tried once per process
    layer = Int8Linear.from_linear(torch.nn.Linear(32, 8), "absmax")
    with torch.no_grad():
        assert layer(torch.randn(2, 32)).shape == (2, 8)  # PyTorch's kernel


def test_llmlab_kernels_off_never_builds(fresh_state, monkeypatch):
    import torch.utils.cpp_extension as builder

    monkeypatch.setenv("LLMLAB_KERNELS", "off")
    monkeypatch.setattr(builder, "load", lambda **kwargs: pytest.fail("built although LLMLAB_KERNELS=off"))
    assert kernels.kernels_ready() is False


def test_built_kernels_are_kept_per_torch_version_and_cpu(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_KERNELS_DIR", str(tmp_path))
    folder = kernels.kernels_dir()
    assert folder.parent == tmp_path and torch.__version__ in folder.name and platform.machine() in folder.name
    monkeypatch.setattr(kernels, "_cpu_tag", lambda: "another-cpu")
    assert kernels.kernels_dir() != folder


def test_the_kernel_refuses_what_it_cannot_compute():
    if not kernels.kernels_ready():
        pytest.skip("llmlab's kernels are built on x86 with a compiler")
    weight, scales = torch.zeros(4, 8, dtype=torch.int8), torch.ones(4)
    with pytest.raises(RuntimeError, match="shapes do not match"):
        torch.ops.llmlab_kernels.int8_linear(torch.zeros(1, 9), weight, scales)
    with pytest.raises(RuntimeError, match="dtypes"):
        torch.ops.llmlab_kernels.int8_linear(torch.zeros(1, 8), weight.float(), scales)
    with pytest.raises(RuntimeError, match="at most 32768 input features"):
        torch.ops.llmlab_kernels.int8_linear(torch.zeros(1, 32769), torch.zeros(4, 32769, dtype=torch.int8), scales)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("width", [128, 100])  # 100: the last inputs past the vector loop take the scalar path
@pytest.mark.parametrize("rows", [1, 2, 3, 5])
def test_the_float_kernel_is_f_linear(dtype, width, rows):
    if not kernels.kernels_ready():
        pytest.skip("llmlab's kernels are built on x86 with a compiler")
    torch.manual_seed(0)
    x, w, b = torch.randn(rows, width).to(dtype), torch.randn(24, width).to(dtype), torch.randn(24)
    want = torch.nn.functional.linear(x.float(), w.float(), b)
    got = torch.ops.llmlab_kernels.float_linear(x, w, b)
    assert got.dtype == dtype and got.shape == (rows, 24)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05  # bf16: the output's own rounding
    torch.testing.assert_close(got.float(), want, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(torch.ops.llmlab_kernels.float_linear(x, w, None).float(), want - b, rtol=tolerance,
                               atol=tolerance)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_packed_layer_gives_the_same_product_for_few_rows_and_many(dtype):
    from llmlab.model.cpu_packing import FEW_ROWS, PackedLinear, can_pack

    linear = torch.nn.Linear(96, 40).to(dtype)
    if not can_pack(linear):
        pytest.skip("oneDNN packing needs a CPU that has it")
    packed = PackedLinear(linear)
    x = torch.randn(FEW_ROWS + 5, 96).to(dtype)
    with torch.inference_mode():
        few, many, want = packed(x[:FEW_ROWS]), packed(x), linear(x)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(few.float(), want[:FEW_ROWS].float(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(many.float(), want.float(), rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 8])
def test_the_compiled_step_s_packed_operator_decides_as_the_python_one(dtype, rows):
    from llmlab.model.cpu_packing import PackedLinear, can_pack, packed_linear

    linear = torch.nn.Linear(96, 40).to(dtype)
    if not (can_pack(linear) and kernels.kernels_ready()):
        pytest.skip("needs oneDNN packing and llmlab's kernels")
    layer = PackedLinear(linear)
    x = torch.randn(2, rows, 96).to(dtype)
    with torch.inference_mode():
        args = (x, layer.packed, linear.weight.detach(), layer.bias, 40)
        native, python = torch.ops.llmlab_kernels.packed_linear(*args), packed_linear(*args)
    assert native.shape == python.shape == (2, rows, 40) and native.dtype == dtype
    assert torch.equal(native, python)  # both choose by rows (2 x 1 <= 3: llmlab's kernel; 6 and 16: oneDNN's)


def test_the_int8_kernel_s_sums_do_not_overflow_at_llama_widths():
    if not kernels.kernels_ready():
        pytest.skip("llmlab's kernels are built on x86 with a compiler")
    x, w = torch.ones(1, 4096), torch.full((2, 4096), 127, dtype=torch.int8)
    y = torch.ops.llmlab_kernels.int8_linear(x, w, torch.ones(2))  # 4096 x 8191 x 127 > 2^31, in the 14-bit units
    torch.testing.assert_close(y, torch.full((1, 2), 4096 * 127.0), rtol=1e-6, atol=0)
    # a block of 4 rows at the widest input allowed, with the most negative weight
    x, w = torch.ones(4, 32768), torch.full((4, 32768), -128, dtype=torch.int8)
    y = torch.ops.llmlab_kernels.int8_linear(x, w, torch.ones(4))
    torch.testing.assert_close(y, torch.full((4, 4), -32768 * 128.0), rtol=1e-6, atol=0)


def test_a_cpu_without_avx512_keeps_pytorch_s_kernels(fresh_state, monkeypatch):
    import torch.utils.cpp_extension as builder

    monkeypatch.setattr(kernels, "_cpu_flags", lambda: "flags : fpu sse2 avx2 fma")
    monkeypatch.setattr(builder, "load", lambda **kwargs: pytest.fail("built for a CPU its loops would be slow on"))
    assert kernels.kernels_ready() is False
