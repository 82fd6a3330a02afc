# Measurement recipe (not run by the tests): see tests/data/torchvision_import.json for its output and
# tests/data/README.md for how it was run.
"""`archcalc import` on each of torchvision's 78 CNNs: one subprocess per model (a timeout each, one thread), the
model built with torchvision_measured.json's `build_kwargs`, by archcalc's own loader (on the meta device where the
constructor allows: the figures need no weights), imported
with archcalc.from_module at the published input, and the imported spec analyzed. Records per model: whether it
imported (or the error), the spec's params, buffers, MACs and fvcore FLOPs, its outputs, the importer's warnings,
whether params equal the published num_params and round(macs / 1e9, 3) the published GMACs, and the
in-process time of archcalc.from_module (`seconds_import`)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PUBLISHED = HERE.parent / "torchvision_published.json"
MEASURED = HERE.parent / "torchvision_measured.json"
OUT = HERE.parent / "torchvision_import.json"
TIMEOUT = 900

ONE = r'''
import json, sys
import torch
import torchvision

import archcalc

torch.set_num_threads(1)
name, family, shape = sys.argv[1], sys.argv[2], tuple(json.loads(sys.argv[3]))
from archcalc.torch.importer import load_model  # what `archcalc import` does: on the meta device where it can

kwargs = json.loads(sys.argv[4])  # torchvision_measured.json's build_kwargs: the same models
ref = (f"torchvision.models.segmentation:{name}" if family == "segmentation" else "torchvision.models:get_model")
if family != "segmentation":
    kwargs = {"name": name, **kwargs}
model, _ = load_model(ref, kwargs)
import time
t0 = time.perf_counter()
imported = archcalc.from_module(model, shape, name=f"torchvision/{name}")
seconds_import = round(time.perf_counter() - t0, 3)  # in-process: the trace and the spec, not torch's start-up
report = archcalc.analyze(imported.spec)
fvcore = archcalc.analyze(imported.spec, convention="fvcore").totals.flops
# The same trace written without block recognition: the blocks must not change a figure.
from archcalc.core import yamlsrc
from archcalc.core.spec import parse_spec
from archcalc.torch.importer.trace import trace_module
from archcalc.torch.importer.write import write_spec

model.eval()
flat_text = write_spec(trace_module(model, shape), f"torchvision/{name}", blocks=False)
flat = archcalc.analyze(parse_spec(yamlsrc.load(flat_text, "<flat>"), "<flat>"))
def key(r):
    t = r.totals
    return [t.params, t.buffers, t.macs, t.flops, t.activation_bytes, t.peak_bytes, t.saved_bytes, list(t.rf),
            [(row.name, row.kind, list(row.output), row.params, row.macs) for row in r.rows]]
spec_data = yamlsrc.load(imported.text, "<spec>")
print(json.dumps({"params": report.totals.params, "buffers": report.totals.buffers, "macs": report.totals.macs,
                  "fvcore": fvcore, "outputs": {k: list(report.graph.tensors[t].shape)
                                                for k, t in report.graph.outputs},
                  "rows": len(report.rows), "warnings": list(imported.warnings),
                  "blocks": sorted(spec_data.get("blocks") or {}), "repeats": imported.text.count("repeat: "),
                  "lines": len(imported.text.splitlines()), "flat_lines": len(flat_text.splitlines()),
                  "flat_equal": key(report) == key(flat), "seconds_import": seconds_import,
                  "torch": torch.__version__, "torchvision": torchvision.__version__}))
'''


def main() -> None:
    published = json.loads(PUBLISHED.read_text())["models"]
    built = {k: v["build_kwargs"] for k, v in json.loads(MEASURED.read_text())["models"].items()}
    only = set(sys.argv[1:])
    results = json.loads(OUT.read_text())["models"] if OUT.exists() and only else {}
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for name, entry in published.items():
        if only and name not in only:
            continue
        start = time.time()
        cmd = ["nice", "-n", "10", sys.executable, "-c", ONE, name, entry["family"], json.dumps(entry["input"]),
               json.dumps(built[name])]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env)
        except subprocess.TimeoutExpired:
            proc = None
        if proc is None:
            results[name] = {"imported": False, "error": f"timed out after {TIMEOUT} s"}
        elif proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            results[name] = {"imported": False, "error": lines[-1] if lines else f"exit {proc.returncode}"}
        else:
            got = json.loads(proc.stdout.strip().splitlines()[-1])
            got["imported"] = True
            got["params_equal_published"] = got["params"] == entry["num_params"]
            decimals = len(entry["gmacs"].split(".")[1]) if "." in entry["gmacs"] else 0  # as printed: "3.36"
            got["gmacs_equal_published"] = f"{round(got['macs'] / 1e9, decimals):.{decimals}f}" == entry["gmacs"]
            results[name] = got
        print(name, json.dumps({k: v for k, v in results[name].items() if k not in ("outputs", "warnings")}),
              f"{time.time() - start:.0f} s", flush=True)
        OUT.write_text(json.dumps({"source": "tests/data/measure/torchvision_import.py, see tests/data/README.md",
                                   "models": dict(sorted(results.items()))}, indent=1) + "\n")


if __name__ == "__main__":
    main()
