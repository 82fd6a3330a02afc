# Measurement recipe (not run by the tests): see tests/data/torchvision_mvit.json for its output and
# tests/data/README.md for how it was run.
"""torchvision's video MViTs (mvit_v1_b, mvit_v2_s) measured on the real models on a 3 x 16 x 224 x 224 clip, batch
1, eval mode, one thread: parameters and buffers; what torch's FlopCounterMode counts in a no_grad forward (total
and by op); what fvcore counts (total, by operator, the ops it skips); the output shape; the figures torchvision
publishes for the weights; and what `archcalc import` of the model gives (this repository's archcalc).
`--import-only` refreshes only the last (the measured figures take minutes; the import seconds)."""

import json
import sys
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import get_model, get_model_weights
from torchvision_common import counts, imported

OUT = Path(__file__).resolve().parent.parent / "torchvision_mvit.json"
MODELS = {"mvit_v1_b": "KINETICS400_V1", "mvit_v2_s": "KINETICS400_V1"}
INPUT = (3, 16, 224, 224)


def main() -> None:
    import fvcore
    from fvcore.nn import FlopCountAnalysis

    torch.set_num_threads(1)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    import_only = "--import-only" in sys.argv
    names = args or list(MODELS)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                          "fvcore": getattr(fvcore, "__version__", "?")}
    for name in names:
        torch.manual_seed(0)
        model = get_model(name, weights=None).eval()
        if import_only:
            result[name]["import"] = imported(model, INPUT)
            print(name, result[name]["import"], flush=True)
            OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
            continue
        x = torch.randn(1, *INPUT)
        meta = get_model_weights(name)[MODELS[name]].meta
        row: dict = {"weights": MODELS[name], "published_params": meta["num_params"],
                     "published_gmacs": str(meta["_ops"]), "input_shape": [1, *INPUT]}
        row["params"] = sum(p.numel() for p in model.parameters())
        row["float_buffers"] = sum(b.numel() for b in model.buffers() if b.is_floating_point())
        row["int_buffers"] = sum(b.numel() for b in model.buffers() if not b.is_floating_point())
        with torch.no_grad(), FlopCounterMode(display=False) as plain:
            y = model(x)
        row["output_shape"] = list(y.shape)
        row["flop_counter"] = plain.get_total_flops()
        row["flop_counter_by_op"] = counts(plain)
        with torch.no_grad():
            analysis = FlopCountAnalysis(model, x)
            analysis.unsupported_ops_warnings(False)
            analysis.uncalled_modules_warnings(False)
            row["fvcore"] = int(analysis.total())
            row["fvcore_by_operator"] = {k: int(v) for k, v in sorted(analysis.by_operator().items())}
            row["fvcore_unsupported"] = {k: int(v) for k, v in sorted(analysis.unsupported_ops().items())}
        row["published_weights"] = {w.name: {"num_params": w.meta["num_params"], "gmacs": str(w.meta["_ops"]),
                                             "crop_size": int(w.transforms().crop_size[0]),
                                             "min_temporal_size": int(w.meta["min_temporal_size"])}
                                    for w in get_model_weights(name)}
        # what `archcalc import` gives for the same model (this repository's archcalc, first on sys.path)
        row["import"] = imported(model, INPUT)
        result[name] = row
        print(name, {k: v for k, v in row.items() if not k.endswith(("_by_op", "_by_operator"))}, flush=True)
        OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
