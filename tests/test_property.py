"""Property: for random valid stacks of layers, written as YAML spec text, the analytic output shape, parameter
count and MACs equal what torch gives for the built module (FlopCounterMode's FLOPs / 2)."""

from __future__ import annotations

from pathlib import Path
from tempfile import TemporaryDirectory

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module

CHANNELS = st.integers(1, 6)
PADDING = st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"]), st.lists(st.integers(0, 2), min_size=2,
                                                                                       max_size=2))


def _flow(d: dict) -> str:  # type: ignore[type-arg]
    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if v is None:
            return "null"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    return "{" + ", ".join(f"{k}: {value(v)}" for k, v in d.items()) + "}"


@st.composite
def conv(draw: st.DrawFn, channels: int | None = None) -> str:
    out = channels if channels is not None else draw(CHANNELS)
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    args = {"out": out * groups if channels is None else out, "kernel": draw(st.integers(1, 4)),
            "stride": draw(st.integers(1, 3)), "padding": draw(PADDING), "dilation": draw(st.integers(1, 2)),
            "groups": groups if channels is None else 1, "bias": draw(st.booleans())}
    return f"conv: {_flow(args)}"


@st.composite
def pool(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["maxpool", "avgpool"]))
    k = draw(st.integers(1, 3))
    args: dict = {"kernel": k, "stride": draw(st.one_of(st.none(), st.integers(1, 3))),  # type: ignore[type-arg]
                  "padding": draw(st.one_of(st.integers(0, k // 2), st.just("same"))),
                  "ceil_mode": draw(st.booleans())}
    if kind == "maxpool":
        args["dilation"] = draw(st.integers(1, 2))
    return f"{kind}: {_flow(args)}"


@st.composite
def simple(draw: st.DrawFn) -> str:
    return draw(st.one_of(
        conv(),
        pool(),
        st.just("batchnorm"),
        st.just("relu"),
        st.builds(lambda c, k, s: f"conv_transpose: {_flow({'out': c, 'kernel': k, 'stride': s})}", CHANNELS,
                  st.integers(1, 3), st.integers(1, 2)),
        st.builds(lambda o: f"adaptive_avgpool: {_flow({'size': o})}", st.integers(1, 3)),
    ))


def _item(text: str, indent: int) -> str:
    return " " * indent + "- " + text + "\n"


@st.composite
def composite(draw: st.DrawFn) -> str:
    """A parallel (concat / add) or residual block, as YAML lines at indent 2."""
    what = draw(st.sampled_from(["concat", "add", "residual"]))
    if what == "residual":
        body = draw(st.lists(st.one_of(conv(channels=draw(CHANNELS)), st.just("batchnorm"), st.just("relu")),
                             min_size=1, max_size=3))
        shortcut = draw(st.sampled_from(["identity", "projection", "projection_conv"]))
        text = "  - residual:\n" + "".join(_item(b, 6) for b in body) + f"    shortcut: {shortcut}\n"
        if draw(st.booleans()):
            text += "    after: [relu]\n"
        return text
    n = draw(st.integers(2, 3))
    text = "  - parallel:\n"
    for _ in range(n):
        layers = draw(st.lists(st.one_of(conv(channels=draw(CHANNELS)), pool(), st.just("relu")), min_size=0,
                               max_size=2))
        text += "      -" + (" []\n" if not layers else "\n" + "".join(_item(x, 8) for x in layers))
    return text + f"    merge: {what}\n"


@st.composite
def specs(draw: st.DrawFn) -> str:
    """A valid spec: candidate layers that the analyzer rejects (a kernel larger than the input, a branch that
    does not fit its merge) are dropped as they are drawn, so every example is a real network."""
    c = draw(st.integers(1, 4))
    h, w = draw(st.integers(4, 20)), draw(st.integers(4, 20))
    head = f"name: random\ninput: [{c}, {h}, {w}]\nlayers:\n"
    body = ""
    for _ in range(draw(st.integers(1, 8))):
        candidate = draw(st.one_of(simple().map(lambda t: _item(t, 2)), composite()))
        if _valid(head + body + candidate):
            body += candidate
    if draw(st.booleans()) and _valid(head + body + _item("linear: {out: 3}", 2)):
        body += _item("linear: {out: 3}", 2)
    if not body:
        body = _item("relu", 2)
    return head + body


def _load(text: str):  # type: ignore[no-untyped-def]
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.yaml"
        path.write_text(text, encoding="utf-8")
        return load_spec(path)


def _valid(text: str) -> bool:
    try:
        analyze(_load(text))
    except SpecError:
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs())
def test_random_stacks_match_torch(text: str) -> None:
    report = analyze(_load(text), batch=2)
    model = build_module(report)
    x = torch.randn(2, *report.input)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        y = model(x)
    assert tuple(y.shape) == (2, *report.totals.output), text
    assert sum(p.numel() for p in model.parameters()) == report.totals.params, text
    assert counter.get_total_flops() == 2 * report.totals.macs, text
