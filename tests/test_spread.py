"""Merges over a list computed from the spec (issue 31, item 1): `NAME.*` in a merge's list is the outputs of every
copy of the repeat NAME, in order (`NAME.*[a:b]` a slice of them); and `cases:`, a chain of alternatives of which
one must hold.

The reference is YOLOv8's C2f (Jocher et al., Ultralytics YOLOv8, 2023: ultralytics/nn/modules/block.py) written
here from plain torch.nn, as its forward reads: cv1 (a 1x1 conv to 2c), its two channel halves, n bottlenecks each
reading the previous output, and cv2 over the concatenation of the halves and every bottleneck's output.
"""

from __future__ import annotations

import jsonschema
import pytest
import torch
import yaml
from conftest import load_text
from measure import dispatch_peak_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.schema import spec_schema
from archcalc.core.spec import parse_spec
from archcalc.core.yamlsrc import load as load_yaml
from archcalc.torch.build import build_module
from archcalc.torch.validate import validate

C2F = """\
name: c2f
input: [32, 20, 20]
args: {n: 2, shortcut: true}
blocks:
  cbs:                      # Ultralytics' Conv: conv (no bias), BN (eps 0.001), SiLU
    args: {c: ~, k: 1}
    layers:
      - conv: {out: c, kernel: k, padding: k // 2, bias: false}
      - batchnorm: {eps: 0.001}
      - silu
  bottleneck:
    args: {c: ~, shortcut: true}
    layers:
      - cbs: {c: c, k: 3, name: cv1}
      - cbs: {c: c, k: 3, name: cv2}
      - add: [cv2, $input]
        when: shortcut
  c2f:
    args: {c2: ~, n: 1, shortcut: false, e: 0.5, hidden: "floor(c2 * e)"}
    layers:
      - cbs: {c: 2 * hidden, name: cv1}
      - channel_slice: {start: 0, stop: hidden, name: y0}
      - channel_slice: {start: hidden, stop: 2 * hidden, name: y1}
        from: cv1
      - repeat: n
        name: m
        block: {bottleneck: {c: hidden, shortcut: shortcut}}
      - concat: [y0, y1, m.*]
      - cbs: {c: c2, name: cv2}
layers:
  - c2f: {c2: 64, n: n, shortcut: shortcut}
"""


