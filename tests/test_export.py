"""`export`: the generated source, imported in a fresh process that has only torch, rebuilds the same network.

One subprocess checks many exports (importing torch is the slow part): for each it loads the exported file, calls
build_model(), loads the state_dict saved from archcalc's own module (strict: same names and shapes), and writes
back the parameter count, the module's repr (classes and constructor arguments) and the output on a saved input.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import example_spec
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.kinds import REGISTRY
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec
from archcalc.torch.build import build_module
from archcalc.torch.export import export_source

runner = CliRunner()

CHECKER = r'''
import importlib.util, json, sys
import torch

results = {}
for case in json.loads(sys.argv[1]):
    spec = importlib.util.spec_from_file_location("exported_" + case["id"], case["source"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.build_model()
    model.load_state_dict(torch.load(case["state"]), strict=True)
    with torch.no_grad():
        y = model(*torch.load(case["input"]))
    torch.save(y, case["output"])
    results[case["id"]] = {"params": sum(p.numel() for p in model.parameters()), "repr": repr(model),
                           "frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
                           "spec_name": mod.SPEC_NAME, "training": model.training}
print(json.dumps(results))
'''

COVERAGE = """
name: every custom module
input: [4, 13, 11]
layers:
  - conv: {out: 8, kernel: [6, 3], stride: [5, 2], padding: same}   # AsymmetricPadConv
  - maxpool: {kernel: 2, stride: 2, padding: same, ceil_mode: true}   # PaddedPool (-inf)
  - parallel:
      - [conv: {out: 4, kernel: 1, trainable: false}]
      - [avgpool: {kernel: 2, stride: 1, padding: same}]             # PaddedPool (zeros)
      - []
    merge: concat
  - residual:
      - conv: {out: 16, kernel: 3, padding: 1, bias: false}
      - batchnorm
      - prelu: {num_parameters: 16}
    shortcut: projection
    after: [relu: {inplace: true}]
  - parallel: [[leaky_relu], [elu], [gelu: {approximate: tanh}]]
    merge: add
  - bias: {per: position}
  - maxout: {pieces: 2}
  - upsample: {scale: 2, mode: linear}
  - zeropad: {padding: [[0, 1], [2, 0]]}
  - groupnorm: {groups: 2}
  - lrn: {size: 3}
  - conv_transpose: {out: 4, kernel: 3, stride: 2, padding: 1, output_padding: 1}
  - adaptive_avgpool: {size: [3, 2]}
  - flatten
  - dropout: {p: 0.2}
  - linear: {out: 7}
  - softmax
