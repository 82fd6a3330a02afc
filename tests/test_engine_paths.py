"""The engine's bookkeeping beyond the per-layer arithmetic: projection shortcuts, the outline's block rows and
depths, merge rows, where references resolve from inside nested blocks, several outputs, unused layers, warnings
and `--strict`.

Oracles: plain torch.nn modules written here (torchvision's ResNet downsample is a bias-free 1x1 conv with the
block's stride, then batch norm: He et al. 2016, option B), and figures worked out by hand in the comments.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from archcalc.core.analyze import Warning_, analyze, rows_at_depth
from archcalc.core.errors import ArchcalcError, Loc, SpecError
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module


def _report(write_spec, text: str, **kw):  # type: ignore[no-untyped-def]
    return analyze(load_spec(write_spec(text)), **kw)


def _error(write_spec, text: str, **kw) -> str:  # type: ignore[no-untyped-def]
    path = write_spec(text)
    with pytest.raises(SpecError) as info:
        analyze(load_spec(path), **kw)
    return str(info.value).replace(str(path), "SPEC")


def _torch_counts(module: nn.Module, x: torch.Tensor) -> tuple[int, int, int, tuple[int, ...]]:
    with torch.no_grad():
        y = module(x)
    return (sum(p.numel() for p in module.parameters()), sum(b.numel() for b in module.buffers()),
            sum(b.numel() * b.element_size() for b in module.buffers()), tuple(y.shape[1:]))


class _Down(nn.Module):
    """A residual block whose shortcut is torchvision's downsample (conv 1x1 with the body's stride, no bias, BN)."""

    def __init__(self, cin: int, cout: int, stride: Any, dims: int = 2, bn: bool = True) -> None:
        super().__init__()
        conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv1d, nn.BatchNorm1d)
        self.body = nn.Sequential(conv(cin, cout, 3, stride, 1, bias=False), norm(cout))
        self.shortcut = nn.Sequential(conv(cin, cout, 1, stride, bias=False), *([norm(cout)] if bn else []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


RESIDUAL = """
name: t
input: {shape}
layers:
  - residual:
      - conv: {{out: 8, kernel: 3, stride: {stride}, padding: 1, bias: false}}
      - batchnorm: {{}}
    shortcut: {mode}
    name: block
"""


@pytest.mark.parametrize(("shape", "stride", "mode", "dims"), [
    ((4, 8, 6), 2, "projection", 2),  # a non-square input: each axis has its own stride computed
    ((4, 8, 6), (2, 1), "projection", 2),  # unequal strides: the shortcut takes both
    ((4, 16), 2, "projection", 1),  # one spatial axis (Conv1d)
    ((4, 8, 6), 2, "projection_conv", 2),  # the conv alone
])
def test_projection_shortcut_is_torchvisions_downsample(write_spec, shape, stride, mode, dims) -> None:  # type: ignore
    text = RESIDUAL.format(shape=list(shape), stride=list(stride) if isinstance(stride, tuple) else stride, mode=mode)
    report = _report(write_spec, text, batch=2)
    ref = _Down(shape[0], 8, stride, dims, bn=mode == "projection")
    x = torch.randn(2, *shape)
    params, buffers, buffer_bytes, out = _torch_counts(ref.eval(), x)
    t = report.totals
    assert (t.params, t.buffers, t.buffer_bytes, t.output) == (params, buffers, buffer_bytes, out)
    rows = {r.name: r for r in report.outline}
    sc = rows["block.shortcut.conv1"]
    # MACs of a 1x1 conv: one per input channel for each output element (batch 2)
    assert sc.macs == 2 * 4 * 8 * (out[1] * out[2] if dims == 2 else out[1]) and sc.output == out
    assert sc.input == shape and sc.reads == ("input",)
    # the body's 3x3 conv sees 3 positions per axis, on a grid its stride apart (one axis or two alike)
    body = rows["block.conv1"]
    assert (body.rf, body.jump) == ((3,) * dims, stride if isinstance(stride, tuple) else (stride,) * dims)
    names = [r.name for r in report.outline]
    assert names == ["block", "block.conv1", "block.bn1", "block.shortcut", "block.shortcut.conv1",
                     *(["block.shortcut.bn1"] if mode == "projection" else []), "block.add"]
    assert rows["block.shortcut"].kind == "shortcut" and [r.depth for r in report.outline][:4] == [1, 2, 2, 2]
    assert rows["block.shortcut.conv1"].depth == 3 and rows["block.add"].depth == 2
    # The projection's layers are placed at the residual's own line, where the user asked for them.
    line = text.splitlines().index("  - residual:") + 1
    assert all(op.loc is not None and op.loc.line == line for op in report.graph.ops if ".shortcut." in op.name)
    # The same module when built: the generated shortcut has the reference's weights' shapes.
    model = build_module(report)
    assert sorted(tuple(p.shape) for p in model.parameters()) == sorted(tuple(p.shape) for p in ref.parameters())
    if dims == 2:
        assert "1/2x1" in sc.config if stride == (2, 1) else sc.config == "1/2 p0"


def test_projection_that_cannot_be_made_is_located(write_spec) -> None:  # type: ignore[no-untyped-def]
    head = "name: t\ninput: [4, 8, 8]\nlayers:\n  - residual:\n"
    # The body ends on a vector: there is no spatial map to project onto.
    msg = _error(write_spec, head + "      - flatten: {}\n      - linear: {out: 16}\n    shortcut: projection\n"
                 "    name: blk\n")
    assert msg.startswith("SPEC:4:5: blk: cannot project 4x8x8 onto 16"), msg
    # 8 -> 6 (a valid 3x3 conv): no stride s gives (8 - 1) // s + 1 == 6
    msg = _error(write_spec, head + "      - conv: {out: 8, kernel: 3}\n    shortcut: projection\n    name: blk\n")
    assert msg == ("SPEC:4:5: blk: no 1x1 stride maps 4x8x8 onto 8x6x6; give the shortcut as a list of layers"), msg


# ---- the outline: block rows sum what is inside them ------------------------------------------------------------

BLOCKS = """
name: t
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, padding: 1, name: stem, trainable: false}
  - parallel:
      - [conv: {out: 2, kernel: 1}, batchnorm: {}]
      - conv: {out: 3, kernel: 3, stride: 2, padding: 1}
      - [maxpool: {kernel: 2, stride: 2}, conv: {out: 1, kernel: 1}]
    merge: concat
    name: p
