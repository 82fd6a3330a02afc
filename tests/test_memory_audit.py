"""The saved-bytes and inference-peak disagreements an audit of the memory models found (issue 29), each on a
network written here in plain torch.nn: the oracles are autograd's own saved tensors (tests/measure.saved_bytes:
what the nodes hold at the end of the forward), and the storages the ops create (tests/measure.dispatch_peak_bytes)
or torch.profiler's memory events (tests/measure.peak_bytes) for the inference peak."""

from __future__ import annotations

import pytest
import torch
from measure import dispatch_peak_bytes, peak_bytes, saved_bytes
from torch import nn

from archcalc.core.analyze import analyze
from archcalc.core.spec import load_spec


class ChannelsLastLayerNorm(nn.LayerNorm):
    """ConvNeXt's LayerNorm2d as torchvision writes it: permute to channels-last, layer_norm over C, permute back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _report(write_spec, text: str, **settings: object):  # type: ignore[no-untyped-def]
    return analyze(load_spec(write_spec(text)), device="cpu", **settings)


def _inference_peak(report) -> int:  # type: ignore[no-untyped-def]
    """The predicted inference peak beyond the input (what the measurements see: the input exists before)."""
    t = report.totals
    x = report.batch * report.itemsize
    for d in report.input:
        x *= d
    return t.peak_bytes - t.param_bytes - t.buffer_bytes - x


@pytest.mark.parametrize(("dtype", "torch_dtype"), [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_channel_layernorm_keeps_its_statistics_in_the_activation_dtype_on_the_cpu(
        write_spec, dtype: str, torch_dtype: torch.dtype) -> None:  # type: ignore[no-untyped-def]
    # finding 1: the model cast to bfloat16 as a whole keeps bfloat16 mean and 1/std, not float32
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), ChannelsLastLayerNorm(8, eps=1e-6)).to(torch_dtype)
    measured = saved_bytes(model, torch.randn(2, 4, 4, 4, dtype=torch_dtype))
    report = _report(write_spec, "name: t\ninput: [4, 4, 4]\nlayers:\n  - conv: {out: 8, kernel: 1}\n"
                                 "  - channel_layernorm\n", batch=2, dtype=dtype)
    size = 4 if dtype == "float32" else 2
    # the conv's input (2x4x4x4), the norm's input (the conv's output, 2x8x4x4), mean and 1/std per position
    assert measured == report.totals.saved_bytes == size * (2 * 64 + 2 * 128 + 2 * 2 * 16)


def test_channel_layernorm_keeps_a_view_of_its_input_not_a_copy(write_spec) -> None:  # type: ignore[no-untyped-def]
    # finding 3: the conv output `a` is kept by the norm (through its channels-last view) and by conv `b`: once
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.n, self.b = nn.Conv2d(4, 8, 1), ChannelsLastLayerNorm(8, eps=1e-6), nn.Conv2d(8, 8, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.a(x)
            return torch.cat([self.n(a), self.b(a)], 1)

    measured = saved_bytes(Net(), torch.randn(2, 4, 4, 4))
    report = _report(write_spec, "name: t\ninput: [4, 4, 4]\nlayers:\n  - conv: {out: 8, kernel: 1, name: a}\n"
                                 "  - channel_layernorm: {name: n}\n  - conv: {out: 8, kernel: 1, name: b}\n"
                                 "    from: a\n  - concat: [n, b]\n", batch=2)
    assert measured == report.totals.saved_bytes == 4 * (2 * 64 + 2 * 128 + 2 * 2 * 16)


def test_an_unused_layer_keeps_nothing(write_spec) -> None:  # type: ignore[no-untyped-def]
    # finding 2: `u` runs, but nothing reads its output: its node, and what it kept (its input a), die with it
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.u = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 64, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.a(x)
            self.u(a)
            return torch.relu(a)

    measured = saved_bytes(Net(), torch.randn(2, 4, 4, 4))
    report = _report(write_spec, "name: t\ninput: [4, 4, 4]\nunused: allow\nlayers:\n"
                                 "  - conv: {out: 8, kernel: 1, name: a}\n"
                                 "  - conv: {out: 64, kernel: 3, padding: 1, name: u}\n"
                                 "  - relu: {name: r}\n    from: a\noutputs: [r]\n", batch=2)
    assert measured == report.totals.saved_bytes == 4 * (2 * 64 + 2 * 128)  # x for conv a, the relu's output


def test_a_frozen_layer_scale_keeps_nothing(write_spec) -> None:  # type: ignore[no-untyped-def]
    # finding 4: x * gamma keeps x for gamma's gradient only
    class Net(nn.Module):
        def __init__(self, trainable: bool) -> None:
            super().__init__()
            self.conv = nn.Conv2d(4, 8, 1)
            self.gamma = nn.Parameter(torch.full((8, 1, 1), 1e-6), requires_grad=trainable)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x) * self.gamma)

    for trainable in (False, True):
        measured = saved_bytes(Net(trainable), torch.randn(2, 4, 4, 4))
        report = _report(write_spec, "name: t\ninput: [4, 4, 4]\nlayers:\n  - conv: {out: 8, kernel: 1}\n"
                                     f"  - layer_scale: {{trainable: {str(trainable).lower()}}}\n  - relu\n", batch=2)
        # x for the conv, the relu's output, and with a trainable gamma the conv's output
        assert measured == report.totals.saved_bytes == 4 * (2 * 64 + 2 * 128 + (2 * 128 if trainable else 0))


CROP = "name: t\ninput: [4, 6, 6]\nlayers:\n  - conv: {out: 8, kernel: 1}\n  - crop: {size: 4}\n"


class FlattenLinear(nn.Linear):
    """A linear layer on a C x H x W input, flattened inside: the input is held while the layer runs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1))


