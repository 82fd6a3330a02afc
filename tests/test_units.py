"""Formatting boundaries (999 / 1,000 / 1.00 K are where formatting bugs live) and the expression evaluator."""

from __future__ import annotations

from fractions import Fraction

import pytest

from archcalc.core.expr import ExprError, evaluate
from archcalc.core.units import axes, flops_rate, grouped, nbytes, si


@pytest.mark.parametrize(("n", "text"), [
    (0, "0"), (999, "999"), (1000, "1.00 K"), (1234, "1.23 K"), (9994, "9.99 K"), (9999, "10.0 K"),
    (99_949, "99.9 K"), (99_999, "100 K"), (999_499, "999 K"), (999_999, "1.00 M"), (1_000_000, "1.00 M"),
    (15_470_264_320, "15.5 G"), (138_357_544, "138 M"),
])
def test_si(n: int, text: str) -> None:
    assert si(n) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.00 KiB"), (3136 * 1024, "3.06 MiB"), (1_048_575, "1.00 MiB"),
    (802_816, "784 KiB"),
])
def test_nbytes(n: int, text: str) -> None:
    assert nbytes(n) == text


@pytest.mark.parametrize(("rate", "text"), [
    (0.0, "0 FLOPS"), (999.4, "999 FLOPS"), (1000.0, "1.00 KFLOPS"), (6.84e9, "6.84 GFLOPS"),
    (40.5e9, "40.5 GFLOPS"), (999.6e9, "1.00 TFLOPS"), (1.5e12, "1.50 TFLOPS"), (989.4e12, "989 TFLOPS"),
])
def test_flops_rate(rate: float, text: str) -> None:
    # Small networks on a CPU run at GFLOPS: a fixed TFLOPS column would print 0.000.
    assert flops_rate(rate) == text


def test_grouped_and_axes() -> None:
    assert grouped(1234567) == "1,234,567"
    assert axes([3, 3]) == "3" and axes([3, 5]) == "3×5" and axes([Fraction(1, 2)]) == "1/2" and axes([]) == "-"


@pytest.mark.parametrize(("text", "value"), [
    ("4 * width", 256), ("(width + 1) // 2", 32), ("width / 2", 32), ("7 / 2", 3.5), ("-3 + 2 ** 3", 5),
    ("min(width, 10) + max(1, 2)", 12), ("ceil_div(width, 3)", 22), ("round_to(32 * 0.75, 8)", 24),
    ("width % 5", 4), ("pad", "same"),
    # ceil/floor/round give ints; round halves to even (Python's round, like torch.round in RegNet's quantization).
    ("ceil(2 * 1.1)", 3), ("floor(7 / 2)", 3), ("round(2.5)", 2), ("round(3.5)", 4), ("round(48 * 2.09 ** 1 / 8)", 13),
])
def test_expressions(text: str, value: object) -> None:
    assert evaluate(text, {"width": 64, "pad": "same"}) == value


@pytest.mark.parametrize("text", ["__import__('os')", "width.real", "width[0]", "1 +", "foo(1)", "2 ** 1000",
                                  "1 / 0", "lambda: 1", "'a'"])
def test_expressions_reject_anything_else(text: str) -> None:
    with pytest.raises(ExprError):
        evaluate(text, {"width": 64})
