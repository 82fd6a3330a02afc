"""`archcalc sweep` and `archcalc check`: rows equal independent `calc` runs; Pareto and --where on hand-checked
rows; budget exit codes."""

from __future__ import annotations

import json

import pytest
from conftest import exits_cleanly
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core import sweep as sw
from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
from archcalc.core.settings import Settings
from archcalc.core.spec import open_spec
from archcalc.core.training import step_peaks, training_flops, training_memory, training_report

runner = CliRunner()


def _json(*args: str) -> dict:  # type: ignore[type-arg]
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("extra", [[], ["--optimizer", "adam", "--dtype", "float16"],
                                   ["--amp", "bf16", "--optimizer", "adamw", "-c", "fvcore"]])
def test_sweep_rows_equal_independent_calc_runs(extra: list[str]) -> None:
    data = _json("sweep", "resnet50", "--set", "d1=1,2", "--set", "num_classes=10", "--input", "3x{32,48}",
                 "--batch", "1,3,8", "-f", "json", *extra)
    rows = data["rows"]
    assert len(rows) == 2 * 1 * 2 * 3
    for row in rows:
        size = row["input"][1]
        calc = _json("calc", "resnet50", "--set", f"d1={row['set']['d1']}", "--set", "num_classes=10", "--input",
                     f"3x{size}x{size}", "-b", str(row["batch"]), "-f", "json", *extra)
        t = calc["totals"]
        assert (row["params"], row["macs"], row["flops"], row["activation_bytes"], row["peak_inference_bytes"]) == \
               (t["params"], t["macs"], t["flops"], t["activation_bytes"], t["peak_inference_bytes"])
        peak = calc["training_peak"]  # the step's exact peak (every step: the first and a later one); amp: the bound
        assert row["training_bytes"] == (calc["training_memory"]["total_bytes"] if peak is None else
                                         max(peak["later_step"]["bytes"], peak["first_step"]["bytes"]))
        assert row["training_flops"] == calc["training_flops"]["total"]


@pytest.mark.parametrize("name", ["torchvision/mobilenet_v2", "googlenet", "torchvision/densenet121", "vgg11_lrn",
                                  "torchvision/efficientnet_b0", "alexnet"])
def test_batch_arithmetic_matches_analyze_at_every_batch(name: str) -> None:
    """The sweep analyzes once per structure and derives other batches; analyze() at each batch is the oracle."""
    for options in (Settings(), Settings(dtype="bfloat16", convention="full", optimizer="momentum"),
                    Settings(amp="bf16"), Settings(device="cpu", input_requires_grad=True, optimizer="adam")):
        rows = sw.Sweep(name, options).run(sw.points([], [None], [1, 2, 5, 16]))
        for row in rows:
            b = row.point.batch
            report = analyze(open_spec(name), batch=b, dtype=options.dtype, convention=options.convention,
                             device=options.device, input_requires_grad=options.input_requires_grad)
            t = report.totals
            train = training_report(open_spec(name), batch=b, dtype=options.dtype, amp=options.amp,
                                    device=options.device, input_requires_grad=options.input_requires_grad)
            assert row.values == {
                "params": t.params, "macs": t.macs, "flops": t.flops, "activation_bytes": t.activation_bytes,
                "peak_inference_bytes": t.peak_bytes,
                "training_bytes": training_memory(train, options.optimizer, options.amp).total if options.amp
                else max(p.peak for p in step_peaks(report, options.optimizer)),
                "training_flops": training_flops(report).total}, (name, options, b)


def test_failing_points_are_rows_with_the_error() -> None:
    data = _json("sweep", "lenet5", "--input", "1x{8,32}", "-f", "json")
    small, ok = data["rows"]
    assert "error" in small and "larger than the padded input" in small["error"] and "params" not in small
    assert ok["params"] == 61750 and "error" not in ok  # LeNet-5 as the paper counts (no error)