"""


def test_block_rows_sum_their_layers_and_keep_the_block_input(write_spec) -> None:  # type: ignore
    bad = _error(write_spec, BLOCKS)  # branch 1 keeps 8x8, the others halve it: concat refuses, located
    assert bad.startswith("SPEC:6:5: p: ") and "8x8" in bad and "4x4" in bad, bad
    report = _report(write_spec, BLOCKS.replace("conv: {out: 2, kernel: 1}", "conv: {out: 2, kernel: 1, stride: 2}"),
                     batch=3)
    rows = {r.name: r for r in report.outline}
    p = rows["p"]
    # Inside p: conv 4->2 1x1 (8+2) + BN(2) (4 params, 5 buffers) + conv 4->3 3x3 (108+3) + conv 4->1 1x1 (4+1)
    assert (p.params, p.trainable_params, p.buffers) == (10 + 4 + 111 + 5, 10 + 4 + 111 + 5, 5)
    # The frozen stem's 3*4*9+4 = 112 parameters count, but not as trainable, in its row and in the totals.
    assert (rows["stem"].params, rows["stem"].trainable_params) == (112, 0)
    assert (report.totals.params, report.totals.trainable_params) == (112 + 130, 130)
    # MACs at batch 3 on a 4x4 output: 2*4, 3*4*9, 1*4 per output position, 16 positions
    assert p.macs == 3 * 16 * (8 + 108 + 4)
    assert p.activation_bytes == 3 * 4 * 16 * (2 + 2 + 3 + 4 + 1 + 6)  # every row's output, float32, batch 3
    assert (p.input, p.output, p.leaf, p.depth) == ((4, 8, 8), (6, 4, 4), False, 1)
    # The receptive field through a concat is the largest over the branches (3x3/2 after the 3x3 stem: 5), jump 2.
    assert (p.rf, p.jump) == ((5, 5), (2, 2))
    assert [(r.name, r.depth) for r in report.outline] == [
        ("stem", 1), ("p", 1), ("p.branch1", 2), ("p.branch1.conv1", 3), ("p.branch1.bn1", 3), ("p.branch2", 2),
        ("p.branch2.conv1", 3), ("p.branch3", 2), ("p.branch3.pool1", 3), ("p.branch3.conv1", 3),
        ("p.concat", 2)]
    assert [r.name for r in rows_at_depth(report, 1)] == ["stem", "p"]
    assert [r.name for r in rows_at_depth(report, 2)] == ["stem", "p.branch1", "p.branch2", "p.branch3", "p.concat"]
    cat = rows["p.concat"]
    assert (cat.input, cat.config, cat.module, cat.buffers, cat.params) == ((2, 4, 4), "3 inputs", False, 0, 0)
    assert cat.reads == ("p.branch1.bn1", "p.branch2.conv1", "p.branch3.conv1")


NESTED = """
name: t
input: [2, 4, 4]
layers:
  - sequence:
      - conv: {out: 2, kernel: 1, name: x}
      - sequence:
          - relu: {name: y}
          - add: [x, y]
            name: s
        name: inner
    name: p
  - sequence:
      - conv: {out: 2, kernel: 1, name: x}
      - sequence:
          - sequence:
              - relu: {name: y}
              - add: [x, y]
                name: s
            name: deeper
        name: inner
    name: q
  - relu:
    from: p.inner
    name: r
