"""`archcalc import` on every model of timm's CNN families, recorded in tests/data/timm_import.json, against the
real models measured in tests/data/timm_measured.json (both made in a separate environment with timm by
tests/data/measure/timm_measured.py and timm_import.py; see tests/data/README.md, "timm"): every measured CNN was
tried; the ones that did not import are exactly the ones listed here, refused for the reason given; every one that
did import is exact on params, buffers, MACs, fvcore's count and output shape. timm is not imported here."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
MEASURED_FILE = json.loads((DATA / "timm_measured.json").read_text(encoding="utf-8"))
MEASURED = MEASURED_FILE["models"]
IMPORTED_FILE = json.loads((DATA / "timm_import.json").read_text(encoding="utf-8"))
IMPORTED = IMPORTED_FILE["models"]
# The CNNs: the measured models of the CNN families that run no token-mixing op (see the README's rule).
CNN = {name: rec for name, rec in MEASURED.items() if not rec["token_ops"]}
# timm's FlopCounterMode counts 2 per multiply-accumulate of these ops only (torch/utils/flop_counter.py).
MAC_OPS = {"aten.convolution", "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm"}

# Models of the CNN families that mix tokens (an attention matmul at the ATen level): hybrids, not measured further
# and not tried. Each entry names the block that does it in timm's source.
HYBRIDS = {
    "bat_resnext26ts": "BatNonLocalAttn",  # byobnet: bilinear attention transform
    **dict.fromkeys(["gcresnet33ts", "gcresnet50t", "gcresnext26ts", "gcresnext50ts", "gc_efficientnetv2_rw_t"],
                    "GlobalContext"),  # byobnet, efficientnet: global-context attention pooling (softmax @ x)
    **dict.fromkeys(["resnet50_clip", "resnet101_clip", "resnet50x4_clip", "resnet50x16_clip", "resnet50x64_clip"],
                    "AttentionPool2d"),  # byobnet: CLIP's attention-pooling head
    **dict.fromkeys(["caformer_s18", "caformer_s36", "caformer_m36", "caformer_b36"], "Attention"),  # metaformer
    **dict.fromkeys(["fastvit_sa12", "fastvit_sa24", "fastvit_sa36", "fastvit_ma36", "fastvit_mci0", "fastvit_mci1",
                     "fastvit_mci2", "fastvit_mci3", "fastvit_mci4"], "Attention"),  # fastvit: attention stages
    **dict.fromkeys(["mobilenetv4_hybrid_medium", "mobilenetv4_hybrid_medium_075", "mobilenetv4_hybrid_large",
                     "mobilenetv4_hybrid_large_075"], "MultiQueryAttention2d"),  # mobilenetv3
}

# Models that did not import, by the refusal (the op and the source line it names) that stopped them; the table is
# printed by `timm_import.py --failed-table` and read through before it is pasted here.
FAILED: dict[str, tuple[str, ...]] = {
    "cannot import torch.matmul ... timm/layers/cond_conv2d.py:102": (  # 6
        "efficientnet_cc_b0_4e", "efficientnet_cc_b0_8e", "efficientnet_cc_b1_8e", "tf_efficientnet_cc_b0_4e",
        "tf_efficientnet_cc_b0_8e", "tf_efficientnet_cc_b1_8e",
    ),
}

# fvcore has no handler for `aten::_convolution_mode` (a convolution with padding="same" given as a string, as
# ConvMixer's depthwise convs are): it counts those convs as 0 and lists them as unsupported. archcalc's fvcore
# convention counts them as fvcore counts every other conv (one per MAC), so the figure to compare with is fvcore's
# total plus the MACs of those convs: FlopCounterMode's conv count (2 per MAC) halved, less fvcore's `conv`.
CONV_MODE_UNSUPPORTED = "aten::_convolution_mode"


def expected_fvcore(rec: dict) -> int:
    if CONV_MODE_UNSUPPORTED not in rec["fvcore_unsupported"]:
        return rec["fvcore"]
    return rec["fvcore"] + rec["flop_counter_by_operator"]["aten.convolution"] // 2 - rec["fvcore_by_operator"]["conv"]


def test_the_families_and_their_models() -> None:
    families = MEASURED_FILE["families"]
    assert len(families) == 44
    assert set(MEASURED) == {name for names in families.values() for name in names}
    assert all(MEASURED[n]["family"] == f for f, names in families.items() for n in names)
    assert not [name for name, rec in MEASURED.items() if "error" in rec]  # every model was measured
    assert {name for name, rec in MEASURED.items() if rec["token_ops"]} == set(HYBRIDS)
    assert all("aten.bmm" in MEASURED[name]["token_ops"] for name in HYBRIDS)


def test_the_measured_figures_agree() -> None:
    """The measurement's own checks: FlopCounterMode on the meta device equals it on the CPU run where both were
    taken, and the MACs are all of FlopCounterMode's count (a CNN runs no op it counts but conv and matmul)."""
    checked = [rec for rec in CNN.values() if "flop_counter_cpu" in rec]
    assert len(checked) >= 44
    for rec in checked:
        assert rec["flop_counter_cpu"] == rec["flop_counter"]
        assert rec["output_shape_cpu"] == rec["output_shape"]
    for name, rec in CNN.items():
        assert set(rec["flop_counter_by_operator"]) <= MAC_OPS, name
        assert rec["flop_counter"] == 2 * rec["macs"], name
        assert rec["input_shape"][0] == 1 and rec["output_shape"][0] == 1, name


