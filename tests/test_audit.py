"""The disagreements with PyTorch that an independent audit found, each as its minimal spec
checked against a reference module written here from plain torch.nn (not archcalc's builder)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import exits_cleanly
from measure import fvcore_total, peak_bytes, saved_bytes
from torch import nn
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.spec import load_spec

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


def spec(write_spec, body: str, input_: str):  # type: ignore[no-untyped-def]
    return load_spec(write_spec(f"name: t\ninput: {input_}\nlayers:\n{body}"))


def predicted_peak(report) -> int:  # type: ignore[no-untyped-def]
    """The inference peak beyond the input, parameters and buffers (what the profiler sees the forward add)."""
    t = report.totals
    return t.peak_bytes - t.param_bytes - t.buffer_bytes - report.batch * report.itemsize * _numel(report.input)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---- shapes, fvcore and saved bytes of single kinds -------------------------------------------------------------


@pytest.mark.parametrize("affine", [True, False])
def test_fvcore_batchnorm_without_running_stats(write_spec, affine: bool) -> None:  # type: ignore[no-untyped-def]
    # Without running statistics the layer normalizes with batch statistics in eval mode too; fvcore counts the
    # training-mode op: 5 per element with affine, 4 without (2 elements: 10 or 8).
    s = spec(write_spec, f"  - batchnorm: {{track_running_stats: false, affine: {str(affine).lower()}}}\n",
             "[1, 1, 2]")
    reference = nn.BatchNorm1d(1, track_running_stats=False, affine=affine)
    assert analyze(s, convention="fvcore").totals.flops == fvcore_total(reference, torch.randn(1, 1, 2))


def test_saved_bytes_of_a_frozen_linear(write_spec) -> None:  # type: ignore[no-untyped-def]
    # addmm keeps its input only for the weight's gradient: a frozen linear keeps nothing, even when its input
    # needs a gradient.
    s = spec(write_spec, "  - linear: {out_features: 1, trainable: false}\n", "[1, 1]")
    reference = nn.Linear(1, 1).requires_grad_(False)
    measured = saved_bytes(reference, torch.randn(1, 1, requires_grad=True))
    assert analyze(s, input_requires_grad=True).totals.saved_bytes == measured == 0


def test_saved_bytes_of_a_frozen_linear_mid_network(write_spec) -> None:  # type: ignore[no-untyped-def]
    s = spec(write_spec, "  - conv: {out: 2, kernel: 1}\n  - relu\n  - linear: {out: 3, trainable: false}\n",
             "[2, 4, 4]")
    reference = nn.Sequential(nn.Conv2d(2, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3).requires_grad_(False))
    x = torch.randn(2, 2, 4, 4)
    # The conv keeps the input (its weight needs a gradient), the ReLU its output; the frozen linear nothing.
    assert analyze(s, batch=2).totals.saved_bytes == saved_bytes(reference, x) == (2 * 32 + 2 * 32) * 4


NORMS = {
    "batchnorm": lambda: nn.BatchNorm2d(3),
    "batchnorm: {track_running_stats: false}": lambda: nn.BatchNorm2d(3, track_running_stats=False),
    "layernorm": lambda: nn.LayerNorm([3, 2, 2]),
    "groupnorm: {num_groups: 3}": lambda: nn.GroupNorm(3, 3),
}


@pytest.mark.parametrize("dtype", sorted(DTYPES))
@pytest.mark.parametrize("layer", sorted(NORMS))
def test_normalization_statistics_on_the_cpu(write_spec, layer: str, dtype: str) -> None:  # type: ignore[no-untyped-def]
    # On the CPU batch, layer and group norm keep mean and 1/std in the input's dtype (float16 included).
    s = spec(write_spec, f"  - {layer}\n", "[3, 2, 2]")
    reference = NORMS[layer]().to(DTYPES[dtype])
    x = torch.randn(2, 3, 2, 2, dtype=DTYPES[dtype])
    assert analyze(s, batch=2, dtype=dtype, device="cpu").totals.saved_bytes == saved_bytes(reference, x)


@pytest.mark.parametrize(("layer", "statistics"), [("batchnorm", 2 * 3), ("layernorm", 2 * 2),
                                                   ("groupnorm: {num_groups: 3}", 2 * 2 * 3)])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_normalization_statistics_on_cuda_follow_the_kernels(write_spec, layer: str, statistics: int,
                                                             dtype: str) -> None:  # type: ignore[no-untyped-def]
    # The rule read from the CUDA kernels: batch_norm_cuda and layer_norm_cuda allocate the statistics in the
    # accumulate type (float32 for 16-bit inputs; cuDNN's batch norm uses the weight's dtype, the same for the
    # float32/float64 inputs it takes), native_group_norm in the input's dtype. Input: 2 x 3 x 2 x 2 = 24 values.
    s = spec(write_spec, f"  - {layer}\n", "[3, 2, 2]")
    itemsize = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[dtype]
    stats_itemsize = itemsize if layer.startswith("groupnorm") else max(itemsize, 4)
    expected = 24 * itemsize + statistics * stats_itemsize
    assert analyze(s, batch=2, dtype=dtype, device="cuda").totals.saved_bytes == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("layer", sorted(NORMS))
def test_normalization_statistics_measured_on_cuda(write_spec, layer: str, dtype: str) -> None:  # type: ignore[no-untyped-def]
    s = spec(write_spec, f"  - {layer}\n", "[3, 2, 2]")
    reference = NORMS[layer]().to("cuda", DTYPES[dtype])
    x = torch.randn(2, 3, 2, 2, dtype=DTYPES[dtype], device="cuda")
    assert analyze(s, batch=2, dtype=dtype, device="cuda").totals.saved_bytes == saved_bytes(reference, x)


def _pad_pool(pool: nn.Module, pads: tuple[int, ...], value: float) -> nn.Module:
    class PadPool(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return pool(F.pad(x, pads, value=value))

    return PadPool()


def test_maxpool_before_after_padding_with_ceil_mode(write_spec, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # input 1x1, kernel 2, padding [0, 3] per axis, ceil_mode. Padded explicitly the input is 4x4 and ceil mode
    # gives 2 windows per axis; the second starts at 2, in the after-padding, and is dropped (PyTorch's rule for
    # symmetric padding, ONNX's for [before, after] pads): 1x1.
    s = spec(write_spec, "  - maxpool: {kernel_size: 2, padding: [[0, 3], [0, 3]], ceil_mode: true}\n",
             "[1, 1, 1]")
    explicit = _pad_pool(nn.MaxPool2d(2, ceil_mode=True), (0, 3, 0, 3), float("-inf"))(torch.zeros(1, 1, 1, 1))
    assert explicit.shape[2:] == (2, 2)  # what torch does with the padding as input
    assert analyze(s).totals.output == (1, 1, 1) == (1, *explicit[:, :, :1, :1].shape[2:])
    result = CliRunner().invoke(app, ["validate", str(s.path), "--batch", "2"])  # the built module agrees
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("layer", "input_", "reference"), [
    ("avgpool: {kernel: 2, ceil_mode: true}", (1, 1, 1), nn.AvgPool2d(2, ceil_mode=True)),
    ("maxpool: {kernel: 4, stride: 2, ceil_mode: true}", (1, 3, 3), nn.MaxPool2d(4, 2, ceil_mode=True)),
    ("avgpool: {kernel: 3, stride: 2, padding: 1, ceil_mode: true}", (2, 1, 4), nn.AvgPool2d(3, 2, 1,
                                                                                           ceil_mode=True)),
])
def test_valid_ceil_mode_pooling_is_accepted(write_spec, layer: str, input_: tuple[int, ...],
                                            reference: nn.Module) -> None:  # type: ignore[no-untyped-def]
    s = spec(write_spec, f"  - {layer}\n", str(list(input_)))
    assert analyze(s).totals.output == tuple(reference(torch.zeros(1, *input_)).shape[1:])


def test_3d_avgpool_smaller_than_the_kernel_is_refused(write_spec) -> None:  # type: ignore[no-untyped-def]
    s = spec(write_spec, "  - avgpool: {kernel: 4, padding: 1}\n", "[1, 4, 4, 2]")
    with pytest.raises(RuntimeError, match="smaller than kernel size"):
        nn.AvgPool3d(4, padding=1)(torch.zeros(1, 1, 4, 4, 2))
    with pytest.raises(SpecError, match=r"W 2 < 4") as error:
        analyze(s)
    assert error.value.loc is not None and error.value.loc.line == 4
    result = CliRunner().invoke(app, ["validate", str(s.path)])
    exits_cleanly(result, 2)


class Product(nn.Module):
    """((a * b) * c) of three branches, as written in PyTorch."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = (branch(x) for branch in self.branches)
        return a * b * c


