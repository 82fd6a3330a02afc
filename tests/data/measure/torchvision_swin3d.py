# Measurement recipe (not run by the tests): see tests/data/torchvision_swin3d.json for its output and
# tests/data/README.md for how it was run.
"""torchvision's video Swin Transformers (swin3d_t, swin3d_s, swin3d_b) measured on the real models on a
3 x 16 x 224 x 224 clip, eval mode, one thread: parameters and buffers; what torch's FlopCounterMode counts in a
no_grad forward at batch 1 (total and by op); what fvcore counts (total, by operator, the ops it
skips); the output shape; the figures torchvision publishes for every weights entry; and what `archcalc import` of
the model gives (this repository's archcalc, first on sys.path); and how far the output of the module archcalc
builds from the bundled spec (torchvision/<name>, at smaller clips: windows cut to a short T, a grid padded to the
patch) is from the real model's, the same weights copied in. `--import-only` refreshes only the last two;
`--no-fvcore` skips fvcore (its trace runs the whole forward again)."""

import json
import sys
from pathlib import Path

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import get_model, get_model_weights
from torchvision_common import counts, imported

OUT = Path(__file__).resolve().parent.parent / "torchvision_swin3d.json"
MODELS = {"swin3d_t": "KINETICS400_V1", "swin3d_s": "KINETICS400_V1", "swin3d_b": "KINETICS400_V1"}
INPUT = (3, 16, 224, 224)
SMALL = ((3, 16, 64, 64), (3, 10, 96, 80))


def same_output(model: torch.nn.Module, name: str) -> dict[str, float]:
    """The largest absolute difference between the real model's output and that of archcalc's module built from
    the bundled spec at each of SMALL, the real model's parameters copied in (in order, each into the first
    parameter of its shape not yet filled: the two list a merge's norm and reduction in different orders)."""
    from archcalc.core.analyze import analyze
    from archcalc.torch.build import build_module

    result = {}
    for shape in SMALL:
        built = build_module(analyze(f"torchvision/{name}", input_shape=shape)).eval()
        mine, filled = list(built.parameters()), set()
        with torch.no_grad():
            for p in model.parameters():
                j = next(j for j, q in enumerate(mine) if j not in filled and q.shape == p.shape)
                filled.add(j)
                mine[j].copy_(p)
            assert len(filled) == len(mine)
            for b, q in zip(model.buffers(), built.buffers(), strict=True):
                q.copy_(b.view(q.shape))
            x = torch.randn(1, *shape)
            result["x".join(map(str, shape))] = float((model(x) - built(x)).abs().max())
    return result


def main() -> None:
    import fvcore
    from fvcore.nn import FlopCountAnalysis

    torch.set_num_threads(1)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    import_only, no_fvcore = "--import-only" in sys.argv, "--no-fvcore" in sys.argv
    names = args or list(MODELS)
    result = json.loads(OUT.read_text()) if OUT.exists() else {}
    result["versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                          "fvcore": getattr(fvcore, "__version__", "?")}
    for name in names:
        torch.manual_seed(0)
        model = get_model(name, weights=None).eval()
        if import_only:
            result[name]["import"] = imported(model, INPUT, batch_3=True)
            result[name]["spec_output_difference"] = same_output(model, name)
            print(name, result[name]["import"], result[name]["spec_output_difference"], flush=True)
            OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
            continue
        x = torch.randn(1, *INPUT)
        weights = get_model_weights(name)[MODELS[name]]
        meta = weights.meta
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
        if not no_fvcore:
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
        row["import"] = imported(model, INPUT, batch_3=True)
        row["spec_output_difference"] = same_output(model, name)
        result[name] = {**result.get(name, {}), **row}
        print(name, {k: v for k, v in row.items() if not k.endswith(("_by_op", "_by_operator"))}, flush=True)
        OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
