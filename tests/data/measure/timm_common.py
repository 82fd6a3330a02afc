# Shared by timm_measured.py and timm_import.py (measurement recipes, not run by the tests; see tests/data/README.md,
# section "timm"). Runs in the reference virtualenv that has timm; never imported by archcalc or its tests.
"""timm's CNN families, the models in them, and a runner that works through a list of models in one long-lived
worker subprocess (importing timm takes seconds; a subprocess per model would spend most of the run on that), with a
timeout per model: a worker that hangs or dies is killed and a fresh one goes on with the next model."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE.parent

# timm's model-definition modules (timm/models/<module>.py) whose networks are convolutional: convolutions, norms,
# pooling, element-wise ops and channel gating (squeeze-excite, ECA, CBAM-like spatial gates, selective-kernel and
# split attention: pooled statistics through convs or linears, weighed by a softmax over branches), and no token
# mixing (no attention matmul, no recurrent op, no linear or layer norm on a (batch, tokens, channels) tensor). Each
# measured model is also checked by that rule at the ATen level (timm_measured.json's `token_ops`): a model of one
# of these modules that breaks it (mobilenetv4_hybrid_*, caformer_*, fastvit_sa*/mci*, a global-context or
# self-attention ResNet variant) is a hybrid and left out of the CNN set. The family is the module.
CNN_FAMILIES = (
    "byobnet", "convmixer", "convnext", "cspnet", "cspnext", "densenet", "dla", "dpn", "efficientnet", "fasternet",
    "fastvit", "ghostnet", "hardcorenas", "hgnet", "hrnet", "inception_next", "inception_resnet_v2", "inception_v3",
    "inception_v4", "lcnetv2", "mambaout", "metaformer", "mobilenetv3", "nasnet", "nfnet", "pnasnet", "rdnet",
    "regnet", "repghost", "repvit", "res2net", "resnest", "resnet", "resnetv2", "rexnet", "selecsls", "senet",
    "sknet", "starnet", "tresnet", "vgg", "vovnet", "xception", "xception_aligned",
)

# timm's hybrid families (issue 30): modules whose networks mix convolutions and attention as designed parts. The
# rule, read from each module's source: a module is a hybrid family when its models run attention (a softmax-weighted,
# or linear-kernel, product over tokens: at the ATen level a batched matmul or scaled_dot_product_attention, the
# `token_ops` of timm_measured.py) AND convolutions that mix space in the body, beyond a patch-embedding stem (conv
# stages or blocks, a conv in the FFN, a convolutional position encoding or downsampling). Left out: transformers
# whose only conv is the patch embedding or a conv stem (vision_transformer, deit, beit, eva, cait, convit, crossvit,
# swin_*, hiera*, volo, mvitv2: pooling inside attention, issue 30's `mvit`), and token mixers that are not
# attention (mlp_mixer, sequencer: LSTMs, focalnet: modulation, efficientvim: a state-space mixer). A model of one of
# these modules that runs no token op is no hybrid (it is counted as such by the measurement, not tried).
HYBRID_FAMILIES = (
    "byoanet", "coat", "cpubone", "csatv2", "davit", "edgenext", "efficientformer", "efficientformer_v2",
    "efficientvit_mit", "efficientvit_msra", "gcvit", "iformer", "levit", "lowformer", "maxxvit", "mobilenetv5",
    "mobilevit", "nextvit", "pit", "pvt_v2", "shvit", "swiftformer", "tiny_vit", "twins", "visformer", "vitamin",
    "vision_transformer_hybrid", "xcit",
)
# ... and the models of the CNN families that hold token ops (timm_measured.json's `token_ops`; tests/
# test_import_timm.py's HYBRIDS): MobileNetV4's hybrids, CAFormer, FastViT's attention models, the global-context and
# bilinear-attention ResNets and the CLIP ResNets' attention pooling. Both together are the hybrid set.


def hybrid_models() -> dict[str, list[str]]:
    """The hybrid set by family: every model of HYBRID_FAMILIES, and the CNN families' models with token ops (from
    timm_measured.json), in timm's order."""
    import timm
    from timm.models import _registry

    cnn = load_json(DATA / "timm_measured.json").get("models", {})
    out: dict[str, list[str]] = {f: [] for f in HYBRID_FAMILIES}
    for name in timm.list_models():
        module = _registry._model_to_module[name]
        if module in HYBRID_FAMILIES or cnn.get(name, {}).get("token_ops"):
            out.setdefault(module, []).append(name)
    return out