outputs: [q, r]
"""


def test_references_resolve_from_the_innermost_scope_outwards(write_spec) -> None:  # type: ignore
    report = _report(write_spec, NESTED)
    rows = {r.name: r for r in report.outline}
    # inside q.inner.deeper, `x` is q.x (two levels up), not p.x; a block's name reads its last tensor
    assert rows["q.inner.deeper.s"].reads == ("q.x", "q.inner.deeper.y")
    assert rows["p.inner.s"].reads == ("p.x", "p.inner.y") and rows["r"].reads == ("p.inner.s",)
    assert (rows["p.inner.s"].kind, rows["p.inner.s"].depth, rows["q.inner.deeper.s"].depth) == ("add", 3, 4)
    # the next layer reads the merge by its own name
    assert rows["q.x"].reads == ("p.inner.s",)
    assert dict(report.outputs) == {"q": (2, 4, 4), "r": (2, 4, 4)}
    # with two outputs every row says which outputs depend on it (r reads p, q reads p's result too)
    feeds = {r.name: r.feeds for r in report.rows}
    assert feeds["p.x"] == ("q", "r") and feeds["q.x"] == ("q",) and feeds["r"] == ("r",)
    assert all(r.feeds == feeds[r.name] for r in report.outline if r.leaf)
    one = _report(write_spec, NESTED.replace("outputs: [q, r]", "outputs: [r]\nunused: allow"))
    assert all(r.feeds == () for r in one.rows)  # one output: nothing to tell apart
    # an output not given by name is called `output`
    plain = _report(write_spec, NESTED.replace("outputs: [q, r]", "unused: allow"))
    assert plain.outputs == (("output", (2, 4, 4)),)


def test_a_reference_found_only_below_resolves_if_unique(write_spec) -> None:  # type: ignore[no-untyped-def]
    text = NESTED.replace("from: p.inner", "from: deeper")
    assert {r.name: r for r in _report(write_spec, text).rows}["r"].reads == ("q.inner.deeper.s",)
    msg = _error(write_spec, NESTED.replace("from: p.inner", "from: s"))
    assert msg.startswith("SPEC:24:11: 's' is ambiguous: it could be p.inner.s, q.inner.deeper.s; write the full "
                          "name"), msg
    many = "name: t\ninput: [2, 4, 4]\nlayers:\n" + "".join(
        f"  - sequence: [relu: {{name: x}}]\n    name: b{i}\n" for i in range(7)) + "  - relu:\n    from: x\n"
    msg = _error(write_spec, many)
    assert "it could be b0.x, b1.x, b2.x, b3.x, b4.x, b5.x; write" in msg, msg  # six named, not all seven
    later = NESTED.replace("      - conv: {out: 2, kernel: 1, name: x}\n"
                                                                       "      - sequence:\n          - sequence:",
                                                                       "      - relu:\n        from: deeper\n"
                                                                       "      - conv: {out: 2, kernel: 1, name: x}\n"
                                                                       "      - sequence:\n          - sequence:")
    msg = _error(write_spec, later)
    assert msg.startswith("SPEC:15:15: 'deeper' refers to q.inner.deeper, which is not computed yet at this point "
                          "(a layer can read only tensors made before it; this would be a cycle)"), msg


def test_merge_errors_name_the_tensors_behind_block_names(write_spec) -> None:  # type: ignore[no-untyped-def]
    text = NESTED.replace("from: p.inner\n    name: r", "from: p.inner\n    name: r\n  - conv: {out: 3, kernel: 1, "
                          "name: c3}\n    from: input\n  - add: [p, c3]\n    name: bad")
    msg = _error(write_spec, text)
    assert msg.startswith("SPEC:28:5: bad: 'p' (p.inner.s) gives 2x4x4 but 'c3' gives 3x4x4"), msg
    assert "'c3' (" not in msg  # a reference that is the tensor's own name is not repeated


# ---- unused layers, warnings, --strict --------------------------------------------------------------------------

UNUSED = ("name: t\ninput: [2, 4, 4]\nlayers:\n  - relu: {name: a}\n"
          + "".join(f"  - relu: {{name: d{i}}}\n    from: a\n" for i in range(6))
          + "  - relu: {name: out}\n    from: a\noutputs: [out]\n")


def test_unused_layers_are_listed_and_located(write_spec) -> None:  # type: ignore[no-untyped-def]
    msg = _error(write_spec, UNUSED)
    assert msg == ("SPEC:5:5: d0: no output depends on this layer (6 such: d0, d1, d2, d3, d4, ...); name it in "
                   "'outputs', remove it, or set 'unused: allow' at the top of the spec"), msg
    five = UNUSED.replace("  - relu: {name: d5}\n    from: a\n", "")
    assert "(5 such: d0, d1, d2, d3, d4); name it" in _error(write_spec, five)
    # an unused merge is named and located too
    merge = "name: t\ninput: [2, 4, 4]\nlayers:\n  - relu: {name: a}\n  - add: [a, input]\n    name: m\n" \
            "  - relu: {name: out}\n    from: a\noutputs: [out]\n"
    assert _error(write_spec, merge).startswith("SPEC:5:5: m: no output depends on this layer (1 such: m)")
    report = _report(write_spec, UNUSED + "unused: allow\n")
    assert [r.name for r in report.rows if not r.used] == [f"d{i}" for i in range(6)]
    assert [r.name for r in report.outline if not r.used] == [f"d{i}" for i in range(6)]  # the outline agrees
    assert [str(w) for w in report.warnings] == [
        "unused: no output depends on d0, d1, d2, d3, d4, d5; left out of the totals"]


def test_warnings_are_located_and_strict_makes_them_errors(write_spec) -> None:  # type: ignore[no-untyped-def]
    # (8 - 3)/2 is not an integer: the last input row is never covered (a warning, at the layer)
    text = "name: t\ninput: [2, 8, 7]\nlayers:\n  - conv: {out: 2, kernel: 3, stride: 2, name: c}\n"
    path = write_spec(text)
    report = analyze(load_spec(path))
    [w] = report.warnings
    assert w.loc is not None and (w.loc.line, w.loc.col, w.layer) == (4, 5, "c")
    assert w.message.startswith("on H: (W - F + 2P)/S")
    assert str(w) == f"{path}:4:5: c: {w.message}"
    msg = _error(write_spec, text, strict=True)
    assert msg.startswith("SPEC:4:5: c: on H:") and msg.endswith("(--strict makes this an error)"), msg
    # channels-last input: warned at the input's own line
    last = "name: t\ninput: [32, 32, 3]\nlayers:\n  - relu: {}\n"
    path = write_spec(last)
    [w] = analyze(load_spec(path)).warnings
    assert w.loc is not None and (w.loc.line, w.layer) == (2, "input") and "looks channels-last" in w.message
    assert str(w).startswith(f"{path}:2:8: input: 32x32x3 looks")
    msg = _error(write_spec, last, strict=True)
    assert msg.startswith("SPEC:2:8: 32x32x3 looks channels-last") and msg.endswith("(--strict makes this an error)")
    assert str(Warning_(None, "unused", "text")) == "unused: text"
    assert str(Warning_(Loc("f.yaml", 3, 4), "c", "text")) == "f.yaml:3:4: c: text"


def test_report_carries_the_spec_text_and_rejects_unknown_settings(write_spec) -> None:  # type: ignore
    path = write_spec("name: t\ndescription: a net\nsource: Some et al. 2020\ninput: [2, 4]\nlayers:\n  - relu: {}\n")
    report = analyze(load_spec(path))
    assert (report.name, report.description, report.source, report.path) == ("t", "a net", "Some et al. 2020",
                                                                            str(path))
    with pytest.raises(ArchcalcError, match="unknown convention 'fvcor'; did you mean 'fvcore'"):
        analyze(load_spec(path), convention="fvcor")
    with pytest.raises(ArchcalcError, match="unknown device 'tpu'"):
        analyze(load_spec(path), device="tpu")


def test_int_buffers_take_eight_bytes_whatever_the_dtype(write_spec) -> None:  # type: ignore[no-untyped-def]
    # BN's num_batches_tracked is int64 even in a float16 model: 2*C half floats plus 8 bytes
    report = _report(write_spec, "name: t\ninput: [5, 4, 4]\nlayers:\n  - batchnorm: {}\n", dtype="float16")
    bn = nn.BatchNorm2d(5).half()
    assert report.totals.buffer_bytes == sum(b.numel() * b.element_size() for b in bn.buffers()) == 10 * 2 + 8


LATER = """
name: t
input: [4, 8, 8]
layers:
  - relu:
    from: {ref}
  - residual:
      - conv: {{out: 4, kernel: 3, padding: 1, name: c}}
    shortcut:
      - conv: {{out: 4, kernel: 1, name: s}}
    after:
      - relu: {{name: a}}
    name: blk
  - parallel:
      - relu: {{name: later}}
      - relu: {{name: other}}
    merge: add
    name: par
