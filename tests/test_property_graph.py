"""Property: random DAGs — skips across several layers (`from:`), merges of two or three named tensors, several
outputs — agree with torch on every figure `validate` checks (shapes of every op, params, buffers, MACs by
FlopCounterMode, fvcore's count per layer and in total, activation bytes, saved-for-backward bytes).

Candidates the analyzer rejects (a merge of tensors whose shapes disagree) are dropped as they are drawn, so every
example is a real network. The outputs are the tensors nothing else reads, so every layer is used.
"""

from __future__ import annotations

from conftest import analyzes, load_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archcalc.core.analyze import analyze
from archcalc.torch.validate import validate

LAYERS = [
    "conv: {{out: {c}, kernel: 3, padding: 1}}",
    "conv: {{out: {c}, kernel: 1}}",
    "conv: {{out: {c}, kernel: 3, stride: 2, padding: 1}}",
    "maxpool: {{kernel: 2}}",
    "batchnorm",
    "relu",
    "sigmoid",
    "upsample: {{scale_factor: 2}}",
]



@st.composite
def dags(draw: st.DrawFn) -> str:
    c, h = draw(st.integers(1, 4)), draw(st.integers(6, 14))
    head = f"name: dag\ninput: [{c}, {h}, {h}]\nunused: allow\nlayers:\n"
    names = ["input"]
    read: set[str] = set()
    body = ""
    for n in range(draw(st.integers(2, 9))):
        name = f"t{n}"
        if len(names) > 1 and draw(st.integers(0, 2)) == 0:
            k = draw(st.integers(2, min(3, len(names))))
            sources = draw(st.lists(st.sampled_from(names), min_size=k, max_size=k, unique=True))
            op = draw(st.sampled_from(["concat", "add", "mul"]))
            candidate = f"  - {op}: [{', '.join(sources)}]\n    name: {name}\n"
        else:
            sources = [draw(st.sampled_from(names[-3:]))]  # mostly recent tensors, sometimes a long skip
            if draw(st.booleans()):
                sources = [draw(st.sampled_from(names))]
            layer = draw(st.sampled_from(LAYERS)).format(c=draw(st.integers(1, 5)))
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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(dags())
def test_random_dags_agree_with_torch_on_every_checked_figure(text: str) -> None:
    spec = load_text(text)
    report = analyze(spec)
    assert all(r.used for r in report.rows), text  # the outputs are the sinks: nothing is dead
    v = validate(spec, "cpu", batch=2)
    assert v.ok, text + "\n" + "\n".join(f"{c.quantity} {c.layer}: {c.predicted} vs {c.measured}" for c in v.failures)
