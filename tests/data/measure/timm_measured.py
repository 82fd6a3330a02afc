# Measurement recipe (not run by the tests): see tests/data/timm_measured.json for its output and
# tests/data/README.md ("timm") for how it was run.
"""Every model of timm's CNN families (timm_common.CNN_FAMILIES), measured on the real model, batch 1 at its
default input (pretrained_cfg["input_size"]): parameters, buffers, PyTorch's FlopCounterMode (total and by
operator), the output shape, fvcore's count (total and by operator), and which token-mixing ops it runs.

    /work/ref/timm/venv/bin/python tests/data/measure/timm_measured.py [--models a,b] [--smallest] [--redo]
    ... timm_measured.py --hybrid [--smallest]       # the hybrid set (timm_common.HYBRID_FAMILIES), no fvcore
    ... timm_measured.py --hybrid --fvcore --models a,b [--fvcore-max-gmacs 150]    # fvcore of those too

Results are written after each model; a rerun skips the models already in the file (resume after a crash) unless
--redo. FlopCounterMode, the shapes and the token-op scan run on the meta device (no memory, no arithmetic: counts
depend only on shapes); fvcore traces with torch.jit, which needs real tensors, so it runs the model on the CPU
(built with torch.manual_seed(0), eval, no_grad, input torch.randn). --cpu-check repeats FlopCounterMode on that
CPU run (`flop_counter_cpu`, `output_shape_cpu`): the test checks that the meta and CPU counts agree."""

from __future__ import annotations

import argparse
import json
import platform
import sys

from timm_common import DATA, family_models, hybrid_models, load_json, run_workers, smallest_first, write_json

OUT = DATA / "timm_measured.json"
HYBRID_OUT = DATA / "timm_hybrid_measured.json"  # --hybrid: the hybrid set (timm_common.HYBRID_FAMILIES)
SIZES = "/work/ref/timm/sizes.json"  # parameter counts for the smallest-first order (a cache, outside the repo)
TIMEOUT = 1800

WORKER = r'''
import json, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
import timm
from torch.utils.flop_counter import FlopCounterMode
from torch.utils._python_dispatch import TorchDispatchMode

torch.set_num_threads(1)
mode = sys.argv[2]
cpu_check = "--cpu-check" in sys.argv[3:]
fvcore_max = int(sys.argv[4]) if len(sys.argv) > 4 else 0  # fvcore only up to this many MACs (0: all)
hybrid = "--hybrid" in sys.argv[5:]  # the hybrid set: fvcore only with --fvcore (its CPU run is slow)
hybrid_fvcore = "--fvcore" in sys.argv[5:]
# Token mixing at the ATen level: attention (a matmul of two activations, batched, or scaled dot product) and
# recurrent ops. A softmax alone is not: split attention and selective kernels weigh their branches with one.
TOKEN = ("bmm", "scaled_dot_product", "lstm", "gru", "rnn_")
MAC_OPS = ("aten.convolution", "aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm")


class Sdpa(torch.overrides.TorchFunctionMode):
    """The multiply-accumulates of every F.scaled_dot_product_attention call, from its operands' shapes: Q K^T and
    A V, batch x L x S x (E + Ev) (fvcore counts 0 for the op, FlopCounterMode on the CPU too)."""

    def __init__(self):
        super().__init__()
        self.macs = 0
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k, v = args[:3]
            self.macs += q.shape[:-2].numel() * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
            self.calls += 1
        return func(*args, **(kwargs or {}))


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def shape_of(y):
    if isinstance(y, torch.Tensor):
        return list(y.shape)
    if isinstance(y, (tuple, list)):
        return [shape_of(v) for v in y]
    if isinstance(y, dict):
        return {k: shape_of(v) for k, v in y.items()}
    return repr(type(y))


def buffers(model):
    kept = set(model.state_dict())
    out = {"float_buffers": 0, "int_buffers": 0, "nonpersistent_buffers": 0}
    for name, b in model.named_buffers():
        out["float_buffers" if b.is_floating_point() else "int_buffers"] += b.numel()
        if name not in kept:
            out["nonpersistent_buffers"] += b.numel()
    return out


def measure(name):
    rec = {}
    t0 = time.perf_counter()
    with torch.device("meta"):
        model = timm.create_model(name, pretrained=False)
    model.eval()
    rec["input_shape"] = [1, *model.pretrained_cfg["input_size"]]
    rec["params"] = sum(p.numel() for p in model.parameters())
    rec.update(buffers(model))
    if mode == "sizes":
        return rec
    token = []  # linear / layer norm on a (batch, tokens, channels) tensor

    def hook(mod, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 3:
            token.append(type(mod).__name__ + " on 3-D")

    hooks = [m.register_forward_pre_hook(hook) for m in model.modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.LayerNorm))]
    x = torch.empty(rec["input_shape"], device="meta")
    if hybrid:  # PiT passes its class token, a parameter that requires grad, to a module: FlopCounterMode's module
        model.requires_grad_(False)  # tracker then asserts (torch 2.14) unless no parameter requires grad
    ops, sdpa = Ops(), Sdpa()
    with torch.no_grad(), FlopCounterMode(display=False) as counter, ops, sdpa:
        y = model(x)
    if hybrid:
        rec["sdpa_macs"], rec["sdpa_calls"] = sdpa.macs, sdpa.calls
    for h in hooks:
        h.remove()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    rec["flop_counter"] = int(counter.get_total_flops())
    rec["flop_counter_by_operator"] = dict(sorted(by_op.items()))
    mac_flops = sum(v for k, v in by_op.items() if k in MAC_OPS)
    rec["macs"] = mac_flops // 2  # FlopCounterMode counts 2 per multiply-accumulate of conv / matmul
    rec["output_shape"] = shape_of(y)
    rec["token_ops"] = sorted({n for n in ops.names if any(t in n for t in TOKEN)} | set(token))
    rec["seconds_meta"] = round(time.perf_counter() - t0, 2)
    if rec["token_ops"] and not hybrid_fvcore:  # a hybrid: not one of the CNNs, fvcore not needed
        return rec
    if fvcore_max and rec["macs"] > fvcore_max:  # too slow on the CPU here: left for a later --fvcore run
        rec["fvcore_skipped"] = True
        return rec
    t1 = time.perf_counter()
    from fvcore.nn import FlopCountAnalysis
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(rec["input_shape"])
    with torch.no_grad():
        fa = FlopCountAnalysis(model, x)
        fa.unsupported_ops_warnings(False)
        fa.uncalled_modules_warnings(False)
        rec["fvcore"] = int(fa.total())
        rec["fvcore_by_operator"] = {k: int(v) for k, v in sorted(fa.by_operator().items())}
        rec["fvcore_unsupported"] = {k: int(v) for k, v in sorted(fa.unsupported_ops().items())}
        if cpu_check:
            with FlopCounterMode(display=False) as counter:
                y = model(x)
            rec["flop_counter_cpu"] = int(counter.get_total_flops())
            rec["output_shape_cpu"] = shape_of(y)
    rec["seconds_cpu"] = round(time.perf_counter() - t1, 2)
    return rec


for name in open(sys.argv[1]).read().split():
    print("START", name, flush=True)
    t = time.perf_counter()
    try:
        rec = measure(name)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        rec = {"error": f"{type(exc).__name__}: {first}"[:500]}
    rec["seconds"] = round(time.perf_counter() - t, 2)
    print("RESULT", json.dumps({"name": name, **rec}), flush=True)
'''


