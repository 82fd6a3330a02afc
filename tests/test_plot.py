"""`--plot FILE`: the series behind each picture equal the reports' own numbers (and hand arithmetic for the memory
timeline); files are written and non-empty; labels of long networks are grouped so they cannot overlap; without
matplotlib `--plot` exits 2 with the pip command; `calc --plot` never imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import report_of
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.memory import inference_timeline
from archcalc.core.settings import Settings
from archcalc.plot import data

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT / "docs" / "img"
runner = CliRunner()

HAND = """name: t
input: [1, 4, 4]
layers:
  - conv: {out: 2, kernel: 1}
  - relu
  - conv: {out: 1, kernel: 1}
  - maxpool: {kernel: 2}
"""


def invoke(args: list[str]):  # type: ignore[no-untyped-def]
    result = runner.invoke(app, args)
    return result


def png_text(path: Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file (keyword -> text), read with the standard library."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    out: dict[str, str] = {}
    i = 8
    while i < len(blob):
        length = int.from_bytes(blob[i:i + 4], "big")
        kind = blob[i + 4:i + 8]
        body = blob[i + 8:i + 8 + length]
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            out[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        i += 12 + length
    return out


def png_size(path: Path) -> tuple[int, int]:
    blob = path.read_bytes()
    return int.from_bytes(blob[16:20], "big"), int.from_bytes(blob[20:24], "big")


# ---- the memory timeline ------------------------------------------------------------------------------------------

def test_timeline_of_a_small_network_by_hand(write_spec) -> None:  # type: ignore[no-untyped-def]
    from archcalc.core.analyze import analyze
    from archcalc.core.spec import load_spec

    report = analyze(load_spec(write_spec(HAND)))
    tl = data.calc_plot(report).timeline
    # float32, batch 1. input 1x4x4 = 16 values = 64 B, alive throughout (the caller holds it).
    # conv1 runs: input 64 + its output 2x4x4 = 128 -> 192; conv1's output lives on (relu reads it).
    # relu runs: 64 + 128 + relu's output 128 = 320; then conv1's output is freed (relu was its last reader).
    # conv2 runs: 64 + 128 + conv2's output 1x4x4 = 64 -> 256; relu's output freed after.
    # pool1 runs: 64 + 64 + its output 1x2x2 = 16, + the int64 indices 4 x 8 = 32 (temporaries) -> 176.
    assert tl.start == 64
    assert tl.alive == (192, 320, 256, 176)
    assert (tl.peak, tl.peak_index) == (320, 1)
    assert sorted(tl.peak_tensors) == sorted([("input", 64), ("conv1", 128), ("relu1", 128)])
    # parameters: conv1 2*1 + 2 = 4, conv2 2 + 1 = 3 -> 7 values = 28 B
    assert tl.constant == 28
    assert tl.peak + tl.constant == report.totals.peak_bytes == 348
    # Training forward: conv1 keeps its input for the weight gradient (64); relu keeps its output (128 -> 192);
    # conv2 keeps its input, relu's output, already kept (192); max pooling keeps its input, conv2's output (64),
    # and the int64 indices (32) -> 288.
    assert tl.saved == (64, 192, 192, 288)
    assert tl.saved[-1] == report.totals.saved_bytes


@pytest.mark.parametrize("name", ["resnet50", "vgg16", "googlenet", "unet", "fpn_resnet50",
                                  "torchvision/mobilenet_v2", "torchvision/efficientnet_b0", "alexnet"])
def test_timeline_peak_and_saved_totals_are_the_reports(name: str) -> None:
    # alexnet: LRN's intermediates are temporaries of the op that runs
    for kwargs in ({}, {"batch": 3, "dtype": "float16"}):
        report = report_of(name, **kwargs)  # type: ignore[arg-type]
        tl = data.calc_plot(report).timeline
        assert max([tl.start, *tl.alive]) == tl.peak
        assert tl.peak + report.totals.param_bytes + report.totals.buffer_bytes == report.totals.peak_bytes
        assert tl.saved[-1] == report.totals.saved_bytes
        assert len(tl.alive) == len(report.rows) == len(tl.saved)
        assert all(a <= b for a, b in zip(tl.saved, tl.saved[1:]))  # saved bytes only accumulate
        # the tensors named at the peak add up to it (temporaries of the running op included)
        assert sum(b for _, b in tl.peak_tensors) == tl.peak


def test_timeline_alive_tensors_are_what_is_held() -> None:
    # ResNet-50's first bottleneck: while its projection shortcut's batch norm runs, the block's input (maxpool's
    # output) is still held, so is the body's result (bn3), and the shortcut's conv and bn outputs: 56x56x256
    # floats = 3.06 MiB each, maxpool's 64x56x56 = 784 KiB and the 3x224x224 input = 588 KiB.
    report = report_of("resnet50")
    tl = data.calc_plot(report).timeline
    assert tl.axis.names[tl.peak_index] == "layer1.0.shortcut.bn1"
    assert dict(tl.peak_tensors) == {"layer1.0.bn3": 256 * 56 * 56 * 4, "layer1.0.shortcut.conv1": 256 * 56 * 56 * 4,
                                     "layer1.0.shortcut.bn1": 256 * 56 * 56 * 4, "maxpool": 64 * 56 * 56 * 4,
                                     "input": 3 * 224 * 224 * 4}
    walk = inference_timeline(report.graph, report.itemsize, report.batch)
    assert walk.peak_step == tl.peak_index


# ---- the training step --------------------------------------------------------------------------------------------

def test_training_timeline_is_the_steps() -> None:
    # LeNet-5 at batch 8 with Adam on the CPU: tests/test_training_step.py measures this step's peak, 1,471,792 B
    # at the backward of tanh1 (a later step) and 1,404,888 B at the optimizer step (the first)
    from archcalc.core.training import step_peaks

    report = report_of("lenet5", batch=8, device="cpu", optimizer="adam")
    tt = data.calc_plot(report).training
    assert tt is not None
    later, first = step_peaks(report, "adam")
    assert (tt.peak, tt.first_peak, tt.where) == (later.peak, first.peak, "backward of tanh1")
    assert max(tt.running) == tt.running[tt.peak_index] == tt.peak
    # one position per forward op (15), the loss, each backward op autograd runs (C1 to output: 15) and the
    # optimizer step
    assert len(tt.running) == 15 + 1 + 15 + 1
    assert [g.name for g in tt.phases] == ["forward", "loss", "backward", "optimizer"]
    assert tt.axis.names[tt.peak_index] == "tanh1" and tt.peak_index > 16  # in backward
    assert min(tt.running) >= tt.before == later.before
    assert sum(n for _, n in tt.holders) == tt.peak  # the layers' shares and the inputs, loss and seed
    assert tt.running[-1] == later.before + later.optimizer


def test_no_training_timeline_under_amp() -> None:
    report = report_of("lenet5")
    train = report_of("lenet5", dtype="bfloat16")
    assert data.calc_plot(report, train=train).training is None


# ---- the bars and their labels ------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [None, 1, 2])
def test_bars_are_the_rows_calc_prints(depth: int | None) -> None:
    args = ["calc", "resnet50", "-f", "json"] + (["--depth", str(depth)] if depth else [])
    result = invoke(args)
    assert result.exit_code == 0, result.output
    layers = json.loads(result.stdout)["layers"]
    plot = data.calc_plot(report_of("resnet50"), depth)
    assert plot.bars.axis.names == tuple(row["name"] for row in layers)
    assert plot.bars.macs == tuple(row["macs"] for row in layers)
    assert plot.bars.params == tuple(row["params"] for row in layers)
    assert plot.bars.activation_bytes == tuple(row["activation_bytes"] for row in layers)
    totals = json.loads(result.stdout)["totals"]
    assert sum(plot.bars.macs) == totals["macs"] and sum(plot.bars.params) == totals["params"]


def test_long_network_labels_are_its_blocks() -> None:
    # ResNet-50's 174 layers: the stem's four layers share a label, then its 16 bottlenecks (3 + 4 + 6 + 3), then
    # the head's two layers.
    axis = data.calc_plot(report_of("resnet50")).bars.axis
    blocks = [f"layer{s}.{b}" for s, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for b in range(n)]
    assert [g.name for g in axis.labels] == ["conv1 … maxpool", *blocks, "avgpool … fc"]
    assert axis.labels[0] == data.Group("conv1 … maxpool", 0, 4)


def test_labels_prefer_blocks_to_ranges_of_layers() -> None:
    # EfficientNet-B0's 240 rows: its 16 MBConv blocks (1, 2, 2, 3, 3, 4, 1 per stage, Tan & Le 2019, Table 1), not
    # the deeper level whose labels would mostly name ranges of layers inside blocks.
    axis = data.calc_plot(report_of("torchvision/efficientnet_b0")).bars.axis
    blocks = [f"stage{s}.{b}" for s, n in enumerate((1, 2, 2, 3, 3, 4, 1), start=1) for b in range(n)]
    assert [g.name for g in axis.labels] == ["stem.conv1 … stem.silu1", *blocks, "last.conv1 … dropout1",
                                            "classifier"]


def _centres(axis: data.Axis) -> list[float]:
    return [(g.start + g.stop - 1) / 2 for g in axis.labels]


@pytest.mark.parametrize("layers", [10, 45, 46, 60, 300])
def test_labels_of_a_plain_deep_network_never_crowd(write_spec, layers: int) -> None:  # type: ignore[no-untyped-def]
    from archcalc.core.analyze import analyze
    from archcalc.core.spec import load_spec

    text = "name: deep\ninput: [4, 8, 8]\nlayers:\n" + "  - conv: {out: 4, kernel: 3, padding: 1}\n" * layers
    axis = data.calc_plot(analyze(load_spec(write_spec(text)))).bars.axis
    groups = axis.labels
    assert groups[0].start == 0 and groups[-1].stop == layers
    assert all(a.stop == b.start for a, b in zip(groups, groups[1:]))  # they tile the axis
    slot = layers / data.MAX_LABELS
    centres = _centres(axis)
    if layers <= data.MAX_LABELS:
        assert len(groups) == layers  # every layer named
    else:
        # label centres at least half a slot apart: 12 in at 100 dpi over 45 labels, half a slot is 11 px, more
        # than a 7 pt label's height (9.7 px)
        assert min(b - a for a, b in zip(centres, centres[1:])) >= slot / 2
        assert len(groups) <= data.MAX_LABELS


def test_calc_title_names_spec_input_batch_dtype_convention() -> None:
    plot = data.calc_plot(report_of("resnet50", batch=8, dtype="float16", convention="fvcore"))
    assert plot.title == "resnet50\ninput 3×224×224, batch 8, float16, FLOPs: 'fvcore' convention"


# ---- compare ------------------------------------------------------------------------------------------------------

def test_compare_points_are_the_compare_rows() -> None:
    specs = ["vgg16", "resnet50", "lenet5"]
    result = invoke(["compare", *specs, "-f", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    plot = data.compare_plot([report_of(s) for s in specs])
    assert [(p.name, p.macs, p.params, p.peak_bytes) for p in plot.points] == [
        (r["name"], r["totals"]["macs"], r["totals"]["params"], r["totals"]["peak_inference_bytes"]) for r in rows]
    assert "each spec's own input, batch 1, float32" in plot.title


# ---- the command line ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_calc_and_compare_write_pictures(tmp_path: Path, suffix: str) -> None:
    for args in (["calc", "resnet18", "-f", "json"], ["calc", "vgg16", "--depth", "1", "-f", "csv"],
                 ["compare", "vgg16", "resnet18", "lenet5", "-f", "csv"]):
        out = tmp_path / f"{args[0]}-{args[1]}{suffix}"
        result = invoke([*args, "--plot", str(out)])
        assert result.exit_code == 0, result.output
        assert out.stat().st_size > 5000
        head = out.read_bytes()[:2000]
        assert head.startswith(b"\x89PNG") if suffix == ".png" else b"<svg" in head
        if suffix == ".png":  # the digest of the series drawn, to tie the picture to its data
            assert len(png_text(out)["archcalc-series"]) == 64


def test_the_same_series_draw_the_same_svg(tmp_path: Path) -> None:
    a, b = tmp_path / "a.svg", tmp_path / "b.svg"
    for out in (a, b):
        assert invoke(["compare", "vgg16", "lenet5", "-f", "csv", "--plot", str(out)]).exit_code == 0
    assert a.read_bytes() == b.read_bytes()


def test_png_digest_is_the_series_digest(tmp_path: Path) -> None:
    out = tmp_path / "r.png"
    assert invoke(["calc", "resnet18", "--batch", "4", "--plot", str(out)]).exit_code == 0
    assert png_text(out)["archcalc-series"] == data.digest(data.calc_plot(report_of("resnet18", batch=4)))


@pytest.mark.parametrize(("target", "message"), [
    ("x.pdf", "error: --plot: 'x.pdf': the file name must end in .png or .svg (the format follows the suffix)"),
    ("missing/x.png", "error: --plot: 'missing/x.png': no such folder 'missing'"),
])
def test_bad_plot_targets_exit_2(tmp_path: Path, monkeypatch, target: str, message: str) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)
    for command in (["calc", "vgg16"], ["compare", "vgg16", "lenet5"]):
        result = invoke([*command, "--plot", target])
        assert result.exit_code == 2, result.output
        assert message in result.output
        assert "Traceback" not in result.output


def test_without_matplotlib_plot_exits_2_with_the_pip_command(tmp_path: Path) -> None:
    code = ("import sys\nsys.modules['matplotlib'] = None\nfrom archcalc.cli.app import main\n"
            f"sys.argv = ['archcalc', 'calc', 'lenet5', '--plot', {str(tmp_path / 'x.png')!r}]\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "error: --plot needs matplotlib: pip install 'archcalc[plot]'"
    assert proc.stdout == "" and not (tmp_path / "x.png").exists()


def test_calc_and_compare_plots_do_not_import_torch(tmp_path: Path) -> None:
    code = ("import sys\nfrom archcalc.cli.app import app\n"
            f"for args in (['calc', 'resnet50', '-f', 'json', '--plot', {str(tmp_path / 'a.png')!r}],\n"
            f"             ['compare', 'vgg16', 'lenet5', '--plot', {str(tmp_path / 'b.svg')!r}]):\n"
            "    try:\n        app(args, prog_name='archcalc')\n"
            "    except SystemExit as e:\n        assert not e.code, e.code\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fvcore')))\n"
            "print('MATPLOTLIB', 'matplotlib' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stdout and "MATPLOTLIB True" in proc.stdout
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.svg").stat().st_size > 0


def test_analytic_commands_without_plot_do_not_import_matplotlib() -> None:
    code = ("import sys\nfrom archcalc.cli.app import app\n"
            "try:\n    app(['calc', 'vgg16', '-f', 'json'], prog_name='archcalc')\n"
            "except SystemExit as e:\n    assert not e.code, e.code\n"
            "print('MATPLOTLIB', 'matplotlib' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "MATPLOTLIB False" in proc.stdout


# ---- the manual's pictures ----------------------------------------------------------------------------------------

# The committed pictures and the commands that draw them (docs/plots.md shows both). A test regenerates each one's
# series and checks them against the digest stored in the committed PNG (data, not pixels) and against the report.
PICTURES = {
    "resnet50-memory.png": ["calc", "resnet50"],
    "compare.png": ["compare", "lenet5", "alexnet", "vgg16", "googlenet", "resnet18", "resnet50", "resnet152",
                    "torchvision/mobilenet_v2", "torchvision/efficientnet_b0"],
}


def _series(args: list[str]) -> object:
    if args[0] == "calc":
        return data.calc_plot(report_of(args[1]))
    return data.compare_plot([report_of(s) for s in args[1:]])


@pytest.mark.parametrize("name", sorted(PICTURES))
def test_manual_pictures_are_drawn_from_todays_numbers(request, name: str) -> None:  # type: ignore[no-untyped-def]
    path = IMAGES / name
    args = PICTURES[name]
    if request.config.getoption("--regen-golden"):
        assert invoke([*args, "-f", "csv", "--plot", str(path)]).exit_code == 0
    series = _series(args)
    assert png_text(path)["archcalc-series"] == data.digest(series), (
        f"docs/img/{name} was drawn from other numbers: run pytest tests/test_plot.py --regen-golden")
    width, height = png_size(path)
    assert width <= 1200 and height <= 1600 and path.stat().st_size < 250_000  # small enough for the repository
    page = (ROOT / "docs" / "plots.md").read_text(encoding="utf-8")
    assert f"(img/{name})" in page
    assert f"archcalc {' '.join(args)} --plot {name}" in page
    # and the series are the report's figures
    if isinstance(series, data.CalcPlot):
        report = report_of(args[1])
        assert series.bars.macs == tuple(r.macs for r in report.rows)
        assert series.timeline.peak + series.timeline.constant == report.totals.peak_bytes
    else:
        assert isinstance(series, data.ComparePlot)
        assert [p.params for p in series.points] == [report_of(s).totals.params for s in args[1:]]


# ---- sweep --------------------------------------------------------------------------------------------------------

SWEEP = ["sweep", "resnet18", "--set", "d4=1,2", "--input", "3x{64,96}", "--batch", "1,2", "--pareto", "macs,-params"]


def test_sweep_series_are_the_sweep_rows(tmp_path: Path) -> None:
    out = tmp_path / "sweep.png"
    result = invoke([*SWEEP, "-f", "json", "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 5000
    rows = json.loads(result.stdout)["rows"]
    from archcalc.core import sweep as sw

    options = Settings()
    runner_ = sw.Sweep("resnet18", options)
    points = sw.points(sw.parse_set_axes(["d4=1,2"]), sw.parse_inputs("3x{64,96}", 2), sw.parse_batches("1,2"))
    plot = data.sweep_plot(runner_.run(points, None, 1), runner_.name, options, ["macs", "-params"])
    assert plot.variable == "d4" and plot.ticks == ((1.0, "1"), (2.0, "2"))
    assert len(plot.lines) == 4  # input x batch
    seen = 0
    for row in rows:
        label = f"input={'×'.join(map(str, row['input']))}, batch={row['batch']}"
        line = next(line for line in plot.lines if line.label == label)
        i = line.x.index(float(row["set"]["d4"]))
        for column in data.SWEEP_PANELS:
            assert line.y[column][i] == row[column]
        seen += 1
    assert seen == 8
    # the Pareto panel: the sweep's own objectives, its own verdicts
    assert plot.objectives == ("macs", "-params")
    assert sorted((p.x, p.y, p.optimal) for p in plot.front) == sorted(
        (r["macs"], r["params"], r["pareto"]) for r in rows)
    assert png_text(out)["archcalc-series"] == data.digest(plot)


def test_sweep_pareto_panel_defaults_to_macs_and_params() -> None:
    from archcalc.core import sweep as sw

    options = Settings()
    runner_ = sw.Sweep("resnet18", options)
    rows = runner_.run(sw.points([], [None], sw.parse_batches("1,2,4")), None, 1)
    plot = data.sweep_plot(rows, runner_.display, options)
    assert plot.variable == "batch" and [t for _, t in plot.ticks] == ["1", "2", "4"]
    assert plot.objectives == ("macs", "params")
    # ResNet-18: 1,814,073,344 MACs per sample (torchvision lists 1.81 GFLOPS, its MACs); batch 1 has the fewest at
    # the same parameters, the only optimum
    assert [(p.x, p.optimal) for p in plot.front] == [(1814073344 * b, b == 1) for b in (1, 2, 4)]


# ---- profile ------------------------------------------------------------------------------------------------------

TINY = """\
name: tiny
input: [3, 32, 32]
layers:
  - conv: {out: 16, kernel: 3, padding: 1, name: conv1}
  - relu: {name: relu1}
  - conv: {out: 32, kernel: 3, stride: 2, padding: 1, name: conv2}
  - global_avgpool: {name: pool}
  - linear: {out: 10, name: fc}
