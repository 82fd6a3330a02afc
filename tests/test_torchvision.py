"""specs/torchvision/: one spec per torchvision CNN, exact to torchvision's own model.

Expected values come from tests/data (see its README): the figures torchvision publishes with its weights
(`torchvision_published.json`, num_params and GMACs) and what was measured on torchvision's real models with
forward hooks and fvcore (`torchvision_measured.json`). torchvision itself is not imported here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiered
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import Report, analyze
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec
from archcalc.torch.validate import validate

DATA = Path(__file__).resolve().parent / "data"
PUBLISHED = json.loads((DATA / "torchvision_published.json").read_text(encoding="utf-8"))["models"]
MEASURED = json.loads((DATA / "torchvision_measured.json").read_text(encoding="utf-8"))["models"]
SPECS = bundled()
MODELS = sorted(PUBLISHED)

# inception_v3: torchvision's num_params counts the auxiliary classifier, which its eval forward (the published
# MACs, fvcore) does not run. The spec's default is the eval forward; `aux_logits=1` adds the head as an output.
EVAL_WITHOUT_AUX = {"inception_v3"}
DONE = MODELS
VITS = sorted(k for k in json.loads((DATA / "torchvision_vit.json").read_text(encoding="utf-8")) if k != "versions")
SWINS = sorted(k for k in json.loads((DATA / "torchvision_swin.json").read_text(encoding="utf-8")) if k != "versions")
MVITS = sorted(k for k in json.loads((DATA / "torchvision_mvit.json").read_text(encoding="utf-8")) if k != "versions")
SWIN3DS = sorted(k for k in json.loads((DATA / "torchvision_swin3d.json").read_text(encoding="utf-8"))
                 if k != "versions")
SEGMENTATION = [m for m in DONE if PUBLISHED[m]["family"] == "segmentation"]
WITH_AUX = [m for m in SEGMENTATION if "params_without_aux" in MEASURED[m]]


def report(name: str, convention: str = "torch", **overrides: str) -> Report:
    return analyze(load_spec(SPECS[f"torchvision/{name}"], overrides=overrides), convention=convention)


def gmacs_as_printed(macs: int, printed: str) -> str:
    """MACs in G rounded as torchvision rounds `_ops` (3 decimals, trailing zeros dropped in the table)."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return f"{round(macs / 1e9, decimals):.{decimals}f}"


def test_the_data_files_agree_with_each_other() -> None:
    # The measurement reproduced every published figure; a test that relies on both would hide a bad copy.
    assert set(PUBLISHED) == set(MEASURED) and len(PUBLISHED) == 78
    for name, pub in PUBLISHED.items():
        m = MEASURED[name]
        assert m["params"] == pub["num_params"], name
        assert gmacs_as_printed(m["macs"], pub["gmacs"]) == pub["gmacs"], name
        assert m["input_shape"] == [1, *pub["input"]], name
        assert m["flop_counter"] == 2 * m["macs"], name


def test_every_model_has_a_spec() -> None:
    assert [m for m in MODELS if f"torchvision/{m}" not in SPECS] == []
    # the CNNs here; the vision transformers in tests/test_tokens.py (tests/data/torchvision_vit.json), the Swins in
    # tests/test_swin.py (torchvision_swin.json), the video MViTs in tests/test_mvit.py (torchvision_mvit.json), the
    # video Swins in tests/test_swin3d.py (torchvision_swin3d.json)
    assert {n for n in SPECS if n.startswith("torchvision/")} == {f"torchvision/{m}" for m in [*MODELS, *VITS,
                                                                                              *SWINS, *MVITS,
                                                                                              *SWIN3DS]}


@pytest.mark.parametrize("name", DONE)
def test_published_figures(name: str) -> None:
    pub = PUBLISHED[name]
    rep = report(name)
    assert list(rep.input) == pub["input"]
    params = pub["num_params"] if name not in EVAL_WITHOUT_AUX else MEASURED[name]["params_without_aux"]
    assert rep.totals.params == params
    assert gmacs_as_printed(rep.totals.macs, pub["gmacs"]) == pub["gmacs"]


@pytest.mark.parametrize("name", DONE)
def test_measured_figures(name: str) -> None:
    m = MEASURED[name]
    rep = report(name)
    assert rep.totals.macs == m["macs"]  # the exact integer, not only its rounding
    if name not in EVAL_WITHOUT_AUX:
        assert rep.totals.buffers == m["float_buffers"] + m["int_buffers"]
    shape = m["output_shape"]
    if isinstance(shape, dict):  # segmentation: an OrderedDict of outputs
        assert {n: [1, *s] for n, s in rep.outputs} == shape
    else:
        assert [1, *rep.totals.output] == shape


@pytest.mark.parametrize("name", DONE)
def test_fvcore_total_is_fvcore_on_torchvision(name: str) -> None:
    assert report(name, "fvcore").totals.flops == MEASURED[name]["fvcore"]


