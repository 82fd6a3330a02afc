# Measurement recipe (not run by the tests): see tests/data/torchvision_maxvit.json for its output and
# tests/data/README.md for how it was run.
"""torchvision's MaxViT (maxvit_t) measured on the real model at the input size its weights are evaluated at (224),
eval mode, one thread: parameters and buffers (float and int64); what torch's FlopCounterMode counts in a no_grad
forward at batch 1 and at batch 3; what fvcore counts (total, by operator, the ops it skips); the output shape; the
figures torchvision publishes for every weights entry; and what `archcalc import` of the model gives (this
repository's archcalc, first on sys.path)."""

import json
import sys
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import get_model, get_model_weights
from torchvision_common import counts, imported

OUT = Path(__file__).resolve().parent.parent / "torchvision_maxvit.json"
MODELS = {"maxvit_t": "IMAGENET1K_V1"}


def main() -> None:
    import fvcore
    from fvcore.nn import FlopCountAnalysis

    torch.set_num_threads(1)
    names = [n for n in sys.argv[1:] if not n.startswith("-")] or list(MODELS)
    import_only = "--import-only" in sys.argv  # re-run `archcalc import` alone, keeping the measured figures
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                          "fvcore": getattr(fvcore, "__version__", "?")}
    for name in names:
        torch.manual_seed(0)
        model = get_model(name, weights=None).eval()
        weights = get_model_weights(name)[MODELS[name]]
        size = int(weights.transforms().crop_size[0])
        x = torch.randn(1, 3, size, size)
        if import_only:
            result[name]["import"] = imported(model, (3, size, size), batch_3=True)
            print(name, result[name]["import"], flush=True)
            OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
            continue
        meta = weights.meta
        row: dict = {"weights": MODELS[name], "published_params": meta["num_params"],
                     "published_gmacs": str(meta["_ops"]), "input_shape": [1, 3, size, size]}
        row["params"] = sum(p.numel() for p in model.parameters())
        row["float_buffers"] = sum(b.numel() for b in model.buffers() if b.is_floating_point())
        row["int_buffers"] = sum(b.numel() for b in model.buffers() if not b.is_floating_point())
        with torch.no_grad(), FlopCounterMode(display=False) as plain:
            y = model(x)
        row["output_shape"] = list(y.shape)
        row["flop_counter"] = plain.get_total_flops()
        row["flop_counter_by_op"] = counts(plain)
        with torch.no_grad(), FlopCounterMode(display=False) as three:
            model(x.repeat(3, 1, 1, 1))
        row["flop_counter_batch_3"] = three.get_total_flops()
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        row["fvcore"] = int(analysis.total())
        row["fvcore_by_operator"] = {k: int(v) for k, v in sorted(analysis.by_operator().items())}
        row["fvcore_unsupported"] = {k: int(v) for k, v in sorted(analysis.unsupported_ops().items())}
        analysis3 = FlopCountAnalysis(model, x.repeat(3, 1, 1, 1))
        analysis3.unsupported_ops_warnings(False)
        analysis3.uncalled_modules_warnings(False)
        row["fvcore_batch_3"] = int(analysis3.total())
        row["published_weights"] = {w.name: {"num_params": w.meta["num_params"], "gmacs": str(w.meta["_ops"]),
                                             "crop_size": int(w.transforms().crop_size[0])}
                                    for w in get_model_weights(name)}
        row["import"] = imported(model, (3, size, size), batch_3=True)
        result[name] = row
        print(name, {k: v for k, v in row.items() if not k.endswith(("_by_op", "_by_operator"))}, flush=True)
        OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