@pytest.mark.parametrize("input_requires_grad", [True, False])
def test_saved_bytes_of_a_three_way_product(write_spec, input_requires_grad: bool) -> None:  # type: ignore[no-untyped-def]
    # (a * b) keeps a and b; (a * b) * c keeps c and the intermediate product a * b: 4 tensors of 75 values at
    # batch 2 (2400 bytes) besides what relu / tanh / sigmoid keep (their outputs: the factors themselves). With an
    # input that needs no gradient nothing is recorded at all.
    s = spec(write_spec, "  - parallel: [[relu], [tanh], [sigmoid]]\n    merge: mul\n", "[3, 5, 5]")
    x = torch.randn(2, 3, 5, 5, requires_grad=input_requires_grad)
    measured = saved_bytes(Product(nn.ReLU(), nn.Tanh(), nn.Sigmoid()), x)
    assert measured == (2400 if input_requires_grad else 0)
    assert analyze(s, batch=2, input_requires_grad=input_requires_grad).totals.saved_bytes == measured


def test_saved_bytes_of_a_product_with_one_trainable_factor(write_spec) -> None:  # type: ignore[no-untyped-def]
    # Only the conv's output needs a gradient: x * conv(x) keeps x (for conv(x)'s gradient), not conv(x); the conv
    # keeps its input, the same x.
    s = spec(write_spec, "  - parallel: [[], [{conv: {out: 2, kernel: 1}}], [relu]]\n    merge: mul\n", "[2, 3, 3]")
    reference = Product(nn.Identity(), nn.Conv2d(2, 2, 1), nn.ReLU())
    x = torch.randn(2, 2, 3, 3)
    assert analyze(s, batch=2).totals.saved_bytes == saved_bytes(reference, x)


