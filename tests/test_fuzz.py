"""Bad input never gives a traceback: random, mostly wrong specs either analyze or raise a SpecError whose message
starts with the file's `FILE:LINE:COL: ` location."""

from __future__ import annotations

import os
import re

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.kinds import REGISTRY
from archcalc.core.spec import load_spec

KINDS = sorted(REGISTRY) + ["repeat", "residual", "parallel", "sequence", "unit", "nosuchkind"]
ARG_NAMES = sorted({a.name for k in REGISTRY.values() for a in k.args} | {al for k in REGISTRY.values() for a in k.args
                                                                          for al in a.aliases}) + ["name", "bogus"]
SCALARS = st.one_of(st.integers(-3, 40), st.sampled_from(["same", "valid", "2 * w", "w // 0", "(", "w", "x", "",
                                                          "nearest", "position", "3x3"]),
                    st.booleans(), st.none(), st.floats(-1, 2, allow_nan=False))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3), st.lists(st.lists(st.integers(0, 3), max_size=3),
                                                                   max_size=3))


@st.composite
def layer(draw, depth: int = 0):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(KINDS))
    if draw(st.booleans()):
        return kind
    names = [a.name for a in REGISTRY[kind].args] if kind in REGISTRY else []
    if names and draw(st.integers(0, 4)):  # mostly the kind's own arguments, with small plausible values
        args = draw(st.dictionaries(st.sampled_from(names), st.one_of(st.integers(1, 5), VALUES), max_size=4))
    else:
        args = draw(st.dictionaries(st.sampled_from(ARG_NAMES), VALUES, max_size=4))
    item: dict = {kind: args}  # type: ignore[type-arg]
    if kind in ("repeat",):
        item = {"repeat": draw(SCALARS), "block": draw(layer(depth + 1)) if depth < 2 else "relu"}
    elif kind in ("residual", "parallel", "sequence"):
        body = draw(st.lists(layer(depth + 1), max_size=3)) if depth < 2 else ["relu"]
        item = {kind: [body, body] if kind == "parallel" else body}
        if kind == "parallel":
            item["merge"] = draw(st.sampled_from(["concat", "add", "mul", "max"]))
        if kind == "residual":
            item["shortcut"] = draw(st.sampled_from(["identity", "projection", "projection_conv", "other"]))
    return item


SPECS = st.fixed_dictionaries(
    {"name": st.sampled_from(["fuzz"] * 8 + ["", 3]),
     "input": st.sampled_from([[4, 16, 16]] * 6 + [[4, 20], [4, 4, 8, 8], [0, 4], "3x16x16", [3]]),
     "layers": st.lists(layer(), min_size=0, max_size=5)},
    optional={"blocks": st.just({"unit": {"args": {"w": 4}, "layers": [{"conv": {"out": "w", "kernel": 1}}]}}),
              "defaults": st.dictionaries(st.sampled_from(["conv", "maxpool", "nosuch"]),
                                          st.dictionaries(st.sampled_from(ARG_NAMES), VALUES, max_size=2),
                                          max_size=2),
              "args": st.dictionaries(st.sampled_from(["w", "x"]), SCALARS, max_size=2)},
)


