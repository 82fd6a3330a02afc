"""`import` / `archcalc.from_module`: a torch module back to a spec.

The round trip: every bundled spec is exported (`archcalc export`'s source, loaded as a user's file would be),
imported, and the imported spec must give the spec's own figures — params, buffers, MACs, FLOPs under every
convention, activations, inference peak and saved bytes on both devices, receptive field. Plain nn.Module models
written here are checked against torch itself (parameter counts from `.parameters()`, shapes from running them).
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import example_spec
from torch import nn
from typer.testing import CliRunner

import archcalc
from archcalc.cli.app import app
from archcalc.core.analyze import Report, analyze
from archcalc.core.kinds import REGISTRY
from archcalc.core.resolve import bundled
from archcalc.core.spec import Spec, load_spec
from archcalc.torch.export import export_source
from archcalc.torch.importer import ImportFailure, from_module, load_model

runner = CliRunner()
TOTALS = ("params", "trainable_params", "buffers", "macs", "activation_bytes", "param_bytes", "buffer_bytes",
          "peak_bytes", "saved_bytes", "weight_layers", "output", "rf", "jump")


def figures(spec: Spec) -> dict[str, Any]:
    """Every total archcalc reports, under every convention and for both devices' saved bytes."""
    out: dict[str, Any] = {}
    for convention in ("macs", "torch", "fvcore", "full"):
        out[f"flops[{convention}]"] = analyze(spec, convention=convention).totals.flops
    for device in ("cuda", "cpu"):
        totals = analyze(spec, device=device).totals
        out.update({f"{f}[{device}]": getattr(totals, f) for f in TOTALS})
    return out


def rows(report: Report) -> list[tuple[Any, ...]]:
    """The rows: layers by name, kind, shapes and counts; merges without their names (a merge has no module, so
    its name is not in the module: the import names it after its op); adaptive pooling to 1 as the global pooling
    it is (both build the same module)."""
    kinds = {"adaptive_avgpool": "global_avgpool", "adaptive_maxpool": "global_maxpool"}
    return [(r.name if r.module else "", kinds.get(r.kind, r.kind), r.input, r.output, r.params, r.macs, r.flops)
            for r in report.rows]


def round_trip(name: str, tmp_path: Path) -> tuple[Spec, Spec]:
    spec = archcalc.open_spec(name)
    path = tmp_path / (name.replace("/", "_") + ".py")
    path.write_text(export_source(analyze(spec)), encoding="utf-8")
    model, _ = load_model(str(path))  # on the meta device: no memory, no arithmetic
    return spec, from_module(model, spec.input, name=name).spec


# Specs whose groups the import cannot rebuild with the same names: the same rows, in the same order, otherwise.
RENAMED = {"wavenet": "its running sum adds each skip right after the layer's skip conv, before its residual conv, "
                      "so the import sees each layer's modules in two runs and names the second one layers.K_1"}


@pytest.mark.parametrize("name", sorted(bundled()))
def test_round_trip_gives_the_specs_own_figures(name: str, tmp_path: Path) -> None:
    spec, imported = round_trip(name, tmp_path)
    expected, got = figures(spec), figures(imported)
    assert got == expected, {k: (expected[k], got[k]) for k in expected if got[k] != expected[k]}
    if name in RENAMED:
        assert [r[1:] for r in rows(analyze(imported))] == [r[1:] for r in rows(analyze(spec))], name
        return
    assert rows(analyze(imported)) == rows(analyze(spec)), f"{name}: not structurally the same"


def test_every_kind_example_round_trips(tmp_path: Path) -> None:
    for kind in REGISTRY.values():
        for i, ex in enumerate(kind.examples):
            shape, layers = example_spec(kind, ex)
            path = tmp_path / f"{kind.name}{i}.yaml"
            path.write_text(f"name: t\ninput: {shape}\nlayers:\n" + "".join(f"  - {x}\n" for x in layers))
            spec = load_spec(path)
            source = tmp_path / f"{kind.name}{i}.py"
            source.write_text(export_source(analyze(spec)), encoding="utf-8")
            model, _ = load_model(str(source))
            imported = from_module(model, spec.input).spec
            assert figures(imported) == figures(spec), f"{kind.name} example {i}"
            assert [r.kind for r in analyze(imported).rows] == [r.kind for r in analyze(spec).rows] or \
                kind.name.startswith("adaptive_"), f"{kind.name} example {i}"