# ---- saved bytes of a real training step ------------------------------------------------------------------------


def test_gradient_flow_starts_at_the_first_trainable_layer(write_spec) -> None:  # type: ignore[no-untyped-def]
    # maxpool -> relu -> conv on 3x8x8, batch 2: the input needs no gradient, so neither the pool nor the relu is
    # recorded; the conv keeps its input (for its weight's gradient), 3x4x4 x 2 x 4 bytes = 384.
    s = spec(write_spec, "  - maxpool: {kernel: 2}\n  - relu\n  - conv: {out: 4, kernel: 3, padding: 1}\n",
             "[3, 8, 8]")
    reference = nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1))
    x = torch.randn(2, 3, 8, 8)
    assert analyze(s, batch=2).totals.saved_bytes == saved_bytes(reference, x) == 384
    # With an input that needs a gradient (adversarial training) the pool keeps its input and int64 indices and
    # the relu its output: 1536 + 768 + 384 = 2688.
    grad = saved_bytes(reference, x.clone().requires_grad_(True))
    assert analyze(s, batch=2, input_requires_grad=True).totals.saved_bytes == grad == 2688


@pytest.mark.parametrize("frozen", ["conv: {out: 3, kernel: 3, trainable: false}", "batchnorm: {trainable: false}",
                                    "layernorm: {trainable: false}", "prelu: {trainable: false}",
                                    "conv_transpose: {out: 3, kernel: 2, trainable: false}",
                                    "bias: {trainable: false}", "groupnorm: {groups: 1, trainable: false}"])
def test_a_frozen_prefix_keeps_nothing(write_spec, frozen: str) -> None:  # type: ignore[no-untyped-def]
    s = spec(write_spec, f"  - {frozen}\n  - relu\n  - conv: {{out: 2, kernel: 1}}\n", "[3, 6, 6]")
    first = {"conv": lambda: nn.Conv2d(3, 3, 3), "batchnorm": lambda: nn.BatchNorm2d(3),
             "layernorm": lambda: nn.LayerNorm([3, 6, 6]), "prelu": lambda: nn.PReLU(),
             "conv_transpose": lambda: nn.ConvTranspose2d(3, 3, 2), "groupnorm": lambda: nn.GroupNorm(1, 3)}
    kind = frozen.split(":")[0]
    if kind == "bias":
        from archcalc.torch.modules import Bias  # x + b: plain torch, a parameter and an add
        head: nn.Module = Bias((3, 1, 1))
    else:
        head = first[kind]()
    out_size = {"conv": 4, "conv_transpose": 7}.get(kind, 6)
    reference = nn.Sequential(head.requires_grad_(False), nn.ReLU(), nn.Conv2d(3, 2, 1))
    x = torch.randn(2, 3, 6, 6)
    measured = saved_bytes(reference, x)
    assert measured == 2 * 3 * out_size * out_size * 4  # only the trainable conv's input (the relu's output)
    assert analyze(s, batch=2).totals.saved_bytes == measured
    assert (analyze(s, batch=2, input_requires_grad=True).totals.saved_bytes
            == saved_bytes(reference, x.clone().requires_grad_(True)))


