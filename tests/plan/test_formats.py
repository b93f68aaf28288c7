import math

import pytest

from llmlab.cli import main
from llmlab.plan.formats import encode_float, quantize_int8


def test_pi_is_stored_as_the_course_shows():
    assert f"{encode_float(math.pi, 'fp32').stored:.7f}" == "3.1415927"
    assert encode_float(math.pi, "fp16").stored == 3.140625
    assert encode_float(math.pi, "bf16").stored == 3.140625


def test_bit_fields_follow_ieee_754_and_bfloat16():
    one = encode_float(1.0, "fp32")
    assert (one.sign, one.exponent, one.fraction) == ("0", "01111111", "0" * 23)
    minus_two = encode_float(-2.0, "fp16")
    assert (minus_two.sign, minus_two.exponent, minus_two.fraction) == ("1", "10000", "0" * 10)
    pi = encode_float(math.pi, "bf16")  # bf16 is the top half of fp32
    assert pi.bits.replace(" ", "") == encode_float(math.pi, "fp32").bits.replace(" ", "")[:16]


@pytest.mark.parametrize(
    "name,max_value,smallest_normal,eps",
    [
        ("fp32", 3.4028234663852886e38, 2.0**-126, 2.0**-23),
        ("fp16", 65504.0, 2.0**-14, 2.0**-10),
        ("bf16", 3.3895313892515355e38, 2.0**-126, 2.0**-7),
        ("fp8-e4m3", 448.0, 2.0**-6, 2.0**-3),
        ("fp8-e5m2", 57344.0, 2.0**-14, 2.0**-2),
    ],
)
def test_format_ranges(name, max_value, smallest_normal, eps):
    f = encode_float(1.0, name)
    assert (f.max, f.smallest_normal, f.eps) == (max_value, smallest_normal, eps)


def test_int8_absmax_and_zero_point():
    absmax = quantize_int8([math.pi, -1.0, 0.5], "absmax")
    assert absmax.quantized == [127, -40, 20]  # round(x * 127 / pi)
    assert absmax.dequantized[0] == pytest.approx(math.pi)
    zp = quantize_int8([math.pi, -1.0, 0.5], "zeropoint")
    assert zp.quantized[0] == 127 and zp.quantized[1] == -128  # the range's ends use both ends of int8
    assert zp.max_abs_error <= 0.5 / zp.scale + 1e-12  # at most half a step


def test_cli_formats_prints_the_three_pi_values(capsys):
    assert main(["plan", "formats", "3.141592653589793"]) == 0
    out = capsys.readouterr().out
    assert "3.141592741" in out and out.count("3.140625") == 2


def test_cli_formats_refuses_a_tensor_that_is_not_numbers(capsys):
    assert main(["plan", "formats", "1", "--tensor", "a,b"]) == 2
    assert "is not a list of numbers" in capsys.readouterr().err
