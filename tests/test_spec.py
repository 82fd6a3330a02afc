"""The spec language: composition, blocks, expressions, names, defaults, extends. Expected values are written out."""

from __future__ import annotations

import pytest

from archcalc.core.analyze import analyze
from archcalc.core.errors import SpecError
from archcalc.core.spec import load_spec


def run(write_spec, text: str, **kwargs):  # type: ignore[no-untyped-def]
    return analyze(load_spec(write_spec(text)), **kwargs)


def test_bare_kinds_aliases_and_auto_names(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [3, 8, 8]
layers:
  - conv: {out: 4, kernel: 3, pad: 1}
  - relu
  - conv: {out_channels: 4, kernel_size: 3, padding: 1}
  - batchnorm
  - relu
  - linear: {out: 10}
""")
    assert [row.name for row in r.rows] == ["conv1", "relu1", "conv2", "bn1", "relu2", "fc1"]
    assert r.rows[0].params == 3 * 9 * 4 + 4 and r.rows[2].params == 4 * 9 * 4 + 4
    assert r.rows[-1].params == 4 * 8 * 8 * 10 + 10  # linear flattens 4x8x8 implicitly
    assert r.totals.buffers == 2 * 4 + 1  # running mean, var, num_batches_tracked


def test_rank_picks_1d_2d_3d(write_spec) -> None:  # type: ignore[no-untyped-def]
    for shape, out in (("[2, 20]", (4, 18)), ("[2, 9, 9]", (4, 7, 7)), ("[2, 5, 9, 9]", (4, 3, 7, 7))):
        r = run(write_spec, f"name: t\ninput: {shape}\nlayers:\n  - conv: {{out: 4, kernel: 3}}\n")
        assert r.rows[0].output == out
        assert r.rows[0].params == 4 * 2 * 3 ** (len(out) - 1) + 4


def test_defaults_apply_and_can_be_overridden(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [3, 8, 8]
defaults: {conv: {bias: false, kernel: 3}}
layers:
  - conv: {out: 4}
  - conv: {out: 4, bias: true, kernel: 1}
""")
    assert [row.params for row in r.rows] == [3 * 9 * 4, 4 * 4 + 4]


