# Measurement recipe (not run by the tests): see tests/data/ultralytics_measured.json for its output and
# tests/data/README.md for how it was run.
"""Ultralytics' YOLO models built from their own model YAML (no weights: `DetectionModel("yolov8n.yaml")` and the
task's model class), one subprocess per model, one thread, on the CPU. Records per model: parameters, gradients
(parameters with requires_grad), float and int buffers, the summary line Ultralytics itself prints (`model.info()`:
its parameter count and its thop GFLOPs at imgsz 640, stride-extrapolated) before and after `fuse()`, thop's own
count at the model's input (unfused and fused; Ultralytics prints 2 x it as GFLOPs),
FlopCounterMode's total in eval mode and in train mode at the model's input (batch 1; MACs = FLOPs / 2: it counts
2 per multiply-accumulate of convolution and matmul), and the output shapes of both modes."""

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "ultralytics_measured.json"

# (family, task, yaml stem without the scale letter, input size)
FAMILIES = [
    ("yolov8", "detect", "yolov8", 640),
    ("yolo11", "detect", "yolo11", 640),
    ("yolov8-seg", "segment", "yolov8-seg", 640),
    ("yolo11-seg", "segment", "yolo11-seg", 640),
    ("yolov8-pose", "pose", "yolov8-pose", 640),
    ("yolo11-pose", "pose", "yolo11-pose", 640),
    ("yolov8-cls", "classify", "yolov8-cls", 224),
    ("yolo11-cls", "classify", "yolo11-cls", 224),
    ("yolov5u", "detect", "yolov5", 640),
    ("yolo12", "detect", "yolo12", 640),
    ("yolov3u", "detect", "yolov3", 640),  # one scale (depth and width multiples 1.0, no scales table)
]

ONE = r'''
import io, json, logging, sys
import torch
from torch.utils.flop_counter import FlopCounterMode
torch.set_num_threads(1)
from ultralytics.nn import tasks
from ultralytics.utils import LOGGER

stem, task, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
cls = {"detect": tasks.DetectionModel, "segment": tasks.SegmentationModel, "pose": tasks.PoseModel,
       "classify": tasks.ClassificationModel}[task]
stream = io.StringIO()
handler = logging.StreamHandler(stream)
LOGGER.addHandler(handler)
torch.manual_seed(0)
model = cls(f"{stem}.yaml", verbose=True)
printed = [line for line in stream.getvalue().splitlines() if "summary" in line]
params = sum(p.numel() for p in model.parameters())
grads = sum(p.numel() for p in model.parameters() if p.requires_grad)
fbuf = sum(b.numel() for b in model.buffers() if b.is_floating_point())
ibuf = sum(b.numel() for b in model.buffers() if not b.is_floating_point())
x = torch.randn(1, 3, size, size)

def shapes(o):
    if isinstance(o, torch.Tensor):
        return list(o.shape)
    if isinstance(o, dict):
        return {k: shapes(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [shapes(v) for v in o]
    return repr(o)

out = {}
for mode in ("eval", "train"):
    model.train(mode == "train")
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        y = model(x)
    flops = counter.get_total_flops()
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    out[mode] = {"flop_counter": flops, "macs": flops // 2, "by_operator": by_op, "output": shapes(y)}
model.eval()
import copy, thop  # ultralytics-thop, what model.info() uses: its count at the full input, unfused and fused
thop_macs = thop.profile(copy.deepcopy(model), inputs=[x], verbose=False)[0]
fused = copy.deepcopy(model).fuse(verbose=False)
thop_fused = thop.profile(fused, inputs=[x], verbose=False)[0]
stream.seek(0)
stream.truncate(0)
model.fuse(verbose=True)
fused_printed = [line for line in stream.getvalue().splitlines() if "summary" in line]
print(json.dumps({"params": params, "gradients": grads, "float_buffers": fbuf, "int_buffers": ibuf,
                  "input": [3, size, size], "printed": printed, "printed_fused": fused_printed,
                  "thop_macs": int(thop_macs), "thop_macs_fused": int(thop_fused),
                  "flop_counter_eval": out["eval"], "flop_counter_train": out["train"]}))
'''


def main() -> None:
    # This file is named ultralytics.py: its own folder must not shadow the package.
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    import torch
    import ultralytics

    result = {"versions": {"ultralytics": ultralytics.__version__, "torch": torch.__version__,
                           "python": sys.version.split()[0]}, "models": {}}
    only = sys.argv[1:]
    if OUT.exists():
        result["models"] = json.loads(OUT.read_text())["models"]
    for family, task, stem, size in FAMILIES:
        if only and family not in only:
            continue
        for scale in ("nsmlx" if family != "yolov3u" else [""]):
            name = f"{stem}{scale}" if "-" not in stem else stem.replace("-", f"{scale}-", 1)
            run = subprocess.run([sys.executable, "-c", ONE, name, task, str(size)], capture_output=True, text=True,
                                 timeout=1800)
            if run.returncode:
                result["models"][name] = {"error": run.stderr[-2000:]}
                print(name, "ERROR", run.stderr[-500:], flush=True)
                continue
            entry = json.loads(run.stdout.strip().splitlines()[-1])
            result["models"][name] = {"family": family, "task": task, "scale": scale or None, **entry}
            print(name, entry["params"], entry["flop_counter_eval"]["macs"], entry["printed"], flush=True)
            OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    OUT.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