def _cropped(*after: nn.Module) -> nn.Module:
    class Crop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[:, :, 1:5, 1:5]  # a view: centre crop 6 -> 4

    return nn.Sequential(nn.Conv2d(4, 8, 1), Crop(), *after)


@pytest.mark.parametrize(("layers", "modules"), [
    ("  - groupnorm: {num_groups: 2}\n", lambda: [nn.GroupNorm(2, 8)]),
    ("  - linear: {out: 3}\n", lambda: [FlattenLinear(128, 3)]),
    ("  - flatten\n  - linear: {out: 3}\n", lambda: [nn.Flatten(), nn.Linear(128, 3)]),
    ("  - batchnorm\n", lambda: [nn.BatchNorm2d(8)]),
], ids=["groupnorm", "linear", "flatten-linear", "batchnorm"])
def test_ops_on_a_crop_keep_a_contiguous_copy_or_the_base(write_spec, layers: str, modules) -> None:  # type: ignore
    # finding 5: group norm and (the flatten of) linear copy the strided view and keep the copy; batch norm keeps
    # the view, the conv's whole output
    torch.manual_seed(0)
    model = _cropped(*modules())
    x = torch.randn(2, 4, 6, 6)
    report = _report(write_spec, CROP + layers, batch=2)
    assert saved_bytes(model, x) == report.totals.saved_bytes
    model.eval()
    with torch.no_grad():
        model(x)
        assert dispatch_peak_bytes(lambda: model(x)) == _inference_peak(report)


def test_a_copy_of_a_crop_is_predicted_by_hand(write_spec) -> None:  # type: ignore[no-untyped-def]
    # conv output 2x8x6x6 (288 x 2 values), its crop 2x8x4x4 (256 values) copied by group norm, 2 x 2 statistics
    report = _report(write_spec, CROP + "  - groupnorm: {num_groups: 2}\n", batch=2)
    assert report.totals.saved_bytes == 4 * (2 * 144 + 256 + 2 * 2 * 2)  # x for the conv, the copy, mean and rstd
    # while group norm runs: the conv's output, the copy, the norm's output and its statistics
    assert _inference_peak(report) == 4 * (2 * 288 + 256 + 256 + 2 * 2 * 2)


def test_group_norm_returns_its_statistics_at_inference_too(write_spec) -> None:  # type: ignore[no-untyped-def]
    # native_group_norm returns mean and 1/std per group (and sample) beside its output, even under no_grad
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.GroupNorm(2, 8)).eval()
    x = torch.randn(2, 4, 6, 6)
    report = _report(write_spec, "name: t\ninput: [4, 6, 6]\nlayers:\n  - conv: {out: 8, kernel: 1}\n"
                                 "  - groupnorm: {num_groups: 2}\n", batch=2)
    with torch.no_grad():
        model(x)
        assert dispatch_peak_bytes(lambda: model(x)) == peak_bytes(lambda: model(x)) == _inference_peak(report)
    assert _inference_peak(report) == 4 * (2 * 2 * 288 + 2 * 2 * 2)
