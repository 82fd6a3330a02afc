# Measurement recipe (not run by the tests): see tests/data/timm_import.json for its output and
# tests/data/README.md ("timm") for how it was run.
"""`archcalc import` on every model of timm_measured.json (timm's CNN families), as a user runs it:

    archcalc import timm:create_model --kwargs '{"model_name": NAME, "pretrained": false}' --input C,H,W

done in-process through the same library calls (archcalc's load_model builds the model on the meta device, then
archcalc.from_module at the measured input and archcalc.analyze of the imported spec), one long-lived worker for
many models, a timeout per model. Records per model: imported or not (the first line of the error, the class of the
module it names; for an fx control-flow error, which carries no module, the model's TF-"same" padding modules),
the spec's params, buffers, MACs, fvcore FLOPs and outputs, the importer's warnings, and the time
taken (building the model; importing it in-process; with --wall, a fresh `archcalc import` process).

    /work/ref/timm/venv/bin/python tests/data/measure/timm_import.py                 # every measured model
    ... timm_import.py --only-failed          # again only the models that failed last time
    ... timm_import.py --models resnet18,dla34 --archcalc /path/to/checkout      # another archcalc, a few models
    ... timm_import.py --hybrid [--only-failed]   # the hybrid set of timm_hybrid_measured.json instead

Writes tests/data/timm_import.json (merged: a partial run replaces only the models it ran) and a failure list,
grouped by first blocking cause, at /work/ref/timm/failures.txt (--failures)."""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from timm_common import DATA, load_json, run_workers, write_json

MEASURED = DATA / "timm_measured.json"
OUT = DATA / "timm_import.json"
FAILURES = "/work/ref/timm/failures.txt"
# --hybrid: the hybrid set (timm_common.HYBRID_FAMILIES and the CNN families' models with token ops), measured by
# `timm_measured.py --hybrid`
HYBRID_MEASURED = DATA / "timm_hybrid_measured.json"
HYBRID_OUT = DATA / "timm_hybrid_import.json"
HYBRID_FAILURES = "/work/ref/timm/hybrid_failures.txt"
TIMEOUT = 300

WORKER = r'''
import json, re, sys, time, warnings
warnings.filterwarnings("ignore")
import torch
import timm  # imported once here: the import's own time below is not timm's start-up

import archcalc
from archcalc.core.errors import ArchcalcError
from archcalc.torch.importer import load_model

torch.set_num_threads(1)
inputs = json.loads(open(sys.argv[2]).read())


def run(name):
    rec = {}
    t0 = time.perf_counter()
    model, _ = load_model("timm:create_model", {"model_name": name, "pretrained": False})
    t1 = time.perf_counter()
    rec["seconds_build"] = round(t1 - t0, 3)
    try:
        imported = archcalc.from_module(model, inputs[name], name=f"timm/{name}")
    except ArchcalcError as exc:
        rec["seconds_import"] = round(time.perf_counter() - t1, 3)
        lines = str(exc).strip().splitlines() or [""]
        rec["error"] = lines[0]
        same = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.endswith("Same")})
        if same and "control flow" in lines[0]:  # fx names no module: TF "same" padding's shape test, likely
            rec["same_padding_modules"] = same
        at = re.search(r" at (?!the top level)([\w.]+) \(", lines[0])
        if at:
            try:
                rec["error_class"] = type(model.get_submodule(at.group(1))).__name__
            except AttributeError:
                pass
        return rec
    rec["seconds_import"] = round(time.perf_counter() - t1, 3)
    report = archcalc.analyze(imported.spec)
    rec.update(imported=True, params=report.totals.params, buffers=report.totals.buffers, macs=report.totals.macs,
               fvcore=archcalc.analyze(imported.spec, convention="fvcore").totals.flops,
               outputs={k: list(report.graph.tensors[t].shape) for k, t in report.graph.outputs},
               rows=len(report.rows), lines=len(imported.text.splitlines()), warnings=list(imported.warnings))
    rec["seconds_analyze"] = round(time.perf_counter() - t1 - rec["seconds_import"], 3)
    return rec


for name in open(sys.argv[1]).read().split():
    print("START", name, flush=True)
    t = time.perf_counter()
    try:
        rec = run(name)
    except Exception as exc:  # not archcalc's refusal: a bug (or the model cannot be built); recorded as such
        first = (str(exc).strip().splitlines() or [""])[0]
        rec = {"error": f"{type(exc).__name__}: {first}"[:500], "crashed": True}
    rec.setdefault("imported", False)
    rec["seconds"] = round(time.perf_counter() - t, 3)
    print("RESULT", json.dumps({"name": name, **rec}), flush=True)
'''