def test_cli_input_requires_grad(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec("name: t\ninput: [3, 8, 8]\nlayers:\n  - maxpool: {kernel: 2}\n  - relu\n"
                      "  - conv: {out: 4, kernel: 3, padding: 1}\n")
    runner = CliRunner()
    for extra, expected in (([], 384), (["--input-requires-grad"], 2688)):
        calc = runner.invoke(app, ["calc", str(path), "-b", "2", "-f", "json", *extra])
        assert calc.exit_code == 0, calc.output
        import json

        assert json.loads(calc.stdout)["totals"]["saved_activation_bytes"] == expected
        check = runner.invoke(app, ["validate", str(path), "-b", "2", "-f", "json", *extra])
        assert check.exit_code == 0, check.output
        saved = [c for c in json.loads(check.stdout)["checks"] if c["quantity"] == "saved_bytes"]
        assert saved and saved[0]["measured"] == expected


# ---- the inference peak -----------------------------------------------------------------------------------------


def test_peak_of_a_three_way_product(write_spec) -> None:  # type: ignore[no-untyped-def]
    # x * x * x: the running product x * x is alive while the second product is made.
    s = spec(write_spec, "  - parallel: [[], [], []]\n    merge: mul\n", "[1, 1, 1]")
    model = Product(nn.Identity(), nn.Identity(), nn.Identity())
    x = torch.randn(1, 1, 1, 1)
    assert predicted_peak(analyze(s)) == peak_bytes(lambda: model(x)) == 8


@pytest.mark.parametrize(("layer", "input_", "reference"), [
    # 1x1 kernels, so that the CPU convolution needs no im2col workspace of its own (see the README).
    ("conv: {out_channels: 1, kernel_size: 1, padding: [[0, 1]]}", (1, 1),
     lambda: nn.Sequential(nn.ZeroPad1d((0, 1)), nn.Conv1d(1, 1, 1))),
    ("conv: {out_channels: 3, kernel_size: 1, padding: [[1, 0], [0, 2]]}", (2, 6, 6),
     lambda: nn.Sequential(nn.ZeroPad2d((0, 2, 1, 0)), nn.Conv2d(2, 3, 1))),
    ("avgpool: {kernel_size: 2, padding: [[0, 1], [1, 0]]}", (2, 5, 5),
     lambda: _pad_pool(nn.AvgPool2d(2), (1, 0, 0, 1), 0.0)),
    ("maxpool: {kernel_size: 3, stride: 2, padding: same}", (3, 6, 6),
     lambda: _pad_pool(nn.MaxPool2d(3, 2), (0, 1, 0, 1), float("-inf"))),
])
def test_peak_counts_the_explicit_padding_copy(write_spec, layer: str, input_: tuple[int, ...],
                                               reference) -> None:  # type: ignore[no-untyped-def]
    s = spec(write_spec, f"  - {layer}\n", str(list(input_)))
    model = reference().eval()
    x = torch.randn(1, *input_)
    assert predicted_peak(analyze(s)) == peak_bytes(lambda: model(x))


@pytest.mark.parametrize(("channels", "size"), [(1, 5), (2, 5), (3, 3), (5, 5), (1, 2), (4, 7)])
@pytest.mark.parametrize("spatial", [(1,), (3, 2)])
def test_peak_of_lrn(write_spec, channels: int, size: int, spatial: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    # With fewer channels than size - 1 the channel-padded squares outgrow two input-sized temporaries.
    input_ = (channels, *spatial)
    s = spec(write_spec, f"  - lrn: {{size: {size}}}\n", str(list(input_)))
    model = nn.LocalResponseNorm(size).eval()
    x = torch.randn(1, *input_)
    measured = peak_bytes(lambda: model(x))
    # F.local_response_norm also wraps one float64 scalar (8 bytes) in a tensor: a constant, not an activation.
    assert 0 <= measured - predicted_peak(analyze(s)) <= 8
