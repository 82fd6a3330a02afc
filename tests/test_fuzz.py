"""Bad input never gives a traceback: random, mostly wrong specs either analyze or raise a located SpecError."""

from __future__ import annotations

import os

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from archcalc.core.analyze import analyze
from archcalc.core.errors import ArchcalcError
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
    except ArchcalcError as exc:
        message = str(exc)
        assert message and "Traceback" not in message
        event("rejected: " + message.split(": ", 2)[-1][:25])