def cbs(c1: int, c2: int, k: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(c1, c2, k, padding=k // 2, bias=False), nn.BatchNorm2d(c2, eps=0.001), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool) -> None:
        super().__init__()
        self.cv1, self.cv2, self.add = cbs(c, c, 3), cbs(c, c, 3), shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    def __init__(self, c1: int, c2: int, n: int, shortcut: bool, e: float = 0.5) -> None:
        super().__init__()
        self.c = int(c2 * e)
        self.cv1 = cbs(c1, 2 * self.c)
        self.cv2 = cbs((2 + n) * self.c, c2)
        self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))

    def forward_freeing(self, x: torch.Tensor) -> torch.Tensor:
        """The same computation with the list dropped once concatenated, as archcalc's liveness rule has it (a
        tensor lives until its last reader); Ultralytics' forward keeps `y` to its return, through cv2."""
        y = list(self.cv1(x).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        z = torch.cat(y, 1)
        del y
        return self.cv2(z)


def _spec(text: str, **sets: object):  # type: ignore[no-untyped-def]
    return parse_spec(load_yaml(text, "c2f.yaml"), "c2f.yaml", {k: str(v).lower() for k, v in sets.items()})


@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("shortcut", [True, False])
def test_c2f_with_every_copy_concatenated_equals_torch(n: int, shortcut: bool) -> None:
    report = analyze(_spec(C2F, n=n, shortcut=shortcut))
    net = C2f(32, 64, n, shortcut).eval()
    x = torch.randn(1, 32, 20, 20)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = net(x)
    assert report.totals.params == sum(p.numel() for p in net.parameters())
    assert report.totals.buffers == sum(b.numel() for b in net.buffers())
    assert report.totals.macs * 2 == counter.get_total_flops()
    assert report.totals.output == tuple(y.shape[1:])
    concat = next(r for r in report.rows if r.kind == "concat")
    assert concat.output == ((2 + n) * 32, 20, 20)  # the halves and every bottleneck's output
    with torch.no_grad():  # and the memory: the same tensors alive as in the plain forward
        measured = dispatch_peak_bytes(lambda: net.forward_freeing(x))
        held = dispatch_peak_bytes(lambda: net(x))
    t = report.totals
    assert t.peak_bytes - t.param_bytes - t.buffer_bytes - x.numel() * 4 == measured
    assert held > measured  # Ultralytics' own forward holds the halves and the bottleneck outputs through cv2


def test_c2f_validates() -> None:
    v = validate(_spec(C2F, n=3), "cpu", batch=2)
    assert v.ok, [(c.quantity, c.layer, c.predicted, c.measured) for c in v.failures]
    built = build_module(analyze(_spec(C2F, n=3)))
    x = torch.randn(1, 32, 20, 20)
    with torch.no_grad():
        assert tuple(built(x).shape) == (1, 64, 20, 20)


def test_a_slice_of_the_copies() -> None:
    # m.*[1:] leaves copy 0 out; m.*[::-1] reverses them (Python's slices). Quoted: YAML's flow lists read [ ] : .
    text = C2F.replace("concat: [y0, y1, m.*]", 'concat: [y0, "m.*[1:]"]')
    concat = next(r for r in analyze(_spec(text, n=3)).rows if r.kind == "concat")
    assert concat.reads == ("c2f1.y0", "c2f1.m.1.add1", "c2f1.m.2.add1")
    text = C2F.replace("concat: [y0, y1, m.*]", 'concat: ["m.*[::-1]", y0]')
    concat = next(r for r in analyze(_spec(text, n=3)).rows if r.kind == "concat")
    assert concat.reads == ("c2f1.m.2.add1", "c2f1.m.1.add1", "c2f1.m.0.add1", "c2f1.y0")


@pytest.mark.parametrize(("merge", "n", "message"), [
    ('concat: ["m.*[1:]"]', 1, "concat of 0 tensors (m.*[1:] gives 0); a merge needs at least two"),
    ("concat: [m.*]", 1, "concat of 1 tensor (m.* gives 1); a merge needs at least two"),
    ("concat: [cv1.*, y0]", 2, "'cv1.*': cv1 is not a repeat"),
    ("concat: [mm.*, y0]", 2, "no tensor named 'mm'"),
    ('concat: ["m.*[::0]", y0]', 2, "a slice step cannot be zero"),
    ("concat: [m.*x, y0]", 2, "is not a tensor name, NAME.*"),
    ("concat: [y0]", 2, "concat needs a list of at least two tensor names"),
])
def test_a_bad_spread_is_a_located_error(merge: str, n: int, message: str) -> None:
    text = C2F.replace("concat: [y0, y1, m.*]", merge)
    with pytest.raises(SpecError, match=message.replace("*", r"\*").replace("[", r"\[").replace("(", r"\(")
                       .replace(")", r"\)")) as err:
        analyze(_spec(text, n=n))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if merge in row)
    assert err.value.loc is not None and err.value.loc.line == line


def test_the_schema_takes_a_spread() -> None:
    validator = jsonschema.Draft7Validator(spec_schema())
    data = yaml.safe_load(C2F)
    assert validator.is_valid(data)
    data["blocks"]["c2f"]["layers"][4] = {"concat": ["m.*"]}
    assert validator.is_valid(data)
    data["blocks"]["c2f"]["layers"][4] = {"concat": ["y0", "m.*[1:]"]}
    assert validator.is_valid(data)
    data["blocks"]["c2f"]["layers"][4] = {"concat": ["y0"]}  # one entry that is no spread
    assert not validator.is_valid(data)