"""


def _cases(tmp_path: Path, reports: dict[str, object]) -> list[dict[str, str]]:
    cases = []
    for i, (case_id, report) in enumerate(reports.items()):
        torch.manual_seed(i)
        model = build_module(report)  # type: ignore[arg-type]
        graph = report.graph  # type: ignore[attr-defined]
        x = tuple(torch.randn(2, *(report.input if j == 0 else graph.tensors[t].shape))  # type: ignore
                  for j, (_, t) in enumerate(graph.inputs))
        with torch.no_grad():
            expected = model(*x)
        d = tmp_path / f"case{i}"
        d.mkdir()
        (d / "model.py").write_text(export_source(report), encoding="utf-8")  # type: ignore[arg-type]
        torch.save(model.state_dict(), d / "state.pt")
        torch.save(x, d / "input.pt")
        cases.append({"id": str(i), "name": case_id, "source": str(d / "model.py"), "state": str(d / "state.pt"),
                      "input": str(d / "input.pt"), "output": str(d / "out.pt"), "expected": expected,
                      "params": sum(p.numel() for p in model.parameters()), "repr": repr(model),
                      "frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
                      "spec_name": report.name})  # type: ignore[attr-defined]
    return cases


def _run_checker(tmp_path: Path, cases: list[dict]) -> dict:  # type: ignore[type-arg]
    payload = json.dumps([{k: c[k] for k in ("id", "source", "state", "input", "output")} for c in cases])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # A fresh interpreter, started outside the checkout, must not be able to import archcalc at all.
    proc = subprocess.run([sys.executable, "-I", "-c", CHECKER, payload], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_same(tmp_path: Path, cases: list[dict]) -> None:  # type: ignore[type-arg]
    results = _run_checker(tmp_path, cases)
    for case in cases:
        got = results[case["id"]]
        assert got["params"] == case["params"], case["name"]
        # The same submodules (classes, constructor arguments, names); the top-level class differs: the export
        # writes the forward out as statements, the builder runs the op list.
        assert got["repr"].split("\n", 1)[1] == case["repr"].split("\n", 1)[1], case["name"]
        assert got["repr"].startswith("Network(") and case["repr"].startswith("SpecGraph(")
        assert got["frozen"] == case["frozen"], case["name"]
        assert got["spec_name"] == case["spec_name"]
        assert got["training"] is False
        got_y, want_y = torch.load(case["output"]), case["expected"]
        # The same weights and input in another process: equal to float32 rounding (bit-equality failed about one
        # run in three on the CPU, main included: the kernels' reduction order is not fixed across processes).
        # A different network (wiring, weights, an argument) is off by far more than these tolerances.
        if isinstance(want_y, dict):  # several outputs: a dict by output name, in the same order
            assert list(got_y) == list(want_y), case["name"]
            for k in want_y:
                torch.testing.assert_close(got_y[k], want_y[k], rtol=1e-5, atol=1e-6, msg=case["name"])
        else:
            torch.testing.assert_close(got_y, want_y, rtol=1e-5, atol=1e-6, msg=case["name"])


def test_exported_specs_rebuild_the_same_network(tmp_path: Path, write_spec) -> None:  # type: ignore[no-untyped-def]
    from test_graph import TWO_HEADS

    reports = {"coverage": analyze(load_spec(write_spec(COVERAGE))),
               "two_heads": analyze(load_spec(write_spec(TWO_HEADS, "two_heads.yaml"))),
               "unet": analyze(load_spec(bundled()["unet"], overrides={"base": "4"}), input_shape=(1, 188, 188)),
               "fpn": analyze(load_spec(bundled()["fpn_resnet50"]), input_shape=(3, 64, 64))}
    small = (32, 32)
    for name in ("resnet18", "lenet5", "torchvision/googlenet", "torchvision/mobilenet_v2", "nin",
                 "torchvision/densenet121", "torchvision/squeezenet1_1", "alphago_policy"):
        if name in bundled():
            spec = load_spec(bundled()[name])
            shape = spec.input if max(spec.input[1:]) <= 64 else (spec.input[0], *small)
            try:
                reports[name] = analyze(spec, input_shape=shape)
            except Exception:  # noqa: BLE001  the reduced input does not fit this spec: use its own
                reports[name] = analyze(spec)
    _assert_same(tmp_path, _cases(tmp_path, reports))


def test_every_kind_example_exports(tmp_path: Path) -> None:
    reports = {}
    for kind in REGISTRY.values():
        for i, ex in enumerate(kind.examples):
            shape, layers = example_spec(kind, ex)
            path = tmp_path / f"{kind.name}{i}.yaml"
            path.write_text(f"name: t\ninput: {shape}\nlayers:\n" + "".join(f"  - {x}\n" for x in layers))
            reports[f"{kind.name}-{i}"] = analyze(load_spec(path))
    _assert_same(tmp_path, _cases(tmp_path, reports))


# ---- safety ---------------------------------------------------------------------------------------------------

EVIL_NAME = 'evil """ \'\'\' \\\n"); open("PWNED", "w")  # \r\n__import__("os").system("touch PWNED")\u2028x'
ADVERSARIAL = """
name: {name}
description: |
  \"\"\"); open("PWNED", "w"); (\"\"\"
  __import__('os').system('touch PWNED')
source: "x\\r\\nopen('PWNED', 'w')"
input: [3, 8, 8]
layers:
  - conv: {{out: 4, kernel: 3, name: class}}
  - relu: {{name: import}}
  - sequence:
      - relu: {{name: __import__}}
      - identity: {{name: def}}
    name: lambda
  - parallel: [[conv: {{out: 2, kernel: 1, name: return}}], []]
    name: None
  - residual: [conv: {{out: 6, kernel: 1, name: model}}]
    name: m_lambda
  - sequence: [relu: {{name: self}}]
    name: m-lambda
  - linear: {{out: 3, name: __builtins__}}
"""