def _row(macs: int, params: int, batch: int = 1) -> sw.SweepRow:
    values = dict.fromkeys(sw.COLUMNS, 0) | {"macs": macs, "params": params}
    return sw.SweepRow(sw.Point((("w", str(macs)),), None, batch), (3, 8, 8), values)


def test_pareto_on_a_hand_checked_set() -> None:
    a, b, c, d, e = _row(1, 5), _row(2, 2), _row(3, 3), _row(2, 2), _row(5, 1)
    failed = sw.SweepRow(sw.Point((), None, 1), (3, 8, 8), None, "too small")
    marked = sw.pareto([a, b, c, d, e, failed], ["macs", "params"])
    # c (3, 3) is beaten by b (2, 2) in both; b and d tie, so neither dominates the other
    assert [r.pareto for r in marked] == [True, True, False, True, True, False]
    assert [r.pareto for r in sw.pareto([a, b, c], ["params"])] == [False, True, False]
    # maximizing params for the MACs: a (1, 5) beats every row with more MACs and fewer params (b, c, d, e)
    assert [r.pareto for r in sw.pareto([a, b, c, d, e], ["macs", "-params"])] == [True, False, False, False, False]
    assert [r.pareto for r in sw.pareto([b, c, e], ["macs", "-params"])] == [True, True, False]
    # a --set name as an objective: c has more w and fewer params than a
    assert [r.pareto for r in sw.pareto([a, c], ["-w", "params"], ["w"])] == [False, True]
    with pytest.raises(ArchcalcError, match="did you mean 'macs'"):
        sw.pareto([a], ["mac"])


def test_where_on_a_hand_checked_set() -> None:
    rows = [_row(1, 5), _row(2, 2, batch=8), _row(3, 3), _row(5, 1)]
    assert sw.where(rows, "params < 3") == [rows[1], rows[3]]
    assert sw.where(rows, "macs >= 2 and params <= 2") == [rows[1], rows[3]]
    assert sw.where(rows, "macs * params == 4 and batch > 1") == [rows[1]]
    assert sw.where(rows, "w == 3") == [rows[2]]  # a --set name
    assert sw.where(rows, "resolution == 8 and params < 5e6") == rows
    with pytest.raises(ArchcalcError, match="unknown name 'parms'"):
        sw.where(rows, "parms < 3")
    with pytest.raises(ArchcalcError, match="compares two expressions"):
        sw.where(rows, "params")
    with pytest.raises(ArchcalcError, match="unexpected character"):
        sw.where(rows, "__import__('os') < 1")


def test_pareto_where_and_sort_through_the_cli() -> None:
    data = _json("sweep", "resnet50", "--set", "d3=2..6..2", "--input", "3x{32,64}", "--where", "d3 <= 4",
                 "--pareto", "macs,params", "--sort", "macs", "-f", "json")
    rows = data["rows"]
    assert [(r["set"]["d3"], r["input"][1]) for r in rows] == [("2", 32), ("4", 32), ("2", 64), ("4", 64)]
    # fewer blocks and a smaller input cost less of both: only the smallest point is optimal
    assert [r["pareto"] for r in rows] == [True, False, False, False]
    only = _json("sweep", "resnet50", "--set", "d3=2..6..2", "--pareto", "macs,params", "--pareto-only", "-f",
                 "json")["rows"]
    assert [r["set"]["d3"] for r in only] == ["2"]


def test_value_lists() -> None:
    assert sw.expand(sw.split_values("2..6")) == ["2", "3", "4", "5", "6"]
    assert sw.expand(sw.split_values("2..10..4")) == ["2", "6", "10"]
    assert sw.parse_batches("1..4") == [1, 2, 3, 4]
    assert sw.split_values("0.5, 0.75,1") == ["0.5", "0.75", "1"]
    assert sw.split_values("round_to(3, 2),4") == ["round_to(3, 2)", "4"]
    assert sw.parse_inputs("3x{128,160}") == [(3, 128, 128), (3, 160, 160)]
    assert sw.parse_inputs("3x{128,160}x224") == [(3, 128, 224), (3, 160, 224)]
    assert sw.parse_inputs("1x{8..16..8}", 1) == [(1, 8), (1, 16)]
    assert sw.parse_batches("1,8,64") == [1, 8, 64]
    with pytest.raises(ArchcalcError):
        sw.parse_batches("0,1")
    with pytest.raises(ArchcalcError):
        sw.split_values("6..2")


