"""The lecture notes' arithmetic, as tests. Expected values are the lectures' own numbers or formulas written out."""

from __future__ import annotations

from pathlib import Path

import pytest

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.spec import load_spec


def one_layer(write_spec, input_: str, layer: str):  # type: ignore[no-untyped-def]
    path = write_spec(f"name: t\ninput: {input_}\nlayers:\n  - {layer}\n")
    return analyze(load_spec(path))


def test_ten_5x5_filters_with_padding_2_keep_32x32(write_spec) -> None:  # type: ignore[no-untyped-def]
    # Ballan's CNN lecture (Part 2): "(32-5+2*2)/1+1 = 32 spatially => 32x32x10"; "5*5*3 + 1 = 76 params => 76*10 =
    # 760".
    r = one_layer(write_spec, "[3, 32, 32]", "conv: {out: 10, kernel: 5, stride: 1, padding: 2}")
    assert r.rows[0].output == (10, 32, 32)
    assert r.totals.params == 760


def test_alexnet_conv1(write_spec) -> None:  # type: ignore[no-untyped-def]
    # Ballan's CNN lecture and the CNN-structures lecture: "[55x55x96] CONV1: 96 11x11 filters at stride 4, pad 0";
    # (227-11)/4+1 = 55; (11*11*3)*96 weights.
    r = one_layer(write_spec, "[3, 227, 227]", "conv: {out: 96, kernel: 11, stride: 4}")
    assert r.rows[0].output == (96, 55, 55)
    assert r.totals.params == 11 * 11 * 3 * 96 + 96
    assert r.totals.macs == 55 * 55 * 96 * (11 * 11 * 3)
    assert r.warnings == ()


def test_alexnet_at_224_warns_with_the_fraction(write_spec) -> None:  # type: ignore[no-untyped-def]
    # (224 - 11 + 0)/4 = 213/4: not an integer -- the classic AlexNet 224-vs-227 discrepancy.
    r = one_layer(write_spec, "[3, 224, 224]", "conv: {out: 96, kernel: 11, stride: 4, name: conv1}")
    assert r.rows[0].output == (96, 54, 54)
    assert len(r.warnings) == 1
    assert "213/4" in r.warnings[0].message and r.warnings[0].layer == "conv1"
    assert "H/W" in r.warnings[0].message