# First blocking cause, from the class of the module the error names and the error line ("<class> | <line>"), first
# match wins; the groups follow issue 28's.
CAUSES = [
    ("timed out / crashed", r"timed out|worker died|^ \| [A-Za-z]*Error: "),
    ("BatchNormAct2d (norm + activation in one module)", r"^\w*BatchNormAct2d \||norm_act\.py"),
    ("LayerNorm wrappers (F.layer_norm)", r"^LayerNorm\w* \||F\.layer_norm|layer_norm"),
    ("EvoNorm / FilterResponseNorm", r"^(EvoNorm|FilterResponseNorm)\w* \||evo_norm\.py|filter_response_norm"),
    ("GroupNorm wrappers (F.group_norm)", r"^GroupNorm\w* \||group_norm"),
    ("RMS norm / SimpleNorm / GRN", r"^(RmsNorm\w*|SimpleNorm\w*|GlobalResponseNorm\w*) \||rms_norm"),
    ("weight standardisation (ScaledStdConv2d / StdConv2d)", r"^\w*StdConv2d\w* \||std_conv\.py"),
    ("TF 'same' padding (Conv2dSame, pad_same)", r"^\w*(Conv2dSame|PoolSame|Pool2dSame)\w* \||padding\.py|conv2d_same"),
    ("timm Linear (F.linear)", r"^Linear \||F\.linear|_nn\.linear"),
    ("blur pool / anti-aliasing", r"^(BlurPool2d|AntiAliasDownsampleLayer)\w* \||blur_pool"),
    ("fx control flow on a traced value", r"control flow|iteration over a Proxy|Proxy object"),
    ("arithmetic with a constant or a parameter (layer scale, affine, x / 2)", r"made without the input|constant|"
     r"a parameter|truediv|floordiv|_operator\.(sub|mul|add)|cannot import ([-+*/]|sub|mul|add|div)\b"),
    ("reshapes beyond the batch axis (tokens, radix split, channel shuffle)", r"\b(reshape|view|flatten|unflatten)\b"),
    ("split / chunk / slicing", r"\b(split|chunk|getitem|unbind)\b"),
]


def cause_of(rec: dict) -> str:
    text = f"{rec.get('error_class', '')} | {rec.get('error', '')}"
    if rec.get("same_padding_modules"):
        return "TF 'same' padding (Conv2dSame, pad_same)"
    for cause, pattern in CAUSES:
        if re.search(pattern, text):
            return cause
    op = re.match(r"cannot import ([^ ]+)", rec.get("error", ""))
    return f"other: {rec.get('error_class') or (op.group(1) if op else rec.get('error', '')[:60])}"


def failure_key(error: str) -> str:
    """What the test matches a refusal by: the op and the source place it names (not the module path, which
    differs from model to model), or the start of another message."""
    m = re.match(r"(cannot import \S+) at .*\(([^()]+:\d+)\)", error)
    return f"{m.group(1)} ... {m.group(2)}" if m else error[:80]


def write_failures(path: str, measured: dict, results: dict) -> None:
    rows = sorted((measured[n]["family"], n, cause_of(r), r.get("error", ""))
                  for n, r in results.items() if not r.get("imported"))
    counts = Counter(row[2] for row in rows)
    lines = [f"# timm CNN models that archcalc import refuses: {len(rows)} of {len(results)} tried "
             f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; tests/data/measure/timm_import.py)",
             "# first blocking cause: models"]
    lines += [f"#   {n:4d}  {cause}" for cause, n in counts.most_common()]
    lines += ["# family\tmodel\tcause\tfirst error line"]
    lines += ["\t".join(row) for row in rows]
    Path(path).write_text("\n".join(lines) + "\n")


def failed_table(results: dict) -> str:
    """tests/test_import_timm.py's FAILED, from timm_import.json: each refusal's key and the models it stops
    (to read through and paste after a rerun)."""
    groups: dict[str, list[str]] = {}
    for name, rec in sorted(results.items()):
        if not rec.get("imported"):
            groups.setdefault(failure_key(rec["error"]), []).append(name)
    out = ["FAILED: dict[str, tuple[str, ...]] = {"]
    for key, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        out.append(f"    {json.dumps(key)}: (  # {len(names)}")
        line = "       "
        for name in names:
            item = f" {json.dumps(name)},"
            if len(line) + len(item) > 116:
                out.append(line)
                line = "       "
            line += item
        out += [line, "    ),"]
    return "\n".join(out + ["}"])