def test_adversarial_spec_exports_safe_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text(ADVERSARIAL.format(name=json.dumps(EVIL_NAME)), encoding="utf-8")
    spec = load_spec(path)
    assert spec.name == EVIL_NAME.strip()
    report = analyze(spec)
    source = export_source(report)
    tree = ast.parse(source)  # it compiles
    compile(source, "model.py", "exec")
    # Nothing from the spec became code: no call can reach open / os / __import__ / eval / exec.
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert not names & {"open", "os", "__import__", "eval", "exec", "system"}
    assert not any(isinstance(n, ast.Attribute) and n.attr == "system" for n in ast.walk(tree))
    # Top level: imports of torch / typing helpers, definitions, constants, and the __main__ guard only.
    for stmt in tree.body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module]
            allowed = ("torch", "torch.nn.functional", "__future__", "collections.abc", "typing")
            assert all(m in allowed for m in mods), mods
        else:
            assert isinstance(stmt, (ast.Assign, ast.FunctionDef, ast.ClassDef, ast.If)), ast.dump(stmt)[:80]
    assert source.isascii()
    # The name survives as data, exactly.
    constants = {n.targets[0].id: n.value for n in tree.body if isinstance(n, ast.Assign)
                 and isinstance(n.targets[0], ast.Name)}
    assert ast.literal_eval(constants["SPEC_NAME"]) == EVIL_NAME.strip()
    # And running it does no harm and rebuilds the network (keyword-named modules included).
    cases = _cases(tmp_path, {"evil": report})
    _assert_same(tmp_path, cases)
    assert not (tmp_path / "PWNED").exists()
    results = _run_checker(tmp_path, cases)
    for layer in ("class", "import", "lambda.__import__", "lambda.def", "None.branch1.return", "m_lambda.model",
                  "m-lambda.self", "__builtins__"):
        assert f"({layer.split('.')[-1]})" in results["0"]["repr"]


@pytest.mark.parametrize("bad", ["a'b", 'a"b', "a\nb", "a b", "a.b", "a;b", "x)\nimport os"])
def test_unsafe_layer_names_are_rejected(bad: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: t\ninput: [3, 8, 8]\nlayers:\n  - conv: {{out: 4, kernel: 3, name: {json.dumps(bad)}}}\n")
    result = runner.invoke(app, ["export", str(path), "-o", str(tmp_path / "m.py")])
    assert result.exit_code == 2, result.output
    assert "layer name" in result.stderr
    assert not (tmp_path / "m.py").exists()


def test_cli_export(tmp_path: Path, write_spec) -> None:  # type: ignore[no-untyped-def]
    path = write_spec("name: t\ninput: [1, 8, 8]\nlayers:\n  - conv: {out: 2, kernel: 3}\n")
    out = tmp_path / "model.py"
    result = runner.invoke(app, ["export", str(path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "def build_model()" in out.read_text()
    again = runner.invoke(app, ["export", str(path), "-o", str(out)])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert runner.invoke(app, ["export", str(path), "-o", str(out), "--force"]).exit_code == 0
    to_stdout = runner.invoke(app, ["export", str(path), "--input", "1x10x10"])
    assert to_stdout.exit_code == 0 and "INPUT_SHAPE = (1, 10, 10)" in to_stdout.stdout
    assert runner.invoke(app, ["export", "no_such_spec"]).exit_code == 2