# ARCHCALC_FUZZ_EXAMPLES=6000 for a longer hunt (6,000 examples ran clean on 2026-11-22).
@settings(max_examples=int(os.environ.get("ARCHCALC_FUZZ_EXAMPLES", "600")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(SPECS)
def test_random_specs_analyze_or_fail_cleanly(tmp_path_factory, spec) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("fuzz") / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    try:
        analyze(load_spec(path), strict=True)
        event("analyzed")
    except SpecError as exc:  # anything else (another exception type) is a bug and fails the test as a traceback
        message = str(exc)
        # The file exists and is readable, so every mistake is in it and has a place: the message starts with it.
        assert exc.loc is not None and exc.loc.path == str(path), message
        assert re.match(re.escape(str(path)) + r":\d+:\d+: \S", message), message
        event("rejected: " + message.split(": ", 1)[-1][:25])


# ---- the worst inputs: every family must fail with a located `file:line:col: ` message, fast ---------

import math  # noqa: E402
import time  # noqa: E402

HOSTILE_EXAMPLES = int(os.environ.get("ARCHCALC_FUZZ_EXAMPLES", "600")) // 4


def _located(path: object, text: str, input_shape: tuple[int, ...] | None = None, seconds: float = 3.0) -> str:
    """Analyze the spec text; it may succeed, but a failure must be a SpecError located in the file, and either
    must come within `seconds` (no hang, no expansion running until memory is gone)."""
    spec_path = path / "spec.yaml"  # type: ignore[operator]
    spec_path.write_text(text, encoding="utf-8")
    start = time.perf_counter()
    try:
        analyze(load_spec(spec_path), input_shape=input_shape)
        outcome = "analyzed"
    except SpecError as exc:
        message = str(exc)
        assert re.match(re.escape(str(spec_path)) + r":\d+:\d+: \S", message), message
        outcome = "located: " + message.split(": ", 1)[1][:30]
    assert time.perf_counter() - start < seconds, f"took {time.perf_counter() - start:.1f} s"
    return outcome


HEAD = "name: fuzz\ninput: [3, 16, 16]\n"
ATOMS = st.sampled_from(["0", "1", "2", "-1", "64", "2**62", "1e308", "0.5", "9" * 25, "1e-300", "w", "(-8)"])
OPS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**"])


@st.composite
def hostile_expression(draw, depth: int = 0):  # type: ignore[no-untyped-def]
    kind = draw(st.integers(0, 5 if depth < 4 else 0))
    if kind == 0:
        return draw(ATOMS)
    if kind == 1:
        return f"{draw(hostile_expression(depth + 1))} {draw(OPS)} {draw(hostile_expression(depth + 1))}"
    if kind == 2:
        func = draw(st.sampled_from(["ceil_div", "round_to", "min", "max"]))
        return f"{func}({draw(hostile_expression(depth + 1))}, {draw(hostile_expression(depth + 1))})"
    if kind == 3:
        n = draw(st.integers(1, 300))
        return "(" * n + draw(hostile_expression(depth + 1)) + ")" * n
    if kind == 4:
        return "**".join([draw(ATOMS)] * draw(st.integers(2, 3000)))
    return "-" * draw(st.integers(1, 500)) + draw(hostile_expression(depth + 1))


@settings(max_examples=HOSTILE_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_expression())
def test_hostile_arithmetic(tmp_path_factory, expression) -> None:  # type: ignore[no-untyped-def]
    text = HEAD + "args: {w: 4}\nlayers:\n  - conv: {out: " + yaml.safe_dump(expression).strip().removesuffix(
        "\n...") + ", kernel: 1}\n"
    event(_located(tmp_path_factory.mktemp("expr"), text))


@st.composite
def deep_nesting(draw):  # type: ignore[no-untyped-def]
    family = draw(st.sampled_from(["flow", "sequence", "blocks", "mapping"]))
    n = draw(st.integers(30, 900))
    if family == "flow":
        return HEAD + "layers: [relu]\nnotes: " + "[" * n + "]" * n + "\n"
    if family == "mapping":
        return HEAD + "layers: [relu]\nnotes: " + "{a: " * n + "1" + "}" * n + "\n"
    if family == "sequence":
        text, indent = HEAD + "layers:\n", "  "
        for _ in range(min(n, 400)):
            text += indent + "- sequence:\n"
            indent += "    "
        return text + indent + "- relu\n"
    text = HEAD + "blocks:\n  b0:\n    layers: [relu]\n"
    text += "".join(f"  b{i}:\n    layers: [b{i - 1}]\n" for i in range(1, n))
    return text + f"layers: [b{n - 1}]\n"


@settings(max_examples=HOSTILE_EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deep_nesting())
def test_deep_nesting(tmp_path_factory, text) -> None:  # type: ignore[no-untyped-def]
    event(_located(tmp_path_factory.mktemp("deep"), text, seconds=5.0))


@st.composite
def expansion_bomb(draw):  # type: ignore[no-untyped-def]
    family = draw(st.sampled_from(["repeat", "nested", "args", "fanout"]))
    big = draw(st.sampled_from([10**5 + 1, 10**6, 10**9, 10**15, 2**62]))
    if family == "repeat":
        return HEAD + f"layers:\n  - relu\n  - repeat: {big}\n    block: relu\n"
    if family == "nested":
        a, b = draw(st.integers(300, 5000)), draw(st.integers(300, 5000))
        return HEAD + f"layers:\n  - repeat: {a}\n    block: {{repeat: {b}, block: [relu, relu]}}\n"
    if family == "args":
        return HEAD + (f"args: {{depth: {big}}}\nblocks:\n  u:\n    args: {{n: 2}}\n    repeat: n\n    block: relu\n"
                       "layers:\n  - u: {n: depth}\n")
    fan = draw(st.integers(2, 6))
    levels = draw(st.integers(math.ceil(math.log(100_001, fan)) + 1, 18))  # always beyond the default limit
    text = HEAD + "blocks:\n  b0:\n    layers: [relu]\n"
    text += "".join(f"  b{i}:\n    layers: [{', '.join([f'b{i - 1}'] * fan)}]\n" for i in range(1, levels))
    return text + f"layers: [b{levels - 1}]\n"


@settings(max_examples=HOSTILE_EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expansion_bomb())
def test_expansion_bombs(tmp_path_factory, text) -> None:  # type: ignore[no-untyped-def]
    # Every bomb is beyond the default --max-layers: refused, located, before anything is expanded.
    outcome = _located(tmp_path_factory.mktemp("bomb"), text, seconds=5.0)
    assert outcome.startswith("located: the spec expands to") or "repeat" in outcome, outcome
    event(outcome[:40])


@settings(max_examples=HOSTILE_EXAMPLES // 2, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 300), min_size=1, max_size=5),
       st.sampled_from(["[3, 64, 64]", "[3, 64]", "[2, 8, 16, 16]", "[32, 32, 3]"]))
def test_wrong_rank_overrides(tmp_path_factory, shape, own) -> None:  # type: ignore[no-untyped-def]
    text = f"name: fuzz\ninput: {own}\nlayers:\n  - conv: {{out: 4, kernel: 1}}\n  - relu\n"
    outcome = _located(tmp_path_factory.mktemp("rank"), text, tuple(shape))
    own_rank = own.count(",") + 1
    if len(shape) != own_rank:
        assert outcome.startswith("located: --input"), outcome
    event(outcome)