def cli_wall(name: str, shape: list[int], env: dict[str, str]) -> float:
    """Seconds for a fresh `archcalc import` process (Python start-up, importing torch, timm and archcalc)."""
    cmd = ["nice", "-n", "10", str(Path(sys.executable).with_name("archcalc")), "import", "timm:create_model",
           "--kwargs", json.dumps({"model_name": name, "pretrained": False}), "--input", ",".join(map(str, shape)),
           "-o", os.devnull, "--force"]
    start = time.perf_counter()
    subprocess.run(cmd, capture_output=True, env=env, timeout=TIMEOUT)
    return round(time.perf_counter() - start, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", help="comma-separated model names (default: every CNN of timm_measured.json)")
    ap.add_argument("--only-failed", action="store_true", help="only the models that failed in timm_import.json")
    ap.add_argument("--missing", action="store_true", help="only the models not yet in timm_import.json")
    ap.add_argument("--smallest", action="store_true", help="only the smallest model of each family")
    ap.add_argument("--archcalc", help="a checkout of archcalc to import from (put first on PYTHONPATH)")
    ap.add_argument("--wall", action="store_true", help="also time a fresh `archcalc import` process per model")
    ap.add_argument("--hybrid", action="store_true", help=f"the hybrid set: {HYBRID_MEASURED.name} into "
                    f"{HYBRID_OUT.name} (failures at {HYBRID_FAILURES})")
    ap.add_argument("--failures", default=None, help=f"the failure list to write (default {FAILURES})")
    ap.add_argument("--timeout", type=float, default=TIMEOUT)
    ap.add_argument("--failed-table", action="store_true", help="print the test's FAILED table and stop")
    ap.add_argument("--failures-only", action="store_true", help="only rewrite the failure list from the JSON")
    args = ap.parse_args()
    global OUT
    measured_file, OUT = (HYBRID_MEASURED, HYBRID_OUT) if args.hybrid else (MEASURED, OUT)
    args.failures = args.failures or (HYBRID_FAILURES if args.hybrid else FAILURES)
    measured = load_json(measured_file)
    if args.failed_table:
        print(failed_table(load_json(OUT)["models"]))
        return
    if args.failures_only:
        write_failures(args.failures, measured["models"], load_json(OUT)["models"])
        return
    cnn = {n: r for n, r in measured["models"].items()  # (in --hybrid mode: every model of the hybrid set)
           if "error" not in r and (args.hybrid or not r["token_ops"])}
    order = list(cnn)
    if args.smallest:
        order = [min((n for n in cnn if cnn[n]["family"] == f), key=lambda n: (cnn[n]["params"], n))
                 for f in sorted({r["family"] for r in cnn.values()})]
    data = load_json(OUT)
    results = data.get("models", {})
    if args.only_failed:
        order = [n for n in order if n not in results or not results[n].get("imported")]
    if args.missing:
        order = [n for n in order if n not in results]
    if args.models:
        wanted = args.models.split(",")
        unknown = [n for n in wanted if n not in cnn]
        if unknown:
            raise SystemExit(f"not among the measured CNNs: {', '.join(unknown)}")
        order = [n for n in order if n in wanted]
    env = dict(os.environ)
    if args.archcalc:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(args.archcalc).resolve()),
                                                          env.get("PYTHONPATH")]))
    version = subprocess.run([sys.executable, "-c", "import archcalc, timm, torch; print(archcalc.__file__, "
                              "archcalc.__version__, timm.__version__, torch.__version__)"],
                             capture_output=True, text=True, env=env, check=True,
                             cwd=tempfile.gettempdir()).stdout.split()
    inputs = Path(f"/tmp/timm_inputs_{os.getpid()}.json")
    inputs.write_text(json.dumps({n: r["input_shape"][1:] for n, r in cnn.items()}))
    print(f"{len(order)} models; archcalc {version[1]} from {version[0]}", flush=True)

    def keep(name: str, rec: dict) -> None:
        if "error" in rec:  # the reference venv's own path is no part of the message
            rec["error"] = re.sub(r"/[^ ():]*/site-packages/", "", rec["error"])
        if args.wall:
            rec["seconds_cli"] = cli_wall(name, cnn[name]["input_shape"][1:], env)
        results[name] = rec
        done = [r for n, r in results.items() if n in cnn and "seconds_import" in r]
        times = sorted(r["seconds_import"] for r in done)
        summary = {"tried": len(done), "imported": sum(1 for r in done if r["imported"]),
                   "seconds_import_median": statistics.median(times) if times else None,
                   "seconds_import_max": max(times) if times else None}
        write_json(OUT, {"source": "tests/data/measure/timm_import.py" + (" --hybrid" if args.hybrid else "")
                         + ", see tests/data/README.md",
                         "made_with": {"archcalc": version[1], "timm": version[2], "torch": version[3]},
                         "summary": summary, "models": dict(sorted(results.items()))})
        write_failures(args.failures, cnn, {n: r for n, r in results.items() if n in cnn})
        brief = {k: rec[k] for k in ("imported", "error", "seconds_import", "seconds_cli") if k in rec}
        print(name, json.dumps(brief), flush=True)

    try:
        run_workers(WORKER, order, args.timeout, keep, [str(inputs)], env)
    finally:
        inputs.unlink()


if __name__ == "__main__":
    sys.exit(main())