def test_inception_v3_auxiliary_classifier() -> None:
    # With the head (torchvision's default build, aux_logits=True): num_params as published, and the training
    # forward's extra MACs, by hand from InceptionAux: avg_pool2d(5, 3) takes Mixed_6e's 768x17x17 to 5x5; conv0
    # 1x1 768 -> 128 on 5x5; conv1 5x5 128 -> 768 gives 1x1; fc 768 -> 1000.
    aux_macs = 128 * 768 * 5 * 5 + 768 * 128 * 5 * 5 + 768 * 1000
    rep = report("inception_v3", aux_logits="1")
    m = MEASURED["inception_v3"]
    assert rep.totals.params == PUBLISHED["inception_v3"]["num_params"] == m["params"]
    assert rep.totals.buffers == m["float_buffers"] + m["int_buffers"]
    assert rep.totals.macs == m["macs"] + aux_macs
    assert [n for n, _ in rep.outputs] == ["logits", "aux"]
    assert dict(rep.outputs)["aux"] == (1000,)


@pytest.mark.parametrize("name", WITH_AUX)
def test_segmentation_without_aux(name: str) -> None:
    # aux_loss=False: the auxiliary FCNHead is gone, and with it the second output.
    rep = report(name, aux="0")
    assert rep.totals.params == MEASURED[name]["params_without_aux"]
    assert [n for n, _ in rep.outputs] == ["out"]


# Segmentation networks on the CPU at a reduced image (F.interpolate's targets follow the input: size_of).
@pytest.mark.parametrize("name", tiered(SEGMENTATION, {"lraspp_mobilenet_v3_large", "fcn_resnet50"}))
def test_segmentation_reduced_on_cpu(name: str) -> None:
    spec = load_spec(SPECS[f"torchvision/{name}"])
    v = validate(spec, device="cpu", input_shape=(3, 64, 64))
    assert v.ok, "\n".join(f"{c.quantity} {c.layer}: {c.predicted} != {c.measured}" for c in v.failures)
    assert "fvcore_flops" in {c.quantity for c in v.checks}
    outputs = analyze(spec, input_shape=(3, 64, 64)).outputs  # validate checked each against torch's
    assert outputs and all(shape == (21, 64, 64) for _, shape in outputs)


def test_mean_heads_count_zero_under_fvcore() -> None:
    # torchvision's MNASNet and ShuffleNetV2 end with x.mean([2, 3]), s3d with torch.mean over (T, H, W): fvcore
    # has no formula for aten::mean, so the measured fvcore total has no pooling term (unlike adaptive pooling's
    # one per input element); the spec's mean row must count 0 too.
    for name in ("mnasnet1_0", "shufflenet_v2_x1_0", "s3d"):
        assert "adaptive_avg_pool2d" not in MEASURED[name]["fvcore_by_operator"]
        rows = [r for r in report(name, "fvcore").rows if r.kind == "mean"]
        assert len(rows) == 1 and rows[0].flops == 0


# Video networks on the CPU at a reduced clip (s3d's fixed 2x7x7 average pool needs at least 14x209x209).
REDUCED = {"r3d_18": (3, 8, 56, 56), "mc3_18": (3, 8, 56, 56), "r2plus1d_18": (3, 8, 56, 56),
           "s3d": (3, 14, 209, 209)}


@pytest.mark.parametrize("name", tiered(sorted(REDUCED), {"r3d_18"}))
def test_video_reduced_on_cpu(name: str) -> None:
    v = validate(load_spec(SPECS[f"torchvision/{name}"]), device="cpu", input_shape=REDUCED[name])
    assert v.ok, "\n".join(f"{c.quantity} {c.layer}: {c.predicted} != {c.measured}" for c in v.failures)
    assert "fvcore_flops" in {c.quantity for c in v.checks}


FAMILIES = {
    "alexnet": ["alexnet"], "vgg": ["vgg"], "resnet": ["resnet", "resnext", "wide_resnet"],
    "squeezenet": ["squeezenet"], "densenet": ["densenet"], "googlenet": ["googlenet"],
    "inception": ["inception"], "mobilenet": ["mobilenet"], "mnasnet": ["mnasnet"], "shufflenet": ["shufflenet"],
    "efficientnet": ["efficientnet"], "regnet": ["regnet"], "convnext": ["convnext"],
    "video": ["r3d", "mc3", "r2plus1d", "s3d", "mvit", "swin3d"], "segmentation": ["fcn", "deeplabv3", "lraspp"],
    "vit": ["vit_"], "swin": ["swin_"],
}


def test_zoo_groups_torchvision_by_family() -> None:
    result = CliRunner().invoke(app, ["zoo", "--format", "json"])
    assert result.exit_code == 0, result.output
    entries = [e for e in json.loads(result.output) if e["name"].startswith("torchvision/")]
    assert {e["name"].removeprefix("torchvision/") for e in entries} == {*DONE, *VITS, *SWINS, *MVITS, *SWIN3DS}
    for e in entries:
        model = e["name"].removeprefix("torchvision/")
        prefixes = FAMILIES[e["family"]]
        assert any(model.startswith(p) for p in prefixes), (model, e["family"])


def test_compare_over_a_family() -> None:
    names = [f"torchvision/efficientnet_b{i}" for i in range(8)]
    result = CliRunner().invoke(app, ["compare", *names, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["totals"]["params"] for r in rows] == [PUBLISHED[f"efficientnet_b{i}"]["num_params"] for i in range(8)]