def family_models() -> dict[str, list[str]]:
    """Every model timm registers in each CNN family (all sizes; names without pretrained tags), in timm's order."""
    import timm
    from timm.models import _registry

    out: dict[str, list[str]] = {f: [] for f in CNN_FAMILIES}
    for name in timm.list_models():
        module = _registry._model_to_module[name]
        if module in out:
            out[module].append(name)
    return out


def smallest_first(models: dict[str, list[str]], params: dict[str, int]) -> list[str]:
    """The smallest model (fewest parameters) of every family first, then the rest by size: quick feedback first."""
    first = [min(names, key=lambda n: (params.get(n, 1 << 62), n)) for names in models.values() if names]
    rest = sorted((n for names in models.values() for n in names if n not in first),
                  key=lambda n: (params.get(n, 1 << 62), n))
    return first + rest


def run_workers(code: str, names: list[str], timeout: float, handle: Callable[[str, dict], None],
                extra_args: Iterable[str] = (), env: dict[str, str] | None = None) -> None:
    """Run `code` (a Python program reading model names, one a line, from the file named by argv[1]) in a niced
    one-thread subprocess that prints `START <name>` before each model and `RESULT <json>` after it. Calls
    handle(name, result) for each; a model that takes over `timeout` seconds or kills the worker gets
    {"error": ...} and a fresh worker goes on after it."""
    env = dict(os.environ if env is None else env, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    todo, done = list(names), set()
    while todo:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
            f.write("\n".join(todo) + "\n")
            listing = f.name
        err = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen(["nice", "-n", "10", sys.executable, "-c", code, listing, *extra_args],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, start_new_session=True,
                                cwd=tempfile.gettempdir())  # not a checkout: `python -c` puts the cwd first
        lines: queue.Queue[str | None] = queue.Queue()

        def pump(stream=proc.stdout, out=lines) -> None:
            for line in stream:
                out.put(line)
            out.put(None)

        threading.Thread(target=pump, daemon=True).start()
        current, started, before = None, time.time(), len(done)
        try:
            while True:
                try:
                    line = lines.get(timeout=max(timeout - (time.time() - started), 0.1) if current else 600)
                except queue.Empty:
                    if current is None:
                        continue
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                    handle(current, {"error": f"timed out after {timeout:.0f} s", "seconds": round(timeout, 1)})
                    done.add(current)
                    break
                if line is None:  # the worker ended
                    proc.wait()
                    err.seek(0)
                    tail = [x for x in err.read().splitlines() if x.strip()]
                    why = tail[-1] if tail else f"worker exit {proc.returncode}"
                    if current is not None:  # ... inside a model: it crashed there
                        handle(current, {"error": f"worker died: {why}"[:500],
                                         "seconds": round(time.time() - started, 1)})
                        done.add(current)
                    elif len(done) == before:
                        raise SystemExit(f"the worker ended without measuring anything: {why}")
                    break
                if line.startswith("START "):
                    current, started = line[6:].strip(), time.time()
                elif line.startswith("RESULT "):
                    result = json.loads(line[7:])
                    name = result.pop("name")
                    handle(name, result)
                    done.add(name)
                    current = None
        finally:  # this process interrupted: the worker goes too
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        os.unlink(listing)
        err.close()
        todo = [n for n in todo if n not in done]


def load_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