def test_strict_turns_the_warning_into_an_error(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec("name: t\ninput: [3, 224, 224]\nlayers:\n  - conv: {out: 96, kernel: 11, stride: 4}\n")
    with pytest.raises(SpecError, match=r"spec.yaml:4:5: conv1: .*213/4"):
        analyze(load_spec(path), strict=True)


def test_3x3_filter_on_7x7_by_stride(write_spec) -> None:  # type: ignore[no-untyped-def]
    # 7x7 input, 3x3 filter, stride 1 -> 5x5; stride 2 -> 3x3; stride 3 does not fit: (7-3)/3 = 4/3.
    assert one_layer(write_spec, "[1, 7, 7]", "conv: {out: 1, kernel: 3}").rows[0].output == (1, 5, 5)
    assert one_layer(write_spec, "[1, 7, 7]", "conv: {out: 1, kernel: 3, stride: 2}").rows[0].output == (1, 3, 3)
    r = one_layer(write_spec, "[1, 7, 7]", "conv: {out: 1, kernel: 3, stride: 3}")
    assert r.rows[0].output == (1, 2, 2) and "4/3" in r.warnings[0].message


@pytest.mark.parametrize(("padding", "width", "pads"), [("valid", 2, (0, 0)), ("same", 3, (1, 2))])
def test_tensorflow_valid_and_same_on_width_13_filter_6_stride_5(write_spec, padding, width, pads) -> None:  # type: ignore[no-untyped-def]
    # Chen's CNN lecture (Buffalo, 2019): VALID drops the right-most columns (12, 13) -> 2 windows; SAME pads 1 left and
    # 2 right
    # ("if the amount of columns to be added is odd, it will add the extra column to the right") -> 3 windows.
    r = one_layer(write_spec, "[1, 13]", f"conv: {{out: 1, kernel: 6, stride: 5, padding: {padding}}}")
    assert r.rows[0].output == (1, width)
    expected = f"6/5 p{pads[0]}/{pads[1]}" if pads[0] != pads[1] else f"6/5 p{pads[0]}"
    assert r.rows[0].config == expected


def test_same_padding_matches_tensorflow_formula(write_spec) -> None:  # type: ignore[no-untyped-def]
    # TF: out = ceil(W / S) for SAME, ceil((W - F + 1) / S) for VALID.
    for w in range(5, 30):
        for s in (1, 2, 3):
            r = one_layer(write_spec, f"[1, {w}]", f"conv: {{out: 1, kernel: 4, stride: {s}, padding: same}}")
            assert r.rows[0].output == (1, -(-w // s))
            r = one_layer(write_spec, f"[1, {w}]", f"conv: {{out: 1, kernel: 4, stride: {s}, padding: valid}}")
            assert r.rows[0].output == (1, -(-(w - 4 + 1) // s))


def test_vgg16_per_layer_weights_and_memory(write_spec) -> None:  # type: ignore[no-untyped-def]
    # VGG-16 per layer (Simonyan & Zisserman 2015, Table 1, configuration D; the per-layer walk-through in Ballan's
    # CNN lecture, Part 2): memory (activations) and params "not counting biases".
    r = analyze(load_spec(Path(__file__).parent.parent / "specs" / "vgg16.yaml"))
    convs = [row for row in r.rows if row.kind == "conv"]
    fcs = [row for row in r.rows if row.kind == "linear"]
    weights = [(3 * 3 * 3) * 64, (3 * 3 * 64) * 64, (3 * 3 * 64) * 128, (3 * 3 * 128) * 128,
               (3 * 3 * 128) * 256, (3 * 3 * 256) * 256, (3 * 3 * 256) * 256,
               (3 * 3 * 256) * 512, (3 * 3 * 512) * 512, (3 * 3 * 512) * 512,
               (3 * 3 * 512) * 512, (3 * 3 * 512) * 512, (3 * 3 * 512) * 512]
    assert [c.params - c.output[0] for c in convs] == weights
    assert [f.params - f.output[0] for f in fcs] == [7 * 7 * 512 * 4096, 4096 * 4096, 4096 * 1000]
    memory = [224 * 224 * 64] * 2 + [112 * 112 * 128] * 2 + [56 * 56 * 256] * 3 + [28 * 28 * 512] * 3 + \
        [14 * 14 * 512] * 3
    assert [c.activation_bytes // 4 for c in convs] == memory
    pools = [row.output for row in r.rows if row.kind == "maxpool"]
    assert pools == [(64, 112, 112), (128, 56, 56), (256, 28, 28), (512, 14, 14), (512, 7, 7)]
    # "TOTAL memory: 24M * 4 bytes ~= 96MB / image (only forward!)" does not add up from the lecture's own rows: the
    # input plus the listed conv, pool and FC outputs sum to 15.2M values (cs231n's slide has the same slip).
    listed = 224 * 224 * 3 + sum(memory) + 112 * 112 * 64 + 56 * 56 * 128 + 28 * 28 * 256 + 14 * 14 * 512 + \
        7 * 7 * 512 + 4096 + 4096 + 1000
    forward = sum(row.activation_bytes for row in r.rows if row.kind in ("conv", "maxpool", "linear")) // 4
    assert forward + 224 * 224 * 3 == listed == 15_237_608
    assert r.totals.params == 138_357_544  # "TOTAL params: 138M parameters"


def test_googlenet_stem_table(write_spec) -> None:  # type: ignore[no-untyped-def]
    # Ballan's CNN lecture (Part 2), GoogLeNet stem: memory (KB), params (K) and flop (M) -- the lecture's "flop" column
    # is MACs.
    path = write_spec("""
name: stem
input: [3, 224, 224]
layers:
  - conv: {out: 64, kernel: 7, stride: 2, padding: 3}
  - maxpool: {kernel: 3, stride: 2, padding: 1}
  - conv: {out: 64, kernel: 1}
  - conv: {out: 192, kernel: 3, padding: 1}
  - maxpool: {kernel: 3, stride: 2, padding: 1}
""")
    r = analyze(load_spec(path))
    kb = [row.activation_bytes // 1024 for row in r.rows]
    assert kb == [3136, 784, 784, 2352, 588]
    assert [round(row.params / 1000) for row in r.rows] == [9, 0, 4, 111, 0]
    assert [round(row.macs / 1e6) for row in r.rows if row.kind == "conv"] == [118, 13, 347]
    # Totals from 224 to 28: "Memory: 7.5 MB" (7,644 KB), "Parameters: 124K". The slide's "MFLOP: 418" does not
    # add up from its own rows (118 + 2 + 13 + 347 + 1 = 481): the conv rows alone give 478 M MACs.
    assert sum(kb) == 7644
    assert round(r.totals.params / 1000) == 124
    assert round(r.totals.macs / 1e6) == 478
    full = analyze(load_spec(path), convention="full")
    pools = [row.flops for row in full.rows if row.kind == "maxpool"]
    assert [round(p / 1e6) for p in pools] == [2, 1]  # the slide's max-pool "flop (M)" entries
