"""`archcalc import` on torchvision's 78 CNNs, recorded in tests/data/torchvision_import.json (made in a separate
environment with torchvision by tests/data/measure/torchvision_import.py; see tests/data/README.md): the imported
specs' figures equal the ones torchvision publishes (num_params, GMACs) and the ones measured on the real models
(buffers, fvcore's count), and the models that did not import are exactly the ones listed here, for the reasons
given. torchvision is not imported here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
PUBLISHED = json.loads((DATA / "torchvision_published.json").read_text(encoding="utf-8"))["models"]
MEASURED = json.loads((DATA / "torchvision_measured.json").read_text(encoding="utf-8"))["models"]
IMPORTED = json.loads((DATA / "torchvision_import.json").read_text(encoding="utf-8"))["models"]

# Models that did not import, with (a part of) the error each gave.
FAILED: dict[str, str] = {}

# inception_v3's AuxLogits runs only in training: its eval forward, which the importer traces (and which gives the
# published GMACs), never calls it, so its parameters are not in the spec and a warning says so.
AUX_ONLY_IN_TRAINING = {"inception_v3": "AuxLogits"}
# ... nor its buffers: torchvision's InceptionAux has two BasicConv2d (1x1 to 128, 5x5 to 768), each with a
# BatchNorm2d: running mean and variance (2 x 128 + 2 x 768 floats) and one num_batches_tracked each.
AUX_BUFFERS = {"inception_v3": 2 * 128 + 2 * 768 + 2}


def gmacs_as_printed(macs: int, printed: str) -> str:
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return f"{round(macs / 1e9, decimals):.{decimals}f}"


def test_every_model_was_tried_and_the_failures_are_the_listed_ones() -> None:
    assert set(IMPORTED) == set(PUBLISHED) and len(IMPORTED) == 78
    failed = {name: r["error"] for name, r in IMPORTED.items() if not r["imported"]}
    assert set(failed) == set(FAILED)
    for name, why in FAILED.items():
        assert why in failed[name], name


@pytest.mark.parametrize("name", sorted(n for n in PUBLISHED if n not in FAILED))
def test_imported_figures_equal_torchvisions(name: str) -> None:
    got, pub, measured = IMPORTED[name], PUBLISHED[name], MEASURED[name]
    assert gmacs_as_printed(got["macs"], pub["gmacs"]) == pub["gmacs"]
    assert got["macs"] == measured["macs"]  # exact: forward hooks on every conv and linear of the real model
    assert got["fvcore"] == measured["fvcore"]
    assert got["buffers"] == measured["float_buffers"] + measured["int_buffers"] - AUX_BUFFERS.get(name, 0)
    if name in AUX_ONLY_IN_TRAINING:
        head = AUX_ONLY_IN_TRAINING[name]
        assert got["params"] == measured["params_without_aux"]
        left_out = pub["num_params"] - got["params"]
        assert any(f"{head} ({left_out:,})" in w for w in got["warnings"]), got["warnings"]
    else:
        assert got["params"] == pub["num_params"]
        assert got["warnings"] == []
    shapes = measured["output_shape"]  # with the batch axis; a dict for the segmentation models
    expected = {k: v[1:] for k, v in shapes.items()} if isinstance(shapes, dict) else {"output": shapes[1:]}
    assert got["outputs"] == expected


# Classes of torchvision's model definitions (torchvision/models/*.py) that repeat in each model: the importer names
# its blocks after them.
REPEATED_CLASSES = {"resnet50": {"Bottleneck"}, "resnet18": {"BasicBlock"}, "googlenet": {"Inception", "BasicConv2d"},
                    "mobilenet_v2": {"InvertedResidual", "Conv2dNormActivation"}, "efficientnet_b0": {"MBConv"},
                    "convnext_tiny": {"CNBlock"}, "inception_v3": {"InceptionA", "BasicConv2d"}}


@pytest.mark.parametrize("name", sorted(n for n in PUBLISHED if n not in FAILED))
def test_blocks_change_the_text_not_the_figures(name: str) -> None:
    got = IMPORTED[name]
    assert got["flat_equal"], name  # the same trace written without blocks: every total and row equal
    assert got["lines"] <= got["flat_lines"] + 1, name  # (a model with nothing repeated gains no more than a line)
    assert REPEATED_CLASSES.get(name, set()) <= set(got["blocks"]), got["blocks"]
