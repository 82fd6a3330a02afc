"""The receptive field measured on the real module, independently of archcalc's formula.

Two physical measurements, both exact for any DAG:

- By gradient (the classic empirical check): back-propagate from the output positions with coordinate `o` on one
  spatial axis (all channels, all positions on the other axes) and record which input coordinates on that axis get a
  non-zero gradient; their extent (last - first + 1) is what output coordinate `o` sees. The receptive field on that
  axis is the largest extent over `o`. To keep every path's gradient non-zero the module runs with every
  parameter drawn from [0.5, 1.5] and the input from [0.5, 1.5]: every activation stays positive, so ReLU, ReLU6,
  hardsigmoid and friends stay in their linear part, and sums of positive terms cannot cancel to zero.
- By NaN propagation: poison every input element with coordinate `i` on one axis, run forward, and see which output
  coordinates become NaN (a NaN spreads through every product, sum, max and copy that reads it, whatever the weight).
  This one also sees through max pooling and maxout, whose gradient goes to one input per window (the gradient
  check's blind spot), so max-type kinds are measured this way only. It counts every input an op reads, also one
  read with weight exactly 0: linear interpolation at a position that lands on an input sample (scale 3, output 1:
  source 0.0, weights 1 and 0) reads the neighbour the gradient rightly ignores, so chains with linear
  upsampling are held to the gradient only.

Both are compared with archcalc's receptive field as it is seen on the input: min(theoretical, input size) per axis
(core.receptive.seen). Normalization whose statistics span the spatial axes (layer norm over C x H x W or H x W,
group norm) makes every output depend on the whole input through its mean and variance; the receptive field
(Araujo et al., "Computing receptive fields of convolutional neural networks", Distill 2019) follows the
sliding-window path only and leaves such statistics out, so for those kinds the measurement is asserted to be the
whole input and archcalc's figure to be 1 -- the convention, stated where it is tested.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import analyzes, load_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archcalc.core.analyze import Report, analyze
from archcalc.core.kinds import REGISTRY
from archcalc.core.kinds.base import Tokens
from archcalc.core.receptive import seen
from archcalc.torch.build import build_module

# gradient reaches one input per window (psa_attention: a saturated softmax, with the test's positive weights, is
# one-hot, so most positions get no gradient although every one reaches the output)
MAX_TYPE = {"maxpool", "adaptive_maxpool", "global_maxpool", "maxout", "psa_attention", "bilinear_attention"}
SPATIAL_STATISTICS = {("layernorm", 0), ("layernorm", 2), ("layernorm", 3), ("groupnorm", 0), ("groupnorm", 1),
                      ("groupnorm", 2), ("grn", 0), ("grn", 1), ("grn", 2), ("evonorm_s0", 0), ("evonorm_s0", 1),
                      ("evonorm_s0", 2), ("frn", 0), ("frn", 1), ("frn", 2)}


def _positions(n: int) -> list[int]:
    """Output coordinates to back-propagate from: all of them on short axes; on long ones both ends and a run of
    34 around the centre (longer than the period of the extents' pattern, which is the stride of the finest grid
    in play: 32 in FCN's transposed conv)."""
    if n <= 40:
        return list(range(n))
    mid = n // 2
    return sorted({0, 1, 2, n - 3, n - 2, n - 1, *range(mid - 17, mid + 17)})


def _positive(model: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(0.5, 1.5)
            p.requires_grad_(False)  # only the input's gradient is measured
    return model


def _outputs(y: object) -> list[torch.Tensor]:
    return list(y.values()) if isinstance(y, dict) else [y]  # type: ignore[list-item, union-attr]


def _extent(mask: torch.Tensor) -> int:
    hit = mask.nonzero()
    return 0 if len(hit) == 0 else int(hit.max() - hit.min() + 1)


def by_gradient(model: torch.nn.Module, shape: tuple[int, ...], out: int = 0) -> list[int]:
    """Per spatial axis of the input: the largest extent of non-zero input gradient from one output coordinate.
    Coordinate `o` back-propagates through its own copy of the input (sample b of a batch; in eval mode samples
    are independent), so one backward pass measures every coordinate. An output without spatial axes (after
    flatten, linear or global pooling) is one coordinate."""
    found = []
    for axis in range(len(shape) - 1):
        probe = _outputs(model(torch.ones(1, *shape)))[out]
        coords = _positions(probe.shape[2 + axis]) if probe.dim() == len(shape) + 1 else [None]
        x = (torch.rand(1, *shape) + 0.5).repeat(len(coords), *(1,) * len(shape)).requires_grad_(True)
        y = _outputs(model(x))[out]
        seed = torch.zeros_like(y)
        for b, o in enumerate(coords):
            (seed[b] if o is None else seed[b].select(1 + axis, o)).fill_(1.0)
        (grad,) = torch.autograd.grad(y, x, seed)
        found.append(max(_extent(_any_except(g != 0, 1 + axis)) for g in grad))
    return found


@torch.no_grad()
def by_nan(model: torch.nn.Module, shape: tuple[int, ...], out: int = 0) -> list[int]:
    """Per spatial axis: the largest extent of input coordinates whose NaN reaches one output coordinate."""
    found = []
    for axis in range(len(shape) - 1):
        n = shape[1 + axis]
        x = torch.rand(1, *shape).repeat(n, *(1,) * len(shape)) + 0.5  # sample i: coordinate i poisoned
        for i in range(n):
            x[i].select(1 + axis, i).fill_(float("nan"))
        nan = torch.isnan(_outputs(model(x))[out])
        if nan.dim() == x.dim():  # [input coordinate, output coordinate]
            depends = nan.movedim(2 + axis, 1).flatten(2).any(dim=2)
        else:
            depends = nan.flatten(1).any(dim=1, keepdim=True)
        found.append(max(_extent(column) for column in depends.T))
    return found


def _any_except(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Whether any element is true, per index along `dim`."""
    return t.movedim(dim, 0).flatten(1).any(dim=1)


def seen_rf(report: Report, output: str | None = None) -> list[int]:
    """archcalc's receptive field on the actual input (clipped), of the named output (or the last row)."""
    row = next(r for r in report.rows if r.name == output) if output else report.rows[-1]
    return list(seen(report.rows, report.input, row.rf).clipped)


def one_layer(kind: str, shape: tuple[int, ...], args: object) -> Report:
    text = f"name: one\ninput: {list(shape)}\nlayers:\n  - {kind}: {json.dumps(args)}\n"
    return analyze(load_text(text))


def lean(name: str, shape: tuple[int, ...], args: dict[str, object]) -> tuple[tuple[int, ...], dict[str, object]]:
    """The example with at most 4 channels in and out where the kind allows it: the receptive field depends on the
    spatial geometry only, and the wide examples (AlexNet's conv1, LRN on 96 x 55 x 55) would take a minute."""
    small = {k: min(v, 4) if k in ("out_channels", "out_features") and isinstance(v, int) else v
             for k, v in args.items()}
    candidate = (min(shape[0], 4), *shape[1:])
    if args.get("groups", 1) != 1 or not analyzes(f"name: one\ninput: {list(candidate)}\nlayers:\n"
                                                   f"  - {name}: {json.dumps(small)}\n"):
        return shape, args
    return candidate, small


# Token layouts are measured through a grid by gradient in tests/test_tokens.py (one output token at a time).
CASES = [(name, i, ex) for name, kind in sorted(REGISTRY.items()) for i, ex in enumerate(kind.examples)
         if len(ex.input) > 1 and not isinstance(ex.input, Tokens) and name != "to_tokens"]


@pytest.mark.parametrize(("name", "index", "example"), CASES, ids=[f"{n}-{i}" for n, i, _ in CASES])
def test_every_kind_example_receptive_field_is_what_torch_shows(name, index, example) -> None:  # type: ignore[no-untyped-def]
    shape, args = lean(name, example.input, dict(example.args))
    report = one_layer(name, shape, args)
    model = _positive(build_module(report))
    predicted = seen_rf(report)
    measured = by_nan(model, shape)
    if (name, index) in SPATIAL_STATISTICS:
        assert measured == list(shape[1:]) and report.rows[-1].rf == (1,) * (len(shape) - 1)
        return
    assert measured == predicted, (report.rows[-1].rf, measured)
    if name not in MAX_TYPE:
        assert by_gradient(model, shape) == predicted


# ---- chains where the grid gets finer: the fractional jump of transposed conv and upsampling -----------------------

CHAINS = [
    # (input, layers): each a spec's layer line
    ([2, 9, 9], ["conv_transpose: {out: 2, kernel: 4, stride: 2, padding: 1}", "conv: {out: 2, kernel: 3}"]),
    ([2, 9, 9], ["conv_transpose: {out: 2, kernel: 3, stride: 2}", "conv: {out: 2, kernel: 4}"]),
    ([2, 8, 8], ["upsample: {scale_factor: 2}", "conv: {out: 2, kernel: 3, padding: 1}"]),
    ([2, 16, 16], ["conv: {out: 2, kernel: 3, stride: 2, padding: 1}", "upsample: {scale_factor: 2}",
                   "conv: {out: 2, kernel: 3, padding: 1}"]),
    ([2, 12, 12], ["avgpool: {kernel: 2}", "upsample: {scale_factor: 2, mode: linear}", "conv: {out: 1, kernel: 1}"]),
    ([2, 8, 8], ["upsample: {scale_factor: 3, mode: linear}", "conv: {out: 2, kernel: 5, padding: 2}"]),
    ([4, 12, 12], ["pixel_unshuffle: {downscale_factor: 2}", "conv: {out: 4, kernel: 1}"]),
    ([4, 12, 12], ["pixel_unshuffle: {downscale_factor: 2}", "conv: {out: 4, kernel: 3, padding: 1}"]),
    ([8, 6, 6], ["pixel_shuffle: {upscale_factor: 2}", "conv: {out: 2, kernel: 3, padding: 1}"]),
    # a crop keeps the grid on every axis (a stride-2 grid here): the windows after it still widen by 2 * (k - 1)
    ([2, 13, 11], ["conv: {out: 2, kernel: 3, stride: 2}", "crop: {size: [3, 3]}", "conv: {out: 2, kernel: 3}"]),
]

# Known limit of the theoretical formula, found by this measurement: with a fractional jump (after upsampling or a
# transposed conv) `rf += (kernel - 1) * jump` assumes a window on the finer grid covers (kernel - 1) * jump
# coarse positions, but a window that straddles two coarse positions sees one more. (input, layers, predicted,
# measured per axis.)
STRADDLING = [
    ([2, 8, 8], ["upsample: {scale_factor: 2}", "conv: {out: 2, kernel: 4}"], 2, 3),
    ([2, 20, 20], ["conv: {out: 2, kernel: 3, stride: 2}", "conv: {out: 2, kernel: 3, stride: 2}",
                   "conv_transpose: {out: 2, kernel: 2, stride: 2}", "conv_transpose: {out: 2, kernel: 2, stride: 2}",
                   "conv: {out: 2, kernel: 3, padding: 1}"], 9, 11),
]


def _chain(shape: list[int], layers: list[str]) -> tuple[Report, torch.nn.Module]:
    text = f"name: chain\ninput: {shape}\nlayers:\n" + "".join(f"  - {layer}\n" for layer in layers)
    report = analyze(load_text(text))
    return report, _positive(build_module(report))


@pytest.mark.parametrize(("shape", "layers"), CHAINS, ids=[" | ".join(c[1]) for c in CHAINS])
def test_chains_through_finer_grids(shape, layers) -> None:  # type: ignore[no-untyped-def]
    report, model = _chain(shape, layers)
    predicted = seen_rf(report)
    assert by_gradient(model, tuple(shape)) == predicted, report.rows[-1].rf
    if not any("linear" in layer for layer in layers):  # NaN also marks reads with weight 0 (module doc)
        assert by_nan(model, tuple(shape)) == predicted


@pytest.mark.parametrize(("shape", "layers", "predicted", "measured"), STRADDLING,
                         ids=[" | ".join(c[1]) for c in STRADDLING])
def test_straddling_windows_see_more_than_the_formula(shape, layers, predicted, measured) -> None:  # type: ignore[no-untyped-def]
    report, model = _chain(shape, layers)
    assert seen_rf(report) == [predicted] * 2
    assert by_gradient(model, tuple(shape)) == by_nan(model, tuple(shape)) == [measured] * 2


# ---- random DAGs (the property test's shapes of graph: skips, merges, several outputs) ---------------------------

# The property test's layers and more windows, without the layers that make the grid finer (upsampling, transposed
# conv): after those the formula is known to under-count windows that straddle coarse positions (STRADDLING above).
LAYERS = [
    "conv: {{out: {c}, kernel: 3, padding: 1}}",
    "conv: {{out: {c}, kernel: 1}}",
    "conv: {{out: {c}, kernel: 3, stride: 2, padding: 1}}",
    "conv: {{out: {c}, kernel: 3, dilation: 2, padding: 2}}",
    "conv: {{out: {c}, kernel: [5, 1], padding: [2, 0]}}",
    "maxpool: {{kernel: 2}}",
    "maxpool: {{kernel: 3, stride: 2, padding: 1, ceil_mode: true}}",
    "avgpool: {{kernel: 3, stride: 2, padding: 1}}",
    "batchnorm",
    "relu",
    "sigmoid",
]
# Without padding every path's first output position sees the window [0, rf): the clipped figure is then exact.
# With padding the grid's alignment can keep every window from spanning it (6 x 6 input, maxpool 3/2 p1 ceil, then
# maxpool 2: 5 in theory, 4 seen), so there it is an upper bound.
UNPADDED = [layer for layer in LAYERS if "padding" not in layer]


@st.composite
def dags(draw: st.DrawFn) -> str:
    c, h = draw(st.integers(1, 3)), draw(st.integers(6, 14))
    head = f"name: dag\ninput: [{c}, {h}, {h}]\nunused: allow\nlayers:\n"
    choices = draw(st.sampled_from([LAYERS, UNPADDED]))
    names = ["input"]
    read: set[str] = set()
    body = ""
    for n in range(draw(st.integers(2, 7))):
        name = f"t{n}"
        if len(names) > 1 and draw(st.integers(0, 2)) == 0:
            k = draw(st.integers(2, min(3, len(names))))
            sources = draw(st.lists(st.sampled_from(names), min_size=k, max_size=k, unique=True))
            op = draw(st.sampled_from(["concat", "add", "mul"]))
            candidate = f"  - {op}: [{', '.join(sources)}]\n    name: {name}\n"
        else:
            sources = [draw(st.sampled_from(names[-3:] if draw(st.booleans()) else names))]
            layer = draw(st.sampled_from(choices)).format(c=draw(st.integers(1, 3)))
            candidate = f"  - {layer}\n    name: {name}\n    from: {sources[0]}\n" if "{" in layer else \
                f"  - {layer}:\n    name: {name}\n    from: {sources[0]}\n"
        if analyzes(head + body + candidate):
            body += candidate
            names.append(name)
            read.update(sources)
    if not body:
        body = "  - relu:\n    name: t0\n"
        names.append("t0")
    sinks = [n for n in names[1:] if n not in read] or [names[-1]]
    return head + body + f"outputs: [{', '.join(sinks)}]\n"


@settings(max_examples=int(os.environ.get("RF_EXAMPLES", "20")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dags_receptive_field_is_what_torch_shows(text: str) -> None:
    spec = load_text(text)
    report = analyze(spec)
    model = _positive(build_module(report))
    shape = tuple(report.input)
    for out, name in enumerate(spec_outputs(report)):
        predicted = seen_rf(report, name)
        theory = next(r.rf for r in report.rows if r.name == name)
        measured = [by_nan(model, shape, out)]
        if not any(r.kind in MAX_TYPE for r in report.rows):
            measured.append(by_gradient(model, shape, out))
        for found in measured:
            if "padding" in text:
                assert all(m <= p for m, p in zip(found, predicted)), (text, name, theory, found, predicted)
            else:
                assert found == predicted, (text, name, theory)


def spec_outputs(report: Report) -> list[str]:
    return [name for name, _ in report.graph.outputs]