def sizes(names: list[str]) -> dict[str, int]:
    """Parameter counts (meta device) for ordering, cached in SIZES."""
    from pathlib import Path

    path = Path(SIZES)
    cached = load_json(path)
    missing = [n for n in names if n not in cached]
    if missing:
        print(f"counting the parameters of {len(missing)} models for the order ...", flush=True)

        def keep(name: str, rec: dict) -> None:
            cached[name] = rec.get("params", 1 << 62)

        run_workers(WORKER, missing, 300, keep, ["sizes"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, cached)
    return cached


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated model names (default: every model of the CNN families)")
    ap.add_argument("--smallest", action="store_true", help="only the smallest model of each family")
    ap.add_argument("--redo", action="store_true", help="measure again the models already in the file")
    ap.add_argument("--cpu-check", action="store_true", help="also FlopCounterMode on the CPU run")
    ap.add_argument("--fvcore-max-gmacs", type=float, default=0,
                    help="skip fvcore's CPU run for models over this many GMACs (`fvcore_skipped`; 0: none)")
    ap.add_argument("--timeout", type=float, default=TIMEOUT)
    ap.add_argument("--hybrid", action="store_true", help=f"the hybrid set instead, into {HYBRID_OUT.name}; fvcore "
                    "only with --fvcore (which measures again the models named)")
    ap.add_argument("--fvcore", action="store_true", help="with --hybrid: fvcore's CPU run too")
    args = ap.parse_args()
    import fvcore
    import timm
    import torch

    families = hybrid_models() if args.hybrid else family_models()
    out = HYBRID_OUT if args.hybrid else OUT
    family_of = {n: f for f, names in families.items() for n in names}
    order = smallest_first(families, sizes(list(family_of)))
    if args.smallest:
        order = order[:len(families)]
    if args.models:
        wanted = args.models.split(",")
        unknown = [n for n in wanted if n not in family_of]
        if unknown:
            raise SystemExit(f"not in the CNN families: {', '.join(unknown)}")
        order = [n for n in order if n in wanted]
    data = load_json(out)
    models = data.get("models", {})
    todo = [n for n in order if args.redo or n not in models or "error" in models[n]
            or (models[n].get("fvcore_skipped") and not args.fvcore_max_gmacs)
            or (args.fvcore and "fvcore" not in models[n])]
    made_with = {"timm": timm.__version__, "torch": torch.__version__,
                 "fvcore": getattr(fvcore, "__version__", "0.1.5.post20221221"),
                 "python": ".".join(platform.python_version_tuple()[:2]), "device": "cpu / meta"}
    print(f"{len(todo)} of {len(order)} models to measure", flush=True)

    def keep(name: str, rec: dict) -> None:
        if "error" in rec and "error" not in models.get(name, {"error": ""}):  # a rerun that failed (killed, timed
            print(name, "kept as it was:", rec["error"], flush=True)  # out, say) keeps what was measured
            return
        models[name] = {"family": family_of[name], **rec}
        write_json(out, {"source": "tests/data/measure/timm_measured.py, see tests/data/README.md",
                         "made_with": made_with, "families": families,
                         "models": dict(sorted(models.items()))})
        brief = {k: rec[k] for k in ("params", "macs", "fvcore", "token_ops", "error", "seconds") if k in rec}
        print(name, json.dumps(brief), flush=True)

    extra = ["measure", "--cpu-check" if args.cpu_check else "-", str(int(args.fvcore_max_gmacs * 1e9)),
             *(["--hybrid"] if args.hybrid else []), *(["--fvcore"] if args.fvcore else [])]
    run_workers(WORKER, todo, args.timeout, keep, extra)


if __name__ == "__main__":
    sys.exit(main())
