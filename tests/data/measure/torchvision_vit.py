# Measurement recipe (not run by the tests): see tests/data/torchvision_vit.json for its output and
# tests/data/README.md for how it was run.
"""torchvision's vision transformers (vit_b_16, vit_b_32, vit_l_16, vit_l_32, vit_h_14) measured on the real models
at 224 x 224, batch 1, eval mode, one thread: parameters and buffers; what torch's FlopCounterMode counts in a
plain no_grad forward (the default path: nn.MultiheadAttention's fused fast path) and in a forward with autograd on
under the math attention kernel (every product a counted op); what fvcore counts (total, by operator, the ops it
skips); the output shape; the figures torchvision publishes for every weights entry; and what `archcalc import` of
the model gives (this repository's archcalc)."""

import json
import sys
from pathlib import Path

import torch
import torchvision
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import get_model, get_model_weights
from torchvision_common import counts, imported

OUT = Path(__file__).resolve().parent.parent / "torchvision_vit.json"
MODELS = {"vit_b_16": "IMAGENET1K_V1", "vit_b_32": "IMAGENET1K_V1", "vit_l_16": "IMAGENET1K_V1",
          "vit_l_32": "IMAGENET1K_V1", "vit_h_14": "IMAGENET1K_SWAG_LINEAR_V1"}  # the weights evaluated at 224


def main() -> None:
    import fvcore
    from fvcore.nn import FlopCountAnalysis

    torch.set_num_threads(1)
    names = sys.argv[1:] or list(MODELS)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                          "fvcore": getattr(fvcore, "__version__", "?")}
    for name in names:
        torch.manual_seed(0)
        model = get_model(name, weights=None).eval()
        x = torch.randn(1, 3, 224, 224)
        meta = get_model_weights(name)[MODELS[name]].meta
        row: dict = {"weights": MODELS[name], "published_params": meta["num_params"],
                     "published_gmacs": str(meta["_ops"]), "input_shape": [1, 3, 224, 224]}
        row["params"] = sum(p.numel() for p in model.parameters())
        row["float_buffers"] = sum(b.numel() for b in model.buffers() if b.is_floating_point())
        row["int_buffers"] = sum(b.numel() for b in model.buffers() if not b.is_floating_point())
        with torch.no_grad(), FlopCounterMode(display=False) as plain:
            y = model(x)
        row["output_shape"] = list(y.shape)
        row["flop_counter_no_grad"] = plain.get_total_flops()
        row["flop_counter_no_grad_by_op"] = counts(plain)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math_path:
            model(x)  # autograd on: nn.MultiheadAttention leaves its fast path; the math kernel runs bmm's
        row["flop_counter_math"] = math_path.get_total_flops()
        row["flop_counter_math_by_op"] = counts(math_path)
        analysis = FlopCountAnalysis(model, x)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        row["fvcore"] = int(analysis.total())
        row["fvcore_by_operator"] = {k: int(v) for k, v in sorted(analysis.by_operator().items())}
        row["fvcore_unsupported"] = {k: int(v) for k, v in sorted(analysis.unsupported_ops().items())}
        # every weights entry torchvision publishes for the model, with its evaluation size (the spec's --input)
        row["published_weights"] = {w.name: {"num_params": w.meta["num_params"], "gmacs": str(w.meta["_ops"]),
                                             "crop_size": int(w.transforms().crop_size[0])}
                                    for w in get_model_weights(name)}
        # what `archcalc import` gives for the same model (this repository's archcalc, first on sys.path)
        row["import"] = imported(model, (3, 224, 224))
        result[name] = row
        print(name, {k: v for k, v in row.items() if not k.endswith(("_by_op", "_by_operator"))}, flush=True)
        OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
