"""`validate` agrees with `calc` on specs with layers no output depends on (`unused: allow`), issue 32.

Such a layer (often left behind by an item whose `when:` is false) is built and run, but calc leaves it out of the
totals. validate used to compare calc's totals with the whole module's, so params, MACs and activation bytes
disagreed (21 of 90 random graph-language specs). The expected figures below are written out by hand.

The property test draws random graph-language specs — blocks with `when:`, `from:` skips, merges of named tensors,
several outputs or none — and checks that every one validate runs agrees with torch.
"""

from __future__ import annotations

import os

import pytest
from conftest import load_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.torch.validate import validate

# `side` is read only by the add, whose `when: 0` switches it off: no output depends on `side`.
WHEN_ZERO = """\
name: dead
input: [3, 8, 8]
unused: allow
layers:
  - conv: {out: 4, kernel: 3, padding: 1, name: a}
  - conv: {out: 2, kernel: 1, name: side}
  - add: [side, side]
    when: 0
  - relu: {name: b}
    from: a
"""


def _totals(v):  # type: ignore[no-untyped-def]
    return {c.quantity: (c.predicted, c.measured) for c in v.checks if c.layer is None}


def test_a_layer_switched_off_by_when_0_leaves_the_totals_as_calc_gives_them() -> None:
    spec = load_text(WHEN_ZERO)
    report = analyze(spec)
    assert [r.name for r in report.rows if not r.used] == ["side"]
    # a: 3x3 conv 3 -> 4: 4*3*9 + 4 = 112 params, 4*8*8 * 3*9 = 6,912 MACs; side (not counted): 4*2 + 2 = 10, 512 MACs
    # activations, float32: a 4*8*8*4 = 1,024 bytes, b the same; side's 2*8*8*4 = 512 left out
    v = validate(spec, "cpu", batch=1)
    assert v.ok, [(c.quantity, c.layer, c.predicted, c.measured) for c in v.failures]
    totals = _totals(v)
    assert totals["params"] == (112, 112)
    assert totals["macs"] == (6_912, 6_912)
    assert totals["fvcore_flops"] == (6_912, 6_912)
    assert totals["activation_bytes"] == (2_048, 2_048)
    # forward 2 * 6,912 and the weight's gradient 2 * 6,912 (the input needs none); side runs forward only
    assert totals["training_flops"] == (27_648, 27_648)
    # the dead layer's own figures are still checked per layer
    per_layer = {(c.quantity, c.layer): c.measured for c in v.checks}
    assert per_layer[("params", "side")] == 10 and per_layer[("macs", "side")] == 512
    assert per_layer[("activation_bytes", "side")] == 512
    assert any("no output depends on (side)" in n for n in v.notes)


def test_a_dead_branch_with_batchnorm_buffers_and_a_dead_merge() -> None:
    # The dead part: conv 4 -> 3 (1x1: 4*3 + 3 = 15 params, 3*36*4 = 432 MACs), batchnorm (6 params; 3 + 3
    # running statistics + 1 counter = 7 buffers) and a concat; the output is `out` alone.
    spec = load_text("""\
name: dead2
input: [2, 6, 6]
unused: allow
layers:
  - conv: {out: 4, kernel: 1, name: stem}
  - conv: {out: 3, kernel: 1, name: d1}
  - batchnorm: {name: d2}
  - concat: [stem, d2]
  - relu: {name: out}
    from: stem
outputs: [out]
""")
    v = validate(spec, "cpu", batch=2)
    assert v.ok, [(c.quantity, c.layer, c.predicted, c.measured) for c in v.failures]
    totals = _totals(v)
    assert totals["params"] == (12, 12)  # stem: 2*4 + 4
    assert totals["buffers"] == (0, 0)
    assert totals["macs"] == (2 * 4 * 36 * 2, 2 * 4 * 36 * 2)  # batch 2
    assert totals["activation_bytes"] == (2 * 2 * 144 * 4, 2 * 2 * 144 * 4)  # stem and out, 4x6x6 float32 each