def test_blocks_args_expressions_and_repeat_first(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [8, 16, 16]
args: {base: 8}
blocks:
  unit:
    args: {width: ~, stride: 1, mid: width // 2}
    layers:
      - conv: {out: mid, kernel: 1, stride: stride}
      - conv: {out: 2 * width, kernel: 3, padding: 1}
layers:
  - repeat: 3
    name: stage
    first: {unit: {width: base * 2, stride: 2}}
    block: {unit: {width: base * 2}}
""")
    names = [row.name for row in r.rows]
    assert names == ["stage.0.conv1", "stage.0.conv2", "stage.1.conv1", "stage.1.conv2", "stage.2.conv1",
                     "stage.2.conv2"]
    assert r.rows[0].output == (8, 8, 8)  # mid = 16 // 2, stride 2
    assert r.rows[1].output == (32, 8, 8)
    assert r.rows[2].params == 32 * 8 + 8


def test_repeat_of_a_list_and_index_variable(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [4, 8, 8]
layers:
  - repeat: 3
    block:
      - conv: {out: 4 * (i + 1), kernel: 1}
      - relu
""")
    assert [row.name for row in r.rows][:4] == ["repeat1.0.conv1", "repeat1.0.relu1", "repeat1.1.conv1",
                                                "repeat1.1.relu1"]
    assert [row.output[0] for row in r.rows if row.kind == "conv"] == [4, 8, 12]


def test_parallel_concat_add_and_identity_branch(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [4, 8, 8]
layers:
  - parallel:
      - [{conv: {out: 2, kernel: 1}}]
      - - conv: {out: 3, kernel: 3, padding: 1}
        - relu
      - []
    name: mix
  - parallel:
      - {conv: {out: 9, kernel: 1}}
      - {conv: {out: 9, kernel: 3, padding: 1}}
    merge: add
""", convention="full")
    concat = next(row for row in r.rows if row.kind == "concat")
    assert concat.name == "mix.concat" and concat.output == (2 + 3 + 4, 8, 8)
    add = next(row for row in r.rows if row.kind == "add")
    assert add.output == (9, 8, 8) and add.flops == 9 * 8 * 8  # one addition per element
    assert [row.name for row in r.rows][:3] == ["mix.branch1.conv1", "mix.branch2.conv1", "mix.branch2.relu1"]


def test_residual_projection_and_identity(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [8, 16, 16]
defaults: {conv: {bias: false}}
blocks:
  basic:
    args: {out: ~, stride: 1}
    residual:
      - conv: {out: out, kernel: 3, stride: stride, padding: 1}
      - batchnorm
    shortcut: projection
    after: [relu]
layers:
  - basic: {out: 8}
  - basic: {out: 16, stride: 2}
""")
    names = [row.name for row in r.rows]
    assert "basic1.shortcut.conv1" not in names  # same shape: identity
    assert names[names.index("basic2.bn1") + 1:] == ["basic2.shortcut.conv1", "basic2.shortcut.bn1", "basic2.add",
                                                     "basic2.relu1"]
    proj = r.rows[names.index("basic2.shortcut.conv1")]
    assert proj.output == (16, 8, 8) and proj.params == 8 * 16 and proj.config == "1/2 p0"


def test_explicit_shortcut_list(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [4, 8, 8]
layers:
  - residual: [{conv: {out: 6, kernel: 1}}]
    shortcut: [{conv: {out: 6, kernel: 1, bias: false}}]
""")
    assert [row.name for row in r.rows] == ["residual1.conv1", "residual1.shortcut.conv1", "residual1.add"]


def test_extends_overrides_args_and_layers(write_spec) -> None:  # type: ignore[no-untyped-def]
    write_spec("""
name: base
input: [3, 8, 8]
args: {classes: 10}
blocks:
  head:
    args: {}
    layers: [global_avgpool, {linear: {out: classes}}]
layers:
  - conv: {out: 4, kernel: 3}
  - head
""", name="base.yaml")
    r = run(write_spec, "extends: base.yaml\nname: child\nargs: {classes: 5}\n")
    assert r.name == "child" and r.rows[-1].output == (5,)
    r = run(write_spec, "extends: base.yaml\nname: c2\nlayers:\n  - conv: {out: 7, kernel: 1}\n  - head\n")
    assert r.rows[0].output == (7, 8, 8) and r.rows[-1].output == (10,)


def test_extends_cycle_is_an_error(write_spec) -> None:  # type: ignore[no-untyped-def]
    write_spec("extends: b.yaml\nname: a\ninput: [1, 4]\nlayers: [relu]\n", name="a.yaml")
    path = write_spec("extends: a.yaml\nname: b\n", name="b.yaml")
    with pytest.raises(SpecError, match="cycle"):
        load_spec(path)


def test_per_position_bias_and_trainable_flag(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [4, 19, 19]
layers:
  - conv: {out: 1, kernel: 1, bias: false, trainable: false}
  - bias: {per: position}
  - flatten
  - softmax
""")
    assert r.rows[1].params == 361
    assert r.totals.params == 4 + 361 and r.totals.trainable_params == 361
    assert r.totals.output == (361,)


def test_receptive_field_through_branches(write_spec) -> None:  # type: ignore[no-untyped-def]
    # Two stacked 3x3 convs see 5x5; three see 7x7 (VGG's argument). A 2x2/2 pool doubles the jump.
    r = run(write_spec, """
name: t
input: [1, 32, 32]
layers:
  - conv: {out: 1, kernel: 3}
  - conv: {out: 1, kernel: 3}
  - maxpool: {kernel: 2}
  - parallel:
      - {conv: {out: 1, kernel: 1}}
      - {conv: {out: 1, kernel: 5, padding: 2}}
""")
    assert [row.rf for row in r.rows[:3]] == [(3, 3), (5, 5), (6, 6)]
    assert r.totals.rf == (6 + 4 * 2, 6 + 4 * 2) and r.totals.jump == (2, 2)


def test_dilation_and_ceil_mode(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [1, 13, 13]
layers:
  - conv: {out: 1, kernel: 3, dilation: 2}
  - maxpool: {kernel: 2, ceil_mode: true}
""")
    assert r.rows[0].output == (1, 9, 9)  # 13 - 2*(3-1) - 1 + 1 = 9
    assert r.rows[1].output == (1, 5, 5)  # ceil(9/2)


def test_safe_loading_only(write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec("name: !!python/name:os.system x\ninput: [1, 4]\nlayers: [relu]\n")
    with pytest.raises(SpecError):
        load_spec(path)


def test_mul_merge_broadcasts_for_squeeze_excitation(write_spec) -> None:  # type: ignore[no-untyped-def]
    r = run(write_spec, """
name: t
input: [16, 8, 8]
layers:
  - parallel:
      - []
      - [global_avgpool, {conv: {out: 4, kernel: 1}}, relu, {conv: {out: 16, kernel: 1}}, sigmoid]
    merge: mul
    name: se
""", convention="full")
    mul = next(row for row in r.rows if row.kind == "mul")
    assert mul.name == "se.mul" and mul.output == (16, 8, 8) and mul.flops == 16 * 8 * 8
    assert r.totals.params == (16 * 4 + 4) + (4 * 16 + 16)


def test_mul_merge_rejects_incompatible_shapes(write_spec) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SpecError, match=r"cannot be multiplied \(each axis must match or be 1\)"):
        run(write_spec, "name: t\ninput: [4, 8, 8]\nlayers:\n  - parallel:\n      - []\n"
                        "      - [{conv: {out: 2, kernel: 1}}]\n    merge: mul\n")


def test_a_bundled_name_is_found_without_the_listing_as_the_listing_finds_it() -> None:
    # resolve_spec looks a plain name up as a file first; it must give what bundled() gives, and leave every other
    # name (relative parts, hidden or upper-case parts) to the listing.
    from archcalc.core.resolve import bundled, bundled_file, resolve_spec, specs_dir

    specs = bundled()
    assert {name: bundled_file(name) for name in specs} == specs
    assert resolve_spec("torchvision/resnet50.yaml") == specs_dir() / "torchvision" / "resnet50.yaml"
    for name in ("../specs/resnet50", "torchvision/../resnet50", "./resnet50", "ResNet50", "/resnet50", "resnet50/",
                 "torchvision//resnet50", ".hidden", "nosuchspec"):
        assert bundled_file(name) is None, name


def test_a_bare_name_finds_the_one_collection_that_holds_it(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # `archcalc compare convnext_tiny vit_b_16 resnet50`: a bare name no top-level spec has is the collection's
    # spec of that name; a top-level spec wins (resnet50 is the paper's), and a name two collections hold is refused.
    from archcalc.core import resolve

    for rel in ("resnet50", "torchvision/resnet50", "torchvision/convnext_tiny", "a/twice", "b/twice"):
        path = tmp_path / f"{rel}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("name: x\n")
    monkeypatch.setattr(resolve, "specs_dir", lambda: tmp_path)
    monkeypatch.chdir(tmp_path / "a")
    assert resolve.resolve_spec("convnext_tiny") == tmp_path / "torchvision" / "convnext_tiny.yaml"
    assert resolve.resolve_spec("convnext_tiny.yaml") == tmp_path / "torchvision" / "convnext_tiny.yaml"
    assert resolve.resolve_spec("resnet50") == tmp_path / "resnet50.yaml"
    with pytest.raises(SpecError, match=r"'twice' names a spec in several collections: a/twice, b/twice"):
        resolve.resolve_spec("twice")
    with pytest.raises(SpecError, match="no spec file or bundled spec named 'nosuch'"):
        resolve.resolve_spec("nosuch")
