"""`discard: true` (issue 31, item 4): an item computed and counted in every figure, its output read by nothing and
freed as soon as it is made; the next item reads what the discarded one read.

The reference is a network written here in plain torch that computes a side conv and drops its result at once:
its parameters (the module's own count), its MACs and FLOPs (FlopCounterMode), and its inference peak (the
storages its ops create, measured by tests/measure.py's dispatch probe) are what the spec must give.
"""

from __future__ import annotations

import re

import jsonschema
import pytest
import torch
from conftest import load_text
from measure import dispatch_peak_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.schema import spec_schema
from archcalc.torch.build import build_module
from archcalc.torch.export import export_source
from archcalc.torch.validate import validate

SIDE = """\
name: side
input: [3, 32, 32]
layers:
  - conv: {out: 8, kernel: 3, padding: 1, name: stem}
  - conv: {out: 64, kernel: 3, padding: 1, name: aux}
    discard: true
  - relu: {name: act}
  - conv: {out: 16, kernel: 1, name: head}
"""
# The same with `aux` kept to the end (an output of the network): its 64 x 32 x 32 floats stay alive.
KEPT = SIDE.replace("    discard: true\n", "").replace("name: side\n", "name: kept\noutputs: [head, aux]\n") \
    .replace("  - relu: {name: act}\n", "  - relu: {name: act}\n    from: stem\n")


class Side(nn.Module):
    """SIDE in plain torch: the side conv runs and its result is dropped at once."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.aux = nn.Conv2d(8, 64, 3, padding=1)
        self.act = nn.ReLU()
        self.head = nn.Conv2d(8, 16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        self.aux(y)  # computed, never read: freed as soon as it is made
        return self.head(self.act(y))


def _predicted_activation_peak(report) -> int:  # type: ignore[no-untyped-def]
    t = report.totals
    return t.peak_bytes - t.param_bytes - t.buffer_bytes - 3 * 32 * 32 * 4  # beyond the input


def test_a_discarded_conv_counts_in_params_macs_and_flops_as_torch_runs_it() -> None:
    report = analyze(load_text(SIDE))
    torch.manual_seed(0)
    net = Side().eval()
    x = torch.randn(1, 3, 32, 32)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = net(x)
    assert report.totals.params == sum(p.numel() for p in net.parameters())
    assert report.totals.flops == counter.get_total_flops()  # convention 'torch' (FlopCounterMode's)
    assert report.totals.macs == counter.get_total_flops() // 2
    assert report.totals.output == tuple(y.shape[1:])
    # aux's own: 8*64*9 + 64 = 4,672 params, 64*32*32 * 8*9 = 4,718,592 MACs, not left out of anything
    aux = next(r for r in report.rows if r.name == "aux")
    assert (aux.params, aux.macs, aux.used) == (4_672, 4_718_592, True)
    assert report.totals.activation_bytes == (8 + 64 + 8 + 16) * 32 * 32 * 4  # every output, aux's included
    assert not report.warnings


def test_a_discarded_output_is_freed_at_once_as_in_plain_torch() -> None:
    report = analyze(load_text(SIDE))
    net = Side().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        measured = dispatch_peak_bytes(lambda: net(x))
    # stem (8 ch) and aux (64 ch) alive together while aux runs: 72 * 32 * 32 * 4 bytes
    assert _predicted_activation_peak(report) == measured == 72 * 32 * 32 * 4
    built = build_module(report)
    with torch.no_grad():
        assert dispatch_peak_bytes(lambda: built(x)) == measured
    kept = analyze(load_text(KEPT))  # the same layers with aux kept to the end: a larger peak
    assert _predicted_activation_peak(kept) > _predicted_activation_peak(report)


def test_validate_builds_and_runs_it_and_agrees() -> None:
    v = validate(load_text(SIDE), "cpu", batch=2)
    assert v.ok, [(c.quantity, c.layer, c.predicted, c.measured) for c in v.failures]
    checked = {(c.quantity, c.layer) for c in v.checks}
    assert ("params", "aux") in checked and ("macs", "aux") in checked
    assert any("discard" in n for n in v.notes)


def test_export_deletes_the_result_at_once() -> None:
    source = export_source(analyze(load_text(SIDE)))
    forward = source[source.index("    def forward"):]
    assert re.search(r"aux = self\.aux\(stem\)\n\s+del aux\n\s+act = self\.act\(stem\)", forward), forward
    namespace: dict = {}
    exec(compile(source, "exported.py", "exec"), namespace)  # noqa: S102  (our own generated file)
    net = namespace["build_model"]()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert dispatch_peak_bytes(lambda: net(x)) == 72 * 32 * 32 * 4
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in Side().parameters())


def test_a_discarded_block_and_merge() -> None:
    text = """\