# ---- cases: a chain of alternatives ---------------------------------------------------------------------------

# The C2f without `m.*`: one concat per n. Written with `cases:`, an n no case covers is an error (it used
# to build no concat at all and give the wrong parameters silently).
CASES = C2F.replace("""      - concat: [y0, y1, m.*]
""", """      - cases:
          - concat: [y0, y1, m.0]
            when: n == 1
          - concat: [y0, y1, m.0, m.1]
            when: n == 2
          - concat: [y0, y1, m.0, m.1, m.2]
            when: n == 3
        name: cat
""")


@pytest.mark.parametrize("n", [1, 2, 3])
def test_cases_build_the_one_that_holds_under_the_cases_name(n: int) -> None:
    report = analyze(_spec(CASES, n=n))
    assert report.totals.params == sum(p.numel() for p in C2f(32, 64, n, True).parameters())
    concat = next(r for r in report.rows if r.kind == "concat")
    assert concat.name == "c2f1.cat"


def test_cases_that_all_fail_are_a_located_error() -> None:
    with pytest.raises(SpecError, match=r"no case holds: n == 1, n == 2, n == 3 are all false \(n = 4\)") as err:
        analyze(_spec(CASES, n=4))
    line = next(i for i, row in enumerate(CASES.splitlines(), 1) if "- cases:" in row)
    assert err.value.loc is not None and (err.value.loc.line, err.value.loc.col) == (line, 9)


def test_a_last_case_without_when_is_the_default() -> None:
    text = CASES.replace("          - concat: [y0, y1, m.0, m.1, m.2]\n            when: n == 3\n",
                         "          - concat: [y0, y1, m.*]\n")
    assert analyze(_spec(text, n=4)).totals.params == sum(p.numel() for p in C2f(32, 64, 4, True).parameters())


def test_only_the_last_case_may_omit_when() -> None:
    text = CASES.replace("            when: n == 1\n", "")
    with pytest.raises(SpecError, match="every case but the last needs a 'when:'"):
        analyze(_spec(text, n=1))


def test_a_case_not_built_is_still_checked_for_its_form() -> None:
    text = CASES.replace("concat: [y0, y1, m.0, m.1, m.2]", "concatt: [y0, y1]")
    with pytest.raises(SpecError, match="unknown layer kind or block 'concatt'"):
        analyze(_spec(text, n=1))


def test_a_single_optional_item_is_still_no_chain() -> None:
    # MobileNetV3's squeeze-excitation under `when: se > 0`, switched off: no error, no layer.
    text = """\
name: se
input: [16, 8, 8]
args: {se: 0}
blocks:
  block:
    args: {se: 0}
    layers:
      - conv: {out: 16, kernel: 1}
      - sequence: [{global_avgpool: {}}, {conv: {out: se, kernel: 1}}, relu, {conv: {out: 16, kernel: 1}}, sigmoid]
        name: se_branch
        when: se > 0
layers:
  - block: {se: se}
"""
    assert analyze(load_text(text)).totals.params == 16 * 16 + 16
    with pytest.raises(SpecError):  # the schema and the parser agree that `cases` needs a list
        analyze(load_text(text.replace("  - block: {se: se}", "  - cases: relu")))


def test_the_first_case_that_holds_is_built() -> None:
    # n >= 1 holds too, but comes second: the first holding case is the one built
    text = CASES.replace("when: n == 1", "when: n >= 2").replace("concat: [y0, y1, m.0]", "concat: [y0, m.*]") \
        .replace("when: n == 2", "when: n >= 1")
    concat = next(r for r in analyze(_spec(text, n=2)).rows if r.kind == "concat")
    assert concat.output == (3 * 32, 20, 20)  # y0 and the two copies (the second case would give 4 x 32)