"""


@pytest.mark.parametrize(("ref", "full"), [("c", "blk.c"), ("s", "blk.shortcut.s"), ("a", "blk.a"),
                                           ("later", "par.branch1.later")])
def test_a_name_made_later_anywhere_is_a_cycle_not_a_typo(write_spec, ref: str, full: str) -> None:  # type: ignore
    # in a residual's body, its shortcut list, its `after` layers and a parallel branch alike
    msg = _error(write_spec, LATER.format(ref=ref))
    assert msg == (f"SPEC:6:11: '{ref}' refers to {full}, which is not computed yet at this point (a layer can read "
                   "only tensors made before it; this would be a cycle)"), msg
    msg = _error(write_spec, LATER.format(ref="cc"))
    assert msg == ("SPEC:6:11: no tensor named 'cc'; expected one of: $input, input (names are layer, block and "
                   "input names; use the full dotted name from another block)"), msg
    # after a block, the list offers the block and its layers, and `$input` once (not the block's own alias of it)
    after = "name: t\ninput: [4, 8, 8]\nlayers:\n  - sequence: [relu: {name: a}]\n    name: blk\n  - relu:\n" \
            "    from: cc\n"
    assert _error(write_spec, after).startswith("SPEC:7:11: no tensor named 'cc'; expected one of: $input, blk, blk.a, "
                                                "input (names are")


def test_a_name_two_levels_up_is_found_before_a_namesake_elsewhere(write_spec) -> None:  # type: ignore
    # from q.inner.deeper, `w` is q.inner.w (two scopes up) although p.inner.w exists too
    text = NESTED.replace("          - relu: {name: y}\n          - add: [x, y]",
                          "          - relu: {name: y}\n          - relu: {name: w}\n          - add: [x, y]")
    text = text.replace("              - add: [x, y]", "              - add: [x, w]")
    text = text.replace("      - sequence:\n          - sequence:",
                        "      - sequence:\n          - relu: {name: w}\n          - sequence:")
    rows = {r.name: r for r in _report(write_spec, text.replace("outputs: [q, r]", "unused: allow")).outline}
    assert "p.inner.w" in rows and rows["q.inner.deeper.s"].reads == ("q.x", "q.inner.w")


def test_a_residual_that_cannot_add_says_which_block(write_spec) -> None:  # type: ignore[no-untyped-def]
    msg = _error(write_spec, "name: t\ninput: [4, 8, 8]\nlayers:\n  - residual:\n      - conv: {out: 8, kernel: 3, "
                             "padding: 1}\n    name: blk\n")
    assert msg == "SPEC:4:5: blk: blk body gives 8x8x8 but blk.shortcut gives 4x8x8; they cannot be added", msg


def test_a_spec_built_without_named_inputs_reads_its_input(write_spec) -> None:  # type: ignore[no-untyped-def]
    spec = load_spec(write_spec(RESIDUAL.format(shape=[4, 8, 6], stride=2, mode="projection")))
    bare = analyze(spec._replace(inputs=()))  # a Spec made in Python may leave `inputs` out
    assert bare.rows == analyze(spec).rows and bare.graph.inputs == ((("input", 0),))
    assert bare.rows[0].reads == ("input",)