name: blocks
input: [4, 8, 8]
blocks:
  probe:
    layers:
      - conv: {out: 6, kernel: 1}
      - relu
layers:
  - conv: {out: 4, kernel: 1, name: a}
  - probe: {name: p}
    discard: true
  - add: [a, $input]
    discard: true
  - relu: {name: out}
"""
    report = analyze(load_text(text))
    # the relu reads a (what the discarded items were given); p's conv: 4*6 + 6 = 30 params; a: 4*4 + 4 = 20
    assert report.rows[-1].reads == ("a",)
    assert report.totals.params == 50
    assert [r.used for r in report.rows] == [True] * 5


@pytest.mark.parametrize(("where", "line"), [
    ("  - add: [act, aux]\n", "  - add: [act, aux]"),  # read by a merge
    ("  - relu: {name: r2}\n    from: aux\n", "    from: aux"),  # by from:
])
def test_reading_a_discarded_tensor_is_a_located_error(where: str, line: str) -> None:
    text = SIDE + where
    with pytest.raises(SpecError, match="'aux' is the output of aux, which is marked 'discard: true'") as err:
        analyze(load_text(text))
    row = text.splitlines().index(line) + 1
    assert err.value.loc is not None and err.value.loc.line == row


def test_a_discarded_tensor_named_as_an_output_is_an_error() -> None:
    with pytest.raises(SpecError, match="marked 'discard: true'"):
        analyze(load_text(SIDE.replace("input: [3", "outputs: [head, aux]\ninput: [3")))


@pytest.mark.parametrize("bad", ["1", "yes please", "null"])
def test_discard_takes_true_or_false(bad: str) -> None:
    text = SIDE.replace("discard: true", f"discard: {bad}")
    with pytest.raises(SpecError, match="'discard' must be true or false"):
        analyze(load_text(text))
    assert not jsonschema.Draft7Validator(spec_schema()).is_valid(_yaml(text))


def test_an_in_place_layer_cannot_be_discarded() -> None:
    text = SIDE.replace("relu: {name: act}", "relu: {name: act, inplace: true}\n    discard: true")
    with pytest.raises(SpecError, match="in-place layer writes into its input"):
        analyze(load_text(text))


def test_the_schema_takes_discard_beside_items_and_merges() -> None:
    validator = jsonschema.Draft7Validator(spec_schema())
    assert validator.is_valid(_yaml(SIDE))
    assert validator.is_valid(_yaml(SIDE + "  - add: [act, head]\n    discard: true\n"))
    assert validator.is_valid(_yaml(SIDE + "  - sequence: [relu]\n    discard: false\n"))


def test_discard_false_changes_nothing() -> None:
    a = analyze(load_text(SIDE.replace("discard: true", "discard: false").replace("name: act", "name: act")
                          .replace("  - relu: {name: act}\n", "  - relu: {name: act}\n    from: stem\n")
                          .replace("name: side", "name: side\nunused: allow")))
    assert [r.name for r in a.rows if not r.used] == ["aux"]  # not discarded: an unused layer, left out


def _yaml(text: str):  # type: ignore[no-untyped-def]
    import yaml

    return yaml.safe_load(text)