# ---- plain torch models, checked against torch ---------------------------------------------------------------------


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + x)


class Net(nn.Module):
    """A little of everything the mapping table reads: modules, functions, methods, a residual, a chunk, a cat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.layer = nn.Sequential(Block(16), Block(16))
        self.left = nn.Conv2d(8, 8, 1)
        self.right = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer(self.stem(x))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([self.left(a), self.right(b)], 1)
        x = F.max_pool2d(x, 2)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = x.mean([2, 3])
        return self.fc(torch.flatten(x, 1))


def test_a_plain_torch_model_imports_with_torchs_counts() -> None:
    net = Net()
    imported = from_module(net, (3, 32, 32), name="net")
    assert net.training  # from_module restores the mode
    report = analyze(imported.spec)
    assert report.totals.params == sum(p.numel() for p in net.parameters())
    assert report.totals.buffers == sum(b.numel() for b in net.buffers())
    with torch.no_grad():
        assert report.totals.output == tuple(net.eval()(torch.randn(1, 3, 32, 32)).shape[1:])
    # MACs by hand: stem 16*27*16*16; each block 2 * 16*144*16*16; left 8*8*16*16; right (depthwise) 8*9*16*16;
    # fc 16*10.
    assert report.totals.macs == 16 * 27 * 256 + 4 * 16 * 144 * 256 + 8 * 8 * 256 + 8 * 9 * 256 + 160
    text = imported.text
    assert "- name: layer" in text and "name: conv1" in text  # names from the module hierarchy
    assert "- add: [bn2, " in text and "channel_slice" in text and "- concat:" in text


def test_the_error_names_the_op_the_module_path_and_the_source_line() -> None:
    class Odd(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.sin(x)

    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.odd = Odd()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.odd(self.conv(x))

    line = inspect.getsourcelines(Odd.forward)[1] + 1
    with pytest.raises(ImportFailure) as info:
        from_module(Outer(), (3, 8, 8))
    assert str(info.value) == (f"cannot import torch.sin at odd ({__file__}:{line}): it has no archcalc kind")


def test_allow_unknown_marks_the_op_and_says_what_the_totals_leave_out() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AlphaDropout(0.1), nn.ReLU())
    # (the model is torch.nn's own Sequential: no line of the model's to name, and torch's own lines are never named)
    with pytest.raises(ImportFailure, match=r"cannot import AlphaDropout \(1\) at 1: .*no kind for torch.nn.modules"):
        from_module(net, (3, 8, 8))
    imported = from_module(net, (3, 8, 8), allow_unknown=True)
    assert "# unknown: AlphaDropout (1) at 1" in imported.text
    assert "- identity: {name: unknown}" in imported.text
    assert len(imported.unknown) == 1 and "the totals leave out its MACs" in imported.unknown[0]
    report = analyze(imported.spec)
    assert [r.kind for r in report.rows] == ["conv", "identity", "relu"]
    assert report.totals.params == 4 * 27 + 4


def test_an_unknown_op_that_changes_the_shape_stays_an_error() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.PixelUnshuffle(2), nn.Unfold(2))
    with pytest.raises(ImportFailure, match="cannot stand in for it: it changes the shape"):
        from_module(net, (3, 10, 10), allow_unknown=True)


def test_frozen_layers_and_untraced_parameters() -> None:
    class WithAux(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.aux = nn.Linear(4, 2)  # never called at inference
            self.conv.weight.requires_grad_(False)
            self.conv.bias.requires_grad_(False)  # type: ignore[union-attr]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    imported = from_module(WithAux(), (3, 8, 8))
    assert "trainable: false" in imported.text
    assert analyze(imported.spec).totals.trainable_params == 0
    assert imported.warnings == ("parameters of modules the forward never calls are not in the spec: aux (10); "
                                 "10 in all",)


# ---- the command ---------------------------------------------------------------------------------------------------

MODELS = '''
import torch
from torch import nn


def small(classes=10):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, classes))


def build_model():
    return small()
'''


def test_cli_import_of_a_callable_and_of_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mymodels.py").write_text(textwrap.dedent(MODELS), encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["import", "mymodels:small", "--input", "3x16x16", "--kwargs", '{"classes": 5}',
                                 "-o", "small.yaml"])
    assert result.exit_code == 0, result.output
    assert "wrote small.yaml" in result.output
    spec = load_spec(tmp_path / "small.yaml")
    assert spec.name == "small"
    assert analyze(spec).totals.params == (8 * 27 + 8) + (8 * 5 + 5)
    result = runner.invoke(app, ["import", "mymodels.py", "--input", "3x16x16"])
    assert result.exit_code == 0, result.output
    assert "linear: {out_features: 10, name: '4'}" in result.stdout or 'name: "4"}' in result.stdout
    assert runner.invoke(app, ["import", "mymodels:small", "-i", "3x16x16", "-o", "small.yaml"]).exit_code == 2


def test_cli_import_of_an_exported_file_reads_its_input(tmp_path: Path) -> None:
    source = tmp_path / "lenet5.py"
    assert runner.invoke(app, ["export", "lenet5", "-o", str(source)]).exit_code == 0
    result = runner.invoke(app, ["import", str(source), "-o", str(tmp_path / "lenet5.yaml")])
    assert result.exit_code == 0, result.output
    assert analyze(load_spec(tmp_path / "lenet5.yaml")).totals.params == analyze(
        archcalc.open_spec("lenet5")).totals.params


@pytest.mark.parametrize("args, message", [
    (["nomodule_xyz:f", "-i", "3x8x8"], "error: nomodule_xyz:f: cannot import nomodule_xyz"),
    (["torch.nn", "-i", "3x8x8"], "error: MODEL must be package.module:callable"),
    (["torch.nn:Conv2d", "-i", "3x8x8"], "error: torch.nn:Conv2d: constructing the model failed"),
    (["torch.nn:ReLU", "-i", "3x8x8", "--kwargs", "[1]"], "error: --kwargs: expected a JSON object"),
    (["torch.nn:ReLU"], "error: torch.nn:ReLU: give the input with --input"),
    (["torch.nn:AlphaDropout", "-i", "3x8x8"], "error: cannot import AlphaDropout (alphadropout) at alphadropout: "
                                               "archcalc has no kind for torch.nn.modules.dropout.AlphaDropout\n"),
])
def test_cli_import_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["import", *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message), result.output
    assert "Traceback" not in result.output


def test_a_subclass_that_computes_what_its_base_does_maps_like_it() -> None:
    class Conv3DSimple(nn.Conv3d):  # torchvision's video ResNets: an nn.Conv3d with its own __init__ only
        def __init__(self, cin: int, cout: int) -> None:
            super().__init__(cin, cout, (3, 3, 3), padding=1, bias=False)

    class Scaled(nn.Conv2d):  # a forward of its own: traced through, its F.conv2d read from the weight's shape
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, self.bias)

    report = analyze(from_module(Conv3DSimple(3, 4), (3, 4, 8, 8)).spec)
    assert report.totals.params == 4 * 3 * 27 and report.totals.macs == 4 * 3 * 27 * 4 * 8 * 8
    report = analyze(from_module(Scaled(3, 4, 3), (3, 8, 8)).spec)
    assert report.totals.params == 4 * 27 + 4 and report.totals.macs == 4 * 27 * 6 * 6


def test_a_size_read_from_a_tensors_shape_becomes_size_of() -> None:
    class Seg(nn.Module):  # torchvision's segmentation heads: F.interpolate(x, size=input.shape[-2:])
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 5, 3, stride=4, padding=1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            size = x.shape[-2:]
            y = self.conv(x)
            return {"out": F.interpolate(y, size=size, mode="bilinear", align_corners=False)}

    imported = from_module(Seg(), (3, 30, 30))
    assert "upsample: {mode: linear, size_of: input, name: upsample}" in imported.text
    assert "outputs:\n  - out: upsample" in imported.text
    report = analyze(imported.spec, input_shape=(3, 62, 62))  # size_of follows the input
    assert report.totals.output == (5, 62, 62)
