# Measurement recipe (not run by the tests): see tests/data/memtracker_step.json for its output and
# tests/data/README.md for how it was run.
"""One training step of torchvision's ResNet-18 (batch 16) and ResNet-50 (batch 8) under PyTorch's own MemTracker
(torch.distributed._tools.mem_tracker) in FakeTensor mode on the CPU: the model, an Adam optimizer and the input
made as fake tensors, `track_external(model, optimizer, input)`, then inside the tracker zero_grad(set_to_none=True),
a training-mode forward, the sum of the output as the loss, backward, optimizer.step(). Records the tracker's peak
(its "Total", exact bytes on the CPU: no allocator rounding there) for the first step (Adam creates its state inside
it) and for the second (one untracked step before it), beside archcalc's step peak (core.training.step_peaks,
device cpu) of the matching bundled spec. Run with the worktree first on the path:
    PYTHONPATH=$PWD python tests/data/measure/memtracker_step.py > tests/data/memtracker_step.json
"""

import json
import sys

import torch
import torchvision
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.distributed._tools.mem_tracker import MemTracker

from archcalc.core.analyze import analyze
from archcalc.core.training import step_peaks

CASES = (("resnet18", "torchvision/resnet18", 16), ("resnet50", "torchvision/resnet50", 8))


def tracked_peak(name: str, batch: int, first: bool) -> dict:
    with FakeTensorMode():
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 3, 224, 224)
        model.train()

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            model(x).sum().backward()
            optimizer.step()

        if not first:
            step()
        tracker = MemTracker()
        tracker.track_external(model, optimizer, x)
        with tracker as mt:
            step()
        peak = mt.get_tracker_snapshot("peak")
        (device, snap), = peak.items()
        return {"device": str(device), "peak": snap["Total"],
                "by_kind": {str(getattr(k, "value", k)): v for k, v in snap.items() if k != "Total"}}


def main() -> None:
    out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "cases": []}
    for name, spec, batch in CASES:
        report = analyze(spec, batch=batch, device="cpu")
        later, first = step_peaks(report, "adam")
        for is_first, predicted in ((True, first), (False, later)):
            measured = tracked_peak(name, batch, is_first)
            out["cases"].append({"model": name, "spec": spec, "batch": batch, "optimizer": "adam",
                                 "step": "first" if is_first else "second", "memtracker": measured,
                                 "archcalc": {"peak": predicted.peak, "phase": predicted.phase, "op": predicted.op},
                                 "difference": predicted.peak - measured["peak"]})
            print(out["cases"][-1], file=sys.stderr, flush=True)
    json.dump(out, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