# ---- random graph-language specs -------------------------------------------------------------------------------

LAYERS = ["conv: {{out: {c}, kernel: 3, padding: 1}}", "conv: {{out: {c}, kernel: 1}}",
          "conv: {{out: {c}, kernel: 3, stride: 2, padding: 1}}", "maxpool: {{kernel: 2}}", "batchnorm", "relu",
          "sigmoid", "upsample: {{scale_factor: 2}}", "identity", "flatten"]
BLOCK = """\
blocks:
  blk:
    args: {se: 0, w: 2}
    layers:
      - conv: {out: w, kernel: 1, name: c1}
      - relu:
        when: se
      - conv: {out: w, kernel: 3, padding: 1, name: c2}
        when: se > 0 and w > 1
      - add: [c1, c1]
        when: not se
"""
WHENS = ["0", "1", "unlit", "lit", "false", "true", "lit and unlit", "lit or unlit", "not unlit"]


def _accepted(text: str) -> bool:
    try:
        analyze(load_text(text))
    except SpecError:
        return False
    return True


@st.composite
def graph_specs(draw: st.DrawFn) -> str:
    c, h = draw(st.integers(1, 4)), draw(st.integers(6, 12))
    head = f"name: g\ninput: [{c}, {h}, {h}]\nunused: allow\nargs: {{lit: 1, unlit: 0}}\n"
    if draw(st.booleans()):
        head += BLOCK
    head += "layers:\n"
    names, body = ["input"], ""
    for n in range(draw(st.integers(2, 11))):
        name = f"t{n}"
        when = f"    when: {draw(st.sampled_from(WHENS))}\n" if draw(st.integers(0, 3)) == 0 else ""
        if len(names) > 1 and draw(st.integers(0, 2)) == 0:
            k = draw(st.integers(2, min(3, len(names))))
            sources = draw(st.lists(st.sampled_from(names), min_size=k, max_size=k, unique=True))
            op = draw(st.sampled_from(["concat", "add", "mul"]))
            candidate = f"  - {op}: [{', '.join(sources)}]\n    name: {name}\n" + when
        else:
            source = draw(st.sampled_from(names))
            if "blk:" in head and draw(st.integers(0, 4)) == 0:
                layer = f"blk: {{se: {draw(st.integers(0, 1))}, w: {draw(st.integers(1, 4))}}}"
            else:
                layer = draw(st.sampled_from(LAYERS)).format(c=draw(st.integers(1, 5)))
            where = f"    from: {source}\n" if draw(st.booleans()) else ""
            candidate = (f"  - {layer}\n" if "{" in layer else f"  - {layer}:\n") + f"    name: {name}\n" + where + when
        if _accepted(head + body + candidate):
            body += candidate
            names.append(name)
    if not body:
        body = "  - relu:\n    name: t0\n"
    if draw(st.booleans()):  # some outputs, or none (the last item's output)
        outs = draw(st.lists(st.sampled_from(names[1:] or ["t0"]), min_size=1, max_size=3, unique=True))
        text = head + body + f"outputs: [{', '.join(outs)}]\n"
        if _accepted(text):
            return text
    return head + body


def _agrees(text: str) -> None:
    try:
        spec = load_text(text)
        analyze(spec)
    except SpecError:  # e.g. an output switched off by its `when:` (the candidates were checked one by one)
        return
    v = validate(spec, "cpu", batch=2)
    assert v.ok, text + "\n" + "\n".join(f"{c.quantity} {c.layer}: {c.predicted} vs {c.measured}" for c in v.failures)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graph_specs())
def test_random_graph_specs_validate_as_calc_counts(text: str) -> None:
    _agrees(text)


@pytest.mark.long
@settings(max_examples=int(os.environ.get("ARCHCALC_GRAPH_EXAMPLES", "400")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(graph_specs())
def test_random_graph_specs_validate_as_calc_counts_long(text: str) -> None:
    _agrees(text)