@pytest.mark.parametrize(("args", "code"), [
    (["--set", "d9=1,2"], 2), (["--set", "d1"], 2), (["--batch", "x"], 2), (["--sort", "mac"], 2),
    (["--where", "params"], 2), (["--input", "3x{a,b}"], 2),
])
def test_sweep_bad_input_exits_2(args: list[str], code: int) -> None:
    result = runner.invoke(app, ["sweep", "resnet50", *args])
    exits_cleanly(result, code)


def test_sweep_formats() -> None:
    for fmt, marker in (("table", "training memory"), ("csv", "params,macs"), ("md", "| d1 |")):
        result = runner.invoke(app, ["sweep", "resnet50", "--set", "d1=1,2", "--input", "3x32", "-f", fmt])
        assert result.exit_code == 0, result.output
        assert marker in result.stdout


# ---- check --------------------------------------------------------------------------------------------------------

def test_check_within_budget_exits_0() -> None:
    result = runner.invoke(app, ["check", "resnet50", "--max-params", "26M", "--max-macs", "4G",
                                 "--max-peak-memory", "512MiB", "--max-train-memory", "8GiB"])
    assert result.exit_code == 0, result.output
    assert "0 of 4 budgets exceeded" in result.stdout


def test_check_names_every_exceeded_budget_and_by_how_much() -> None:
    result = runner.invoke(app, ["check", "resnet50", "--max-params", "5M", "--max-macs", "600M",
                                 "--max-peak-memory", "512MiB", "--max-train-memory", "1MiB"])
    assert result.exit_code == 1, result.output
    out = result.stdout
    # ResNet-50 has 25,557,032 parameters (torchvision's num_params): 20,557,032 over a budget of 5,000,000
    assert "exceeds --max-params 5.00 M (5,000,000) by 20.6 M (20,557,032)" in out
    assert "over  macs" in out and "over  train_memory" in out and "ok    peak_memory" in out
    assert "3 of 4 budgets exceeded: params, macs, train_memory" in out
    data = json.loads(runner.invoke(app, ["check", "resnet50", "--max-params", "5M", "-f", "json"]).stdout)
    assert data["ok"] is False and data["budgets"][0]["over"] == 25_557_032 - 5_000_000


@pytest.mark.parametrize("args", [["--max-params", "5X"], ["--max-peak-memory", "512M"], []])
def test_check_bad_budgets_exit_2(args: list[str]) -> None:
    result = runner.invoke(app, ["check", "resnet50", *args])
    assert result.exit_code == 2, result.output


def test_sweep_and_check_never_import_torch() -> None:
    import subprocess
    import sys

    code = ("import sys\nfrom archcalc.cli.app import app\n"
            "for args in (['sweep', 'resnet50', '--set', 'd1=1..3', '--batch', '1,4', '-j', '2', '-f', 'json'],\n"
            "             ['check', 'resnet50', '--max-params', '30M', '--max-train-memory', '8GiB']):\n"
            "    try:\n        app(args, prog_name='archcalc')\n"
            "    except SystemExit as e:\n        assert not e.code, e.code\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fvcore', 'numpy'))\n"
            "print('IMPORTED', bad)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout


def test_worker_processes_give_the_same_rows() -> None:
    pts = sw.points([("d1", ["1", "2"]), ("d2", ["1", "2", "3"])], [(3, 32, 32), (3, 16, 16)], [1, 4])
    one = sw.Sweep("resnet50").run(pts, jobs=1)
    two = sw.Sweep("resnet50").run(pts, jobs=2)
    assert one == two and len(one) == 24
