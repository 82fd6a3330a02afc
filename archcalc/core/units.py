"""Number formatting for display. Counts stay integers everywhere else; units appear only here."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

from archcalc.core.kinds.base import Tokens

_SI = ("", " K", " M", " G", " T", " P")
_BIN = (" B", " KiB", " MiB", " GiB", " TiB", " PiB")


def grouped(n: int) -> str:
    """1234567 -> '1,234,567'."""
    return f"{n:,}"


def _scaled(n: float, base: int, suffixes: Sequence[str], small: str) -> str:
    if abs(n) < base:
        return small
    value, i = float(n), 0
    while True:
        rounded = abs(float(f"{value:.3g}"))  # three significant digits
        text = f"{value:.0f}" if rounded >= 100 else f"{value:.1f}" if rounded >= 10 else f"{value:.2f}"
        if abs(float(text)) < base or i == len(suffixes) - 1:
            break
        value /= base
        i += 1
    return text + suffixes[i]


# The formatters are pure, and a network repeats the same few values: large tables format each one once.
@lru_cache(maxsize=8192)
def si(n: int) -> str:
    """A count with SI prefixes, three significant digits: 999 -> '999', 1000 -> '1.00 K', 15_470_264_320 ->
    '15.5 G'."""
    return _scaled(n, 1000, _SI, str(n))


@lru_cache(maxsize=8192)
def nbytes(n: int) -> str:
    """Bytes with binary prefixes (1 KiB = 1024 B, as the lecture tables' 'memory (KB)')."""
    return _scaled(n, 1024, _BIN, f"{n} B")


def dims(shape: Sequence[int]) -> str:
    """'3×224×224' for a grid (channels first); '197 tok×768' for a token sequence (N tokens of C channels)."""
    if isinstance(shape, Tokens):  # before the cache: a Tokens equals the plain tuple (N, C)
        return f"{shape[0]} tok×{shape[1]}"
    return _dims(shape) if isinstance(shape, tuple) else "×".join(map(str, shape))


@lru_cache(maxsize=8192)
def _dims(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape))


def fraction(value: int | Fraction) -> str:
    if isinstance(value, int):
        return str(value)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def axes(values: Sequence[object]) -> str:
    return _axes(values) if isinstance(values, tuple) else _axes_text(values)


@lru_cache(maxsize=8192)
def _axes(values: tuple[object, ...]) -> str:
    return _axes_text(values)


def _axes_text(values: Sequence[object]) -> str:
    texts = [fraction(v) if isinstance(v, (int, Fraction)) else str(v) for v in values]
    if not texts:
        return "-"
    return texts[0] if len(set(texts)) == 1 else "×".join(texts)


def flops_rate(per_second: float) -> str:
    """A FLOP rate with an SI prefix, three significant digits: 4.2e8 -> '420 MFLOPS', 1.5e12 -> '1.50 TFLOPS'
    (small networks on a CPU run at GFLOPS, where a fixed TFLOPS column reads 0.000)."""
    text = si(round(per_second))
    return text + ("FLOPS" if text.endswith((" K", " M", " G", " T", " P")) else " FLOPS")


# ---- reading human units (budgets, --fit) -------------------------------------------------------------------------

_COUNT_SUFFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BYTE_SUFFIX = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_NUMBER = r"(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"


def _parse(text: str, suffixes: dict[str, int], what: str, example: str) -> int:
    import re
    from fractions import Fraction

    match = re.fullmatch(_NUMBER + r"\s*([A-Za-z]*)", text.strip().replace("_", "").replace(",", ""))
    if not match or match.group(2).lower() not in suffixes:
        raise ValueError(f"expected {what} such as {example}, not '{text}'")
    exponent = re.search(r"[eE][-+]?0*(\d*)$", match.group(1))
    if exponent and len(exponent.group(1)) > 2:  # |exponent| >= 100: exact arithmetic would compute 10**exponent
        raise ValueError(f"'{text}' is out of range: {what} is at most {MAX_PARSED:,} (2^63)")
    value = Fraction(match.group(1)) * suffixes[match.group(2).lower()]  # exact: 1.5GiB is 1610612736
    if value < 0:
        raise ValueError(f"expected a non-negative {what}, not '{text}'")
    if value > MAX_PARSED:
        raise ValueError(f"'{text}' is out of range: {what} is at most {MAX_PARSED:,} (2^63)")
    return int(value)  # whole units; a fraction of a byte or a parameter rounds down


MAX_PARSED = 2**63
"""The largest count or size read from the command line: every figure archcalc computes stays within 2^63."""


def parse_count(text: str) -> int:
    """'5M' -> 5_000_000, '600M', '1.5G', '5e6', '25557032' (SI suffixes K, M, G, T; case-insensitive)."""
    return _parse(text, _COUNT_SUFFIX, "a count", "5M, 600M, 1.5G or 5e6")


def parse_bytes(text: str) -> int:
    """'512MiB' -> 536_870_912, '8GiB', '24GB' (binary KiB/MiB/GiB/TiB = 1024^n, decimal KB/MB/GB/TB = 1000^n,
    B or no suffix for bytes)."""
    if text.strip()[-1:].lower() in ("k", "m", "g", "t"):
        raise ValueError(f"'{text}': say GiB (2^30 bytes) or GB (10^9 bytes)")
    suffixes = {**_BYTE_SUFFIX, "": 1}
    return _parse(text, suffixes, "a size", "512MiB, 8GiB or 24GB")
