"""`archcalc import` on timm's hybrid families (convolutions and attention: issue 30), recorded in
tests/data/timm_hybrid_import.json, against the real models measured in tests/data/timm_hybrid_measured.json (both
made in a separate environment with timm by `tests/data/measure/timm_measured.py --hybrid` and `timm_import.py
--hybrid`; see tests/data/README.md, "timm's hybrids"): every model of the hybrid set was measured and tried; the
ones that did not import are exactly the ones listed here, by the refusal that stopped them; every one that did
import is exact on params, buffers, MACs, fvcore's count (where it was measured) and output shape. timm is not
imported here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
MEASURED_FILE = json.loads((DATA / "timm_hybrid_measured.json").read_text(encoding="utf-8"))
MEASURED = MEASURED_FILE["models"]
IMPORTED_FILE = json.loads((DATA / "timm_hybrid_import.json").read_text(encoding="utf-8"))
IMPORTED = IMPORTED_FILE["models"]
CNN = json.loads((DATA / "timm_measured.json").read_text(encoding="utf-8"))["models"]

# The hybrid set (timm_common.HYBRID_FAMILIES, and the CNN families' models with token ops) by family, as measured.
FAMILY_SIZES = {
    "byoanet": 15, "byobnet": 10, "coat": 8, "cpubone": 9, "csatv2": 2, "davit": 8, "edgenext": 5,
    "efficientformer": 3, "efficientformer_v2": 4, "efficientnet": 1, "efficientvit_mit": 7, "efficientvit_msra": 6,
    "fastvit": 9, "gcvit": 5, "iformer": 9, "levit": 20, "lowformer": 8, "maxxvit": 58, "metaformer": 4,
    "mobilenetv3": 4, "mobilenetv5": 3, "mobilevit": 10, "nextvit": 3, "pit": 8, "pvt_v2": 7, "shvit": 4,
    "swiftformer": 4, "tiny_vit": 5, "twins": 6, "visformer": 2, "vision_transformer_hybrid": 14, "vitamin": 13,
    "xcit": 28,
}
# Models of the hybrid families that run no token op at the ATen level (no batched matmul, no scaled dot product,
# no linear or layer norm on B x N x C): MobileViT-v2's separable attention (a softmax over the tokens of a conv's
# output and a sum: element-wise ops and reductions on a 4-D tensor) and LowFormer's E1/E2 (convolutional stages
# only). They stay in the set: the families are hybrid, and these import as any CNN does.
NO_TOKEN_OPS = {"lowformer_e1", "lowformer_e2", *(f"mobilevitv2_{w}" for w in ("050", "075", "100", "125", "150",
                                                                                "175", "200"))}

# The models that did not import, by the refusal that stopped them (the op and the source place it names), from
# `timm_import.py --hybrid --failed-table`, read through: grouped by cause in docs/export.md.
FAILED: dict[str, tuple[str, ...]] = {
    "cannot import Tensor.reshape ... timm/models/coat.py:132": (  # 8
        "coat_lite_medium", "coat_lite_medium_384", "coat_lite_mini", "coat_lite_small", "coat_lite_tiny",
        "coat_mini", "coat_small", "coat_tiny",
    ),
    "cannot import Tensor.mul ... timm/models/csatv2.py:267": (  # 2
        "csatv2", "csatv2_21m",
    ),
}

# The share of the hybrid set that imports exact (issue 30 asks for 90 %; see docs/export.md for what stops the rest).
IMPORTED_COUNT = 292  # of 302: 96.7 %

# Imported models fvcore's CPU run was not taken for (over 150 GMACs, and the MaxViTs and CoAtNets over 25 GMACs: too
# slow on the 2 shared cores the data was made on); their other figures are checked, and fvcore's count of the same
# blocks on the smaller ViTamins, MaxViTs and CoAtNets.
FVCORE_SKIPPED = {"coatnet_3_224", "coatnet_3_rw_224", "coatnet_4_224", "coatnet_5_224", "coatnet_rmlp_2_rw_384",
                  "coatnet_rmlp_3_rw_224", "davit_base_fl", "davit_giant", "davit_huge_fl", "maxvit_base_tf_384",
                  "maxvit_base_tf_512", "maxvit_large_tf_224", "maxvit_large_tf_384", "maxvit_large_tf_512",
                  "maxvit_rmlp_base_rw_384", "maxvit_small_tf_384", "maxvit_small_tf_512", "maxvit_tiny_tf_512",
                  "maxvit_xlarge_tf_224", "maxvit_xlarge_tf_384", "maxvit_xlarge_tf_512",
                  "maxxvitv2_rmlp_base_rw_384", "maxxvitv2_rmlp_large_rw_224", "mobilenetv5_300m",
                  "mobilenetv5_300m_enc", "resnet50x64_clip", "vitamin_large2_336", "vitamin_large2_384",
                  "vitamin_large_336", "vitamin_large_384", "vitamin_xlarge_384"}


def sdpa_fvcore(rec: dict) -> int:
    """fvcore's count as archcalc's fvcore convention states it: fvcore has no handler for
    aten::scaled_dot_product_attention and counts it 0 (it lists the op as unsupported); archcalc's self_attention
    counts its two products (Q K^T and A V: `sdpa_macs`, measured from the call's operand shapes) as fvcore counts
    the same products written with matmul. The difference is stated, never hidden."""
    extra = rec["sdpa_macs"] if rec["fvcore_unsupported"].get("aten::scaled_dot_product_attention") else 0
    return rec["fvcore"] + extra


def test_the_hybrid_set() -> None:
    families = MEASURED_FILE["families"]
    assert {f: len(names) for f, names in families.items()} == FAMILY_SIZES
    assert sum(FAMILY_SIZES.values()) == len(MEASURED) == 302
    assert set(MEASURED) == {name for names in families.values() for name in names}
    assert not [name for name, rec in MEASURED.items() if "error" in rec]  # every model was measured
    assert {name for name, rec in MEASURED.items() if not rec["token_ops"]} == NO_TOKEN_OPS
    # the CNN families' models in the set are exactly the ones the CNN measurement found token ops in
    from_cnn = {name for name, rec in CNN.items() if rec["token_ops"]}
    assert from_cnn <= set(MEASURED) and {n for n in MEASURED if n in CNN} == from_cnn


def test_every_model_was_tried_and_the_failures_are_the_listed_ones() -> None:
    assert set(IMPORTED) == set(MEASURED)
    failed = {name: rec["error"] for name, rec in IMPORTED.items() if not rec["imported"]}
    listed = {name: key for key, names in FAILED.items() for name in names}
    assert sum(len(names) for names in FAILED.values()) == len(listed)  # no model listed twice
    assert set(failed) == set(listed)
    for name, key in listed.items():
        assert all(part in failed[name] for part in key.split(" ... ")), (name, failed[name])
    assert not [name for name, rec in IMPORTED.items() if rec.get("crashed")]  # refused, never a traceback


def test_the_rate() -> None:
    imported = sum(1 for rec in IMPORTED.values() if rec["imported"])
    assert imported == IMPORTED_COUNT
    assert IMPORTED_FILE["summary"]["imported"] == imported and IMPORTED_FILE["summary"]["tried"] == len(MEASURED)


@pytest.mark.parametrize("name", sorted(n for n, rec in IMPORTED.items() if rec["imported"]))
def test_imported_figures_equal_the_real_models(name: str) -> None:
    got, measured = IMPORTED[name], MEASURED[name]
    assert got["params"] == measured["params"]
    assert got["buffers"] == measured["float_buffers"] + measured["int_buffers"]
    # FlopCounterMode on the meta device, where scaled_dot_product_attention runs its math decomposition (its two
    # products counted as bmm): conv and matrix-product FLOPs halved
    assert got["macs"] == measured["macs"]
    if name not in FVCORE_SKIPPED:
        assert got["fvcore"] == sdpa_fvcore(measured)
    assert got["outputs"] == {"output": measured["output_shape"][1:]}


def test_fvcore_was_measured_for_every_imported_model_but_the_largest() -> None:
    imported = {name for name, rec in IMPORTED.items() if rec["imported"]}
    assert {name for name in imported if "fvcore" not in MEASURED[name]} == FVCORE_SKIPPED
    assert all(MEASURED[name]["fvcore_skipped"] for name in FVCORE_SKIPPED)
    # the measured ones that run scaled_dot_product_attention: fvcore counted it as 0 (listed unsupported)
    sdpa = [name for name in imported - FVCORE_SKIPPED if MEASURED[name]["sdpa_calls"]]
    assert len(sdpa) == 171  # the imported models that call it, fvcore measured (docs/export.md by family)
    assert all(MEASURED[name]["fvcore_unsupported"]["aten::scaled_dot_product_attention"]
               == MEASURED[name]["sdpa_calls"] for name in sdpa)


def test_the_rate_in_the_docs() -> None:
    """docs/export.md states the rate and the families that import."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "export.md").read_text(encoding="utf-8")
    assert f"{IMPORTED_COUNT} of {len(MEASURED)} models" in text
    families = Counter(MEASURED[name]["family"] for name, rec in IMPORTED.items() if rec["imported"])
    assert families == {"maxxvit": 58, "xcit": 28, "levit": 20, "byoanet": 15, "vision_transformer_hybrid": 14,
                        "vitamin": 13, "byobnet": 10, "mobilevit": 10, "cpubone": 9, "fastvit": 9, "iformer": 9,
                        "davit": 8, "lowformer": 8, "pit": 8, "efficientvit_mit": 7, "pvt_v2": 7,
                        "efficientvit_msra": 6, "twins": 6, "edgenext": 5, "gcvit": 5, "tiny_vit": 5,
                        "efficientformer_v2": 4, "metaformer": 4, "mobilenetv3": 4, "shvit": 4, "swiftformer": 4,
                        "efficientformer": 3, "mobilenetv5": 3, "nextvit": 3, "visformer": 2, "efficientnet": 1}