# Measured without fvcore's CPU run (hundreds of GMACs each: too slow on the 2 shared cores the data was made on).
FVCORE_SKIPPED = {"convnext_xxlarge", "convnextv2_huge", "regnety_2560", "resnetv2_152x4_bit"}


def test_fvcore_was_measured_for_every_imported_model() -> None:
    skipped = {name for name, rec in CNN.items() if "fvcore" not in rec}
    assert skipped == FVCORE_SKIPPED
    assert all(CNN[name]["fvcore_skipped"] for name in skipped)
    # every imported model's fvcore is checked but these four: ConvNeXt-XXLarge (846 M parameters) and RegNetY-2560
    # (1.28 G) import since the importer maps timm's LayerNorm2d and BatchNormAct2d, BiT-M R152x4 (936 M) since it
    # maps weight standardisation (std_conv), ConvNeXt-V2-Huge (660 M) since it maps GRN, and fvcore's CPU run of
    # them was not made; their other figures are checked (and fvcore's count of std_conv and grn on the other BiT,
    # NFNet and ConvNeXt-V2 models)
    assert [name for name in sorted(skipped) if IMPORTED[name]["imported"]] == sorted(FVCORE_SKIPPED)


def test_every_cnn_was_tried_and_the_failures_are_the_listed_ones() -> None:
    assert set(IMPORTED) == set(CNN)
    failed = {name: rec["error"] for name, rec in IMPORTED.items() if not rec["imported"]}
    listed = {name: key for key, names in FAILED.items() for name in names}
    assert sum(len(names) for names in FAILED.values()) == len(listed)  # no model listed twice
    assert set(failed) == set(listed)
    for name, key in listed.items():
        assert all(part in failed[name] for part in key.split(" ... ")), (name, failed[name])


@pytest.mark.parametrize("name", sorted(n for n, rec in IMPORTED.items() if rec["imported"]))
def test_imported_figures_equal_the_real_models(name: str) -> None:
    got, measured = IMPORTED[name], CNN[name]
    assert got["params"] == measured["params"]
    assert got["buffers"] == measured["float_buffers"] + measured["int_buffers"]
    assert got["macs"] == measured["macs"]
    if name not in FVCORE_SKIPPED:  # (the four models fvcore was not run on import: see below)
        assert got["fvcore"] == expected_fvcore(measured)
    assert got["outputs"] == {"output": measured["output_shape"][1:]}


def test_import_time_summary() -> None:
    """The recorded summary is the one the per-model times give (the figures quoted in the README)."""
    times = sorted(rec["seconds_import"] for rec in IMPORTED.values() if "seconds_import" in rec)
    summary = IMPORTED_FILE["summary"]
    assert summary["tried"] == len(times) == len(IMPORTED)  # (no model timed out)
    assert summary["imported"] == sum(1 for rec in IMPORTED.values() if rec["imported"])
    assert summary["seconds_import_median"] == statistics.median(times)
    assert summary["seconds_import_max"] == max(times)
