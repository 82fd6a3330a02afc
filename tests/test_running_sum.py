"""A running sum (issue 31, item 2): `add: {from: [...], running: true}` adds each input as soon as it is made
(`skip = skip + s` in a loop), where the all-at-once `add` keeps every input alive until the end.

The reference is WaveNet (van den Oord et al. 2016, arXiv:1609.03499, Sec. 2 and Fig. 4) written here from plain
torch: its parameters, FlopCounterMode's count, and the inference peak of its forward (the storages its ops create,
tests/measure.py), with the running sum kept as real code keeps it and with the 30 skips summed at the end. The
bundled spec `wavenet` must predict both peaks, and the module archcalc builds must measure them (torch's profiler
and the dispatch probe).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from conftest import load_text, report_of
from measure import dispatch_peak_bytes
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.torch.build import build_module
from archcalc.torch.export import export_source
from archcalc.torch.profile.probes import cpu_peak_bytes

LENGTH = 2000  # samples: the test's input (the spec's own is 16,000); every figure scales with it


class Layer(nn.Module):
    """One residual layer: dilated causal convs (kernel 2, left padding), the gated unit, skip and residual 1x1."""

    def __init__(self, d: int, residual: int, gate: int, skip: int, last: bool) -> None:
        super().__init__()
        self.d, self.last = d, last
        self.filter, self.gate = nn.Conv1d(residual, gate, 2, dilation=d), nn.Conv1d(residual, gate, 2, dilation=d)
        self.skip = nn.Conv1d(gate, skip, 1)
        self.res = None if last else nn.Conv1d(gate, residual, 1)

    def forward(self, x: torch.Tensor, total: torch.Tensor | None, running: bool) -> tuple:  # type: ignore[type-arg]
        f = torch.tanh(self.filter(F.pad(x, (self.d, 0))))
        g = torch.sigmoid(self.gate(F.pad(x, (self.d, 0))))
        z = f * g
        del f, g
        s = self.skip(z)
        if running:  # the skip is added as soon as it is made, and freed
            total = s if total is None else total + s
            del s
        if self.res is None:
            return None, total, (None if running else s)
        return self.res(z) + x, total, (None if running else s)


class WaveNet(nn.Module):
    def __init__(self, running: bool, residual: int = 64, gate: int = 64, skip: int = 256, classes: int = 256,
                 stacks: int = 3, per_stack: int = 10) -> None:
        super().__init__()
        self.running = running
        self.causal = nn.Conv1d(classes, residual, 2)
        n = stacks * per_stack
        self.layers = nn.ModuleList(Layer(2 ** (i % per_stack), residual, gate, skip, i == n - 1) for i in range(n))
        self.post1, self.post2 = nn.Conv1d(skip, skip, 1), nn.Conv1d(skip, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = self.causal(F.pad(x, (1, 0)))
        h, total, skips = h0, None, []
        for layer in self.layers:  # h0 is held through the stack, as a call `self.stack(h0)` would hold it
            h, total, s = layer(h, total, self.running)
            if s is not None:
                skips.append(s)
            del s
        del h0
        if not self.running:  # all at once, as archcalc's `add` of n inputs computes it: a + b, then += the rest
            total = skips[0] + skips[1]
            for s in skips[2:]:
                total += s
            del skips, s
        y = F.relu(self.post1(F.relu(total)))
        del total
        return torch.softmax(self.post2(y), 1)


def _wavenet(running: bool):  # type: ignore[no-untyped-def]
    return report_of("wavenet", input_shape=(256, LENGTH)) if running else \
        analyze(_spec(running=False), input_shape=(256, LENGTH))


def _spec(**sets: object):  # type: ignore[no-untyped-def]
    from archcalc.core.spec import open_spec

    return open_spec("wavenet", {k: str(v).lower() for k, v in sets.items()})


def _activation_peak(report) -> int:  # type: ignore[no-untyped-def]
    t = report.totals
    return t.peak_bytes - t.param_bytes - t.buffer_bytes - 256 * LENGTH * 4  # beyond the input


@pytest.fixture(autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_wavenet_counts_equal_plain_torch() -> None:
    report = _wavenet(running=True)
    net = WaveNet(running=True).eval()
    x = torch.randn(1, 256, LENGTH)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        y = net(x)
    assert report.totals.params == sum(p.numel() for p in net.parameters())
    assert report.totals.flops == counter.get_total_flops()
    assert report.totals.output == tuple(y.shape[1:])
    # the receptive field: 3 stacks of dilations 1..512 with kernel 2, plus the causal conv: 3 * 1023 + 2
    assert report.totals.rf == (3 * 1023 + 2,)


@pytest.mark.parametrize("running", [True, False])
def test_wavenet_peak_is_what_plain_torch_and_the_built_module_measure(running: bool) -> None:
    report = _wavenet(running)
    x = torch.randn(1, 256, LENGTH)
    net = WaveNet(running).eval()
    built = build_module(report)
    with torch.no_grad():
        plain = dispatch_peak_bytes(lambda: net(x))
        dispatched = dispatch_peak_bytes(lambda: built(x))
        built(x)  # one warm-up run before the profiler (one-off allocations out of the way)
        profiled = cpu_peak_bytes(lambda: built(x))
    assert _activation_peak(report) == plain == dispatched == profiled


def test_the_running_sum_keeps_far_less_alive() -> None:
    running, at_once = _wavenet(True), _wavenet(False)
    # Same costs: 29 additions per element of the 256-channel sum either way; the same parameters.
    assert running.totals.flops == at_once.totals.flops and running.totals.params == at_once.totals.params
    adds = [r for r in running.rows if r.name.startswith("skips.")]
    assert len(adds) == 29 and all(r.kind == "add" and len(r.reads) == 2 for r in adds)
    # all at once: the 30 skips (256 x LENGTH floats each) are alive together, with the sum
    assert _activation_peak(at_once) - _activation_peak(running) > 25 * 256 * LENGTH * 4


def test_each_partial_sum_runs_right_after_its_skip_is_made() -> None:
    rows = [r.name for r in _wavenet(True).rows]
    assert rows.index("skips.add1") == rows.index("layers.1.skip") + 1
    assert rows.index("skips.add29") == rows.index("layers.29.skip") + 1
    # the table at depth 1 keeps the spec's order: one row for the running sum, after the layers
    outline = [r.name for r in _wavenet(True).outline if r.depth == 1]
    assert outline.index("skips") == outline.index("layers") + 1


def test_export_writes_the_running_sum_in_place() -> None:
    source = export_source(_wavenet(True))
    forward = source[source.index("    def forward"):]
    skip = forward.index("layers_1_skip = ")
    assert forward.index("skips_add1 = layers_0_skip + layers_1_skip") > skip
    assert forward.index("skips_add1 = ") < forward.index("layers_1_res = ")
    namespace: dict = {}
    exec(compile(source, "exported.py", "exec"), namespace)  # noqa: S102  (our own generated file)
    net = namespace["build_model"]()
    x = torch.randn(1, 256, 600)
    predicted = analyze(_spec(), input_shape=(256, 600)).totals
    with torch.no_grad():
        measured = dispatch_peak_bytes(lambda: net(x))
    assert measured == predicted.peak_bytes - predicted.param_bytes - predicted.buffer_bytes - x.numel() * 4


SMALL = """\
name: small
input: [4, 8, 8]
layers:
  - conv: {out: 4, kernel: 1, name: a}
  - conv: {out: 4, kernel: 1, name: b}
  - conv: {out: 4, kernel: 1, name: c}
  - add: {from: [c, a, b], running: true, name: total}
"""


def test_the_running_order_is_the_order_the_inputs_were_made() -> None:
    report = analyze(load_text(SMALL))
    assert [r.reads for r in report.rows if r.kind == "add"] == [("a", "b"), ("total.add1", "c")]


@pytest.mark.parametrize(("change", "message"), [
    ("running: true", "running: 1"),
    ("add:", "concat:"),
])
def test_running_errors(change: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        analyze(load_text(SMALL.replace(change, message)))
    assert err.value.loc is not None and err.value.loc.line == 7
    assert ("'running' must be true or false" if change.startswith("running") else
            "concat has no running form; 'running: true' is for 'add'") in err.value.message
