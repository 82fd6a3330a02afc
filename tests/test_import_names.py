"""`archcalc import` writes the blocks and names a person would (issue 31): ten residual layers that differ only in
their dilation are one block with a `dilation` argument (WaveNet), a container that only wraps one module is not a
block of its own, and no block is named after an internal name (the traced root's private class, a private class's
underscore, a numbered list's `_block`). The models are written here in plain torch.nn; the imported specs' figures
are checked against the models' own parameter counts and FlopCounterMode."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from archcalc.core.analyze import analyze  # noqa: E402
from archcalc.core.spec import load_spec  # noqa: E402
from archcalc.torch.importer import from_module  # noqa: E402


class ResidualLayer(nn.Module):
    """WaveNet's residual layer (van den Oord et al. 2016, Fig. 4): a causal dilated convolution, the gated
    activation tanh * sigmoid, a 1x1 to the residual and a 1x1 to the skip output."""

    def __init__(self, channels: int, skip: int, dilation: int) -> None:
        super().__init__()
        self.pad = nn.ZeroPad1d((dilation, 0))
        self.filter = nn.Conv1d(channels, channels, 2, dilation=dilation)
        self.gate = nn.Conv1d(channels, channels, 2, dilation=dilation)
        self.res = nn.Conv1d(channels, channels, 1)
        self.skip = nn.Conv1d(channels, skip, 1)

    def forward(self, x: Any) -> Any:
        p = self.pad(x)
        z = torch.tanh(self.filter(p)) * torch.sigmoid(self.gate(p))
        return x + self.res(z), self.skip(z)


class WaveNet(nn.Module):
    """Ten residual layers, dilations 1 .. 512; the skips summed into the output, and the last residual returned
    too (so every layer's every op is used: what is computed and discarded is another matter)."""

    def __init__(self, channels: int = 16, skip: int = 32, layers: int = 10) -> None:
        super().__init__()
        self.input = nn.Conv1d(1, channels, 1)  # named like the network's input: written as input_1
        self.layers = nn.ModuleList(ResidualLayer(channels, skip, 2 ** i) for i in range(layers))
        self.out = nn.Conv1d(skip, 4, 1)

    def forward(self, x: Any) -> Any:
        x = self.input(x)
        total = None
        for layer in self.layers:
            x, s = layer(x)
            total = s if total is None else total + s
        return self.out(torch.relu(total)), x


def imported(model: nn.Module, shape: tuple[int, ...], tmp_path) -> tuple[dict[str, Any], Any]:  # type: ignore[no-untyped-def]
    text = from_module(model, shape, name="m").text
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    return yaml.safe_load(text), analyze(load_spec(path))


def measured(model: nn.Module, shape: tuple[int, ...]) -> tuple[int, int]:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.randn(1, *shape))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops()


def test_layers_differing_in_dilation_are_one_block_with_a_dilation_argument(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = WaveNet()
    data, report = imported(model, (1, 1024), tmp_path)
    assert list(data["blocks"]) == ["ResidualLayer"]
    assert data["layers"][0] == {"conv": {"out_channels": 16, "kernel_size": 1, "name": "input_1"}}
    block = data["blocks"]["ResidualLayer"]
    assert block["args"] == {"dilation": None}  # required: ten values
    assert block["layers"][0] == {"zeropad": {"padding": [["dilation", 0]], "name": "pad"}}
    calls = [item["ResidualLayer"] for item in data["layers"][1]["sequence"] if "ResidualLayer" in item]
    assert [c["dilation"] for c in calls] == [2 ** i for i in range(10)]
    params, flops = measured(model, (1, 1024))
    assert report.totals.params == params and 2 * report.totals.macs == flops  # FlopCounterMode: 2 per MAC


class _Private(nn.Module):  # a class of a library's internals (torchvision's _DenseLayer)
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: Any) -> Any:
        return torch.relu(self.bn(self.conv(x)))


class Conv(nn.Module):  # YOLO's Conv: a class named like a kind
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x: Any) -> Any:
        return nn.functional.silu(self.bn(self.conv(x)))


class Fused(nn.Module):
    """HRNet's fusion in miniature: `fuse[i][j]` are numbered Sequentials of plain layers (an upsampling path and a
    downsampling one), `wrap` a Sequential that only holds one module."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = Conv(3, 8)
        self.down = Conv(8, 8, 2)
        self.fuse = nn.ModuleList([
            nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8),
                                         nn.Upsample(scale_factor=2.0))]),
            nn.ModuleList([nn.Sequential(nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8),
                                         nn.Upsample(scale_factor=2.0))])])
        self.wrap = nn.ModuleList([nn.Sequential(_Private(8)), nn.Sequential(_Private(8))])

    def forward(self, x: Any) -> Any:
        hi = self.stem(x)
        lo = self.down(hi)
        y = hi + self.fuse[0][0](lo)
        y = y + self.fuse[1][0](lo)
        return self.wrap[1](self.wrap[0](y))


def test_blocks_are_named_as_a_person_would(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = Fused()
    data, report = imported(model, (3, 16, 16), tmp_path)
    names = set(data["blocks"])
    assert names == {"Conv_block", "conv_batchnorm_upsample", "Private"}, names
    assert not any(name.startswith("_") or "Root" in name for name in names)
    params, flops = measured(model, (3, 16, 16))
    assert report.totals.params == params and 2 * report.totals.macs == flops
