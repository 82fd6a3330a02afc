"""The inference timeline behind the memory plot, worked out by hand on a graph small enough to follow: what is
allocated, held and freed at every op, and what is alive at the peak. The peak itself is also measured.

Oracles: the liveness rules of an eager forward written out in the comments (a tensor is freed after its last
reader; the inputs and outputs live to the end; an in-place op allocates nothing; a three-way product keeps its
partial product beside its result), and torch.profiler's memory events for the peak (tests/measure.py).
"""

from __future__ import annotations

import torch

from archcalc.core.analyze import analyze
from archcalc.core.memory import Step, inference_timeline
from archcalc.core.spec import load_spec
from tests.measure import peak_bytes

SPEC = """
name: t
input: [2, 4, 4]
layers:
  - relu: {name: a}
  - relu: {name: b}
  - mul: [a, b, input]
    name: m
  - relu: {name: c, inplace: true}
"""
T = 2 * 4 * 4 * 4  # every tensor here: 32 float32 values, 128 bytes


def test_the_timeline_of_a_small_graph_by_hand(write_spec) -> None:  # type: ignore[no-untyped-def]
    report = analyze(load_spec(write_spec(SPEC)))
    tl = inference_timeline(report.graph, 4, 1)
    assert tl.start == T  # the input
    assert tl.steps == (
        Step(0, 2 * T, 2 * T, 0),  # a allocated
        Step(1, 3 * T, 3 * T, 0),  # b allocated; a is still to be read by m
        # m allocated, and while it runs the partial product a*b (one more tensor) beside it; a and b freed after
        Step(2, 5 * T, 2 * T, T),
        Step(3, 2 * T, 2 * T, 0),  # c is m's storage, in place
    )
    # per storage (input, a, b, m): allocated by op, freed after op (4 = lives to the end), bytes, name
    assert (tl.allocated, tl.freed, tl.sizes, tl.names) == ((-1, 0, 1, 2), (4, 2, 2, 4), (T,) * 4,
                                                            ("input", "a", "b", "m"))
    assert (tl.peak, tl.peak_step) == (5 * T, 2) and report.totals.peak_bytes == 5 * T
    assert tl.alive(2) == [("input", T), ("a", T), ("b", T), ("m", T)]
    assert tl.alive(3) == [("input", T), ("m", T)] and tl.alive(0) == [("input", T), ("a", T)]
    # batch scales every size; the walk is the same
    assert inference_timeline(report.graph, 4, 3).steps[2] == Step(2, 15 * T, 6 * T, 3 * T)


def test_the_hand_timeline_peak_is_what_the_profiler_sees() -> None:
    x = torch.randn(1, 2, 4, 4)

    def forward() -> torch.Tensor:
        a = torch.relu(x)
        b = torch.relu(a)
        return torch.relu_(a * b * x)

    assert peak_bytes(forward) == 5 * T - T  # the input existed before: the profiler counts what the forward adds


def test_a_storage_id_an_in_place_op_skips_is_never_alive(write_spec) -> None:  # type: ignore[no-untyped-def]
    # storages are numbered by their first tensor: c (in place on m) is tensor 4 and makes none, so id 4 is a gap
    report = analyze(load_spec(write_spec(SPEC + "  - relu: {name: d}\n")))
    tl = inference_timeline(report.graph, 4, 1)
    never = len(report.graph.ops) + 1
    assert (tl.allocated, tl.freed) == ((-1, 0, 1, 2, never, 4), (5, 2, 2, 4, -1, 5))
    assert (tl.sizes, tl.names) == ((T, T, T, T, 0, T), ("input", "a", "b", "m", "", "d"))
    assert tl.steps[4] == Step(4, 3 * T, 2 * T, 0)  # d beside m (read by d, freed after it) and the input
    assert tl.alive(4) == [("input", T), ("m", T), ("d", T)]


def test_a_tensor_nothing_reads_is_freed_after_the_op_that_made_it(write_spec) -> None:  # type: ignore
    # `unused: allow`: d (the first op) feeds no output; it is freed as soon as it is made, before `out` runs
    text = ("name: t\ninput: [2, 4, 4]\nlayers:\n  - relu: {name: d}\n  - relu: {name: out}\n    from: input\n"
            "outputs: [out]\nunused: allow\n")
    tl = inference_timeline(analyze(load_spec(write_spec(text))).graph, 4, 1)
    assert tl.steps == (Step(0, 2 * T, T, 0), Step(1, 2 * T, 2 * T, 0)) and tl.freed == (2, 0, 2)
