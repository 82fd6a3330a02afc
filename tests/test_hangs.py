"""Issue 32's hangs: YAML aliases that repeat a shared structure 10^9 times ("billion laughs"), an over-large spec
file, a design space too large to expand, an SVG too large for graphviz.

Each case runs the CLI in a subprocess with a time limit; the limit is only a guard that turns a hang into a
failure (without the fix each of these ran for minutes and grew to gigabytes), the tests assert the message and
the exit code, not a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GUARD_S = 60  # far above the fixed run (well under a second of work), far below the unfixed one


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "archcalc", *args], capture_output=True, text=True,
                              timeout=GUARD_S, check=False)
    except subprocess.TimeoutExpired:
        pytest.fail(f"archcalc {' '.join(a[:60] for a in args)} still ran after {GUARD_S} s (a hang)")


def laughs(leaf: str, levels: int = 9) -> str:
    """A flow list of `levels` anchored lists, each of ten aliases of the one before: the last repeats `leaf`
    10**(levels) times, written in a few hundred bytes."""
    out = [f"&l0 [{', '.join([leaf] * 10)}]"]
    out += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "[" + ", ".join(out) + "]"


def nested_relus() -> str:
    """10^9 relus: sequences of ten sequences of ..., each level an alias of the one before."""
    items = [f"{{sequence: &l0 [{', '.join(['relu'] * 10)}]}}"]
    items += [f"{{sequence: &l{i} [{', '.join([f'{{sequence: *l{i - 1}}}'] * 10)}]}}" for i in range(1, 9)]
    return "[" + ", ".join(items) + "]"


ALIASES = {
    "argument value": f"layers:\n  - conv: {{out: 8, kernel: 3, padding: {laughs('1')}}}\n",
    "args list": f"args:\n  k: {laughs('1')}\nlayers:\n  - conv: {{out: 8, kernel: 3}}\n",
    "nested relus": f"layers:\n  - sequence: {nested_relus()}\n",
}


@pytest.mark.parametrize("body", ALIASES.values(), ids=ALIASES.keys())
def test_billion_laughs_in_a_spec_is_refused_at_load(tmp_path: Path, body: str) -> None:
    spec = tmp_path / "laughs.yaml"
    spec.write_text("name: laughs\ninput: 3x8x8\n" + body, encoding="utf-8")
    proc = cli("calc", str(spec))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{spec}:4:" in proc.stderr  # located at an alias on the line that uses them
    assert "YAML aliases (*name) repeat more than 100,000 values" in proc.stderr
    assert "Traceback" not in proc.stderr


SET_SPECS = {
    "list argument": "args:\n  j: 1\nlayers:\n  - conv: {out: 8, kernel: 3, padding: [j]}\n",
    "block argument": "args:\n  j: 1\nblocks:\n  b:\n    args: {x: 1}\n    layers: [relu]\nlayers:\n  - b: {x: j}\n",
}


@pytest.mark.parametrize("body", SET_SPECS.values(), ids=SET_SPECS.keys())
def test_billion_laughs_through_set_is_refused(tmp_path: Path, body: str) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\ninput: 3x8x8\n" + body, encoding="utf-8")
    proc = cli("calc", str(spec), "--set", f"j={laughs('1')}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "--set j: YAML aliases (*name) repeat more than 100,000 values" in proc.stderr


def test_aliases_that_repeat_little_are_fine(tmp_path: Path) -> None:
    """An anchor used a few times is ordinary YAML: the spec is read as if the aliased text were written out."""
    spec = tmp_path / "ok.yaml"
    spec.write_text("name: ok\ninput: 3x8x8\nlayers:\n  - conv: &c {out: 8, kernel: 3, padding: [1, 1]}\n"
                    "  - conv: *c\n", encoding="utf-8")
    proc = cli("calc", str(spec), "-f", "csv")
    assert proc.returncode == 0, proc.stderr
    # two convs of 8 filters 3x3: 3*9*8+8 = 224 and 8*9*8+8 = 584 parameters
    assert "224" in proc.stdout and "584" in proc.stdout


def test_a_spec_file_over_the_size_limit_is_refused_before_parsing(tmp_path: Path) -> None:
    spec = tmp_path / "big.yaml"
    line = "  - conv: {out: 8, kernel: 3, padding: 1}\n"  # 43 bytes
    spec.write_text("name: big\ninput: 3x8x8\nlayers:\n" + line * (8 * 2**20 // len(line) + 1), encoding="utf-8")
    proc = cli("calc", str(spec))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{spec}:1:1: the spec file is larger than 8 MiB, the limit" in proc.stderr


# ---- sweep: a design space is counted before it is expanded ----


def test_ranges_are_counted_not_expanded() -> None:
    from archcalc.core import sweep as sw

    huge = sw.split_values("1..1000000000000")  # 10^12 values, held as three integers
    assert sw.count_of(huge) == 10**12
    assert sw.count_of(sw.split_values("2..10..4")) == 3  # 2, 6, 10
    assert sw.count_of(sw.split_values("-3..3")) == 7
    assert sw.count_of(sw.split_values("0..10**40".replace("10**40", "1" + "0" * 40))) == 10**40 + 1


SWEEPS = {
    "10^6 points": (["--set", "width_mult=1..1000", "--set", "num_classes=1..1000"],
                    "the sweep has 1,000,000 points (1,000 width_mult x 1,000 num_classes x 1 input x 1 batch size), "
                    "more than --max-points 100,000"),
    "10^9 values": (["--set", "num_classes=1..1000000000"],
                    "the sweep has 1,000,000,000 points (1,000,000,000 num_classes x 1 input x 1 batch size)"),
    "10^12 product": (["--set", "width_mult=1..1000000", "--set", "num_classes=1..1000000"],
                      "the sweep has 1,000,000,000,000 points"),
    "10^8 batches": (["--batch", "1..100000000"], "--batch 1..100000000: 100,000,000 batch sizes, more than "
                     "--max-points 100,000"),
    "10^11 inputs": (["--input", "3x{1..100000000000}"], "--input '3x{1..100000000000}' lists 100,000,000,000 "
                     "inputs, more than --max-points 100,000"),
    "a lowered limit": (["--batch", "1,2", "--input", "3x{224,256}", "--max-points", "3"],
                        "the sweep has 4 points (2 inputs x 2 batch sizes), more than --max-points 3"),
    "too many jobs": (["-j", "1000"], "--jobs 1,000: at most 64 worker processes"),
}


@pytest.mark.parametrize(("args", "message"), SWEEPS.values(), ids=SWEEPS.keys())
def test_a_design_space_too_large_is_refused_before_expanding(args: list[str], message: str) -> None:
    proc = cli("sweep", "torchvision/mobilenet_v2", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_raised_max_points_allows_the_sweep() -> None:
    # 3 x 2 x 2 = 12 points, over a limit of 10 and within one of 12
    args = ["sweep", "lenet5", "--set", "num_classes=1..3", "--input", "1x{32,36}", "--batch", "1,2", "-f", "csv"]
    assert cli(*args, "--max-points", "10").returncode == 2
    proc = cli(*args, "--max-points", "12")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 + 12  # a header and one row per point