"""


def test_profile_roofline_is_the_profile_numbers(write_spec, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = write_spec(TINY)
    out = tmp_path / "roof.svg"
    # --plot turns the per-layer breakdown on
    result = invoke(["profile", str(spec), "--device", "cpu", "--warmup", "0.02", "--budget", "0.3", "-f", "json",
                     "--plot", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 5000 and b"<svg" in out.read_bytes()[:2000]
    (point,) = json.loads(result.stdout)
    assert [layer["name"] for layer in point["layers"]] == ["conv1", "relu1", "conv2", "pool", "fc"]

    from archcalc.core.spec import load_spec
    from archcalc.torch.profile.driver import Options, run_profile

    (r,) = run_profile(load_spec(spec), Options(device="cpu", batches=(2,), warmup_s=0.01, budget_s=0.3, layers=True))
    plot = data.roofline(r)
    assert plot.peak_flops == r.roofline.peak_flops and plot.bandwidth == r.roofline.bandwidth
    # conv1, conv2, fc have FLOPs under the torch convention; relu and pooling none: not on a log-log roofline
    assert [p.name for p in plot.points] == ["conv1", "conv2", "fc"] and plot.left_out == 2
    for p in plot.points:
        lt = next(lt for lt in r.layers if lt.name == p.name)
        assert p.flops == lt.flops
        assert p.intensity == lt.flops / lt.bytes
        assert p.achieved == pytest.approx(lt.flops / (lt.median_ms / 1e3), rel=1e-12)
        assert p.predicted == pytest.approx(lt.flops / (lt.predicted_ms / 1e3), rel=1e-12)
    # conv1 by hand: 2 FLOPs per MAC, 16 x 32 x 32 outputs x 27 MACs, batch 2
    assert next(p for p in plot.points if p.name == "conv1").flops == 2 * 16 * 32 * 32 * 27 * 2
    assert "tiny: roofline on" in plot.title and "batch 2, float32, 1 thread" in plot.title
