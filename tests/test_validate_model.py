"""`archcalc validate MODEL`: a PyTorch model itself run beside its imported spec's figures (issue 30: "make
`validate` measure the real module's count, so a disagreement is shown, never hidden").

The expected values are torch's own counts of the modules written here, and for the attention model the size of
what fvcore and the fused kernel leave out, written out from N, C and the heads (docs/conventions.md), never
archcalc's figures."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.cli.model import is_model_ref

runner = CliRunner()

CNN = textwrap.dedent("""
    from torch import nn

    INPUT_SHAPE = (3, 16, 16)


    def build_model():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 10))
""")

# N = 16 tokens of C = 48 channels, 4 heads: the patch embedding of a 32 x 32 image by an 8 x 8 conv.
ATTENTION = textwrap.dedent("""
    from torch import nn

    INPUT_SHAPE = (3, 32, 32)


    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 48, 8, 8)
            self.norm = nn.LayerNorm(48)
            self.attn = nn.MultiheadAttention(48, 4, batch_first=True)
            self.head = nn.Linear(48, 10)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            y = self.norm(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            return self.head(x[:, 0])


    def build_model():
        return Tiny()
""")


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return str(path)


def _checks(output: str) -> dict[str, dict]:
    return {c["quantity"]: c for c in json.loads(output)["checks"]}


def test_a_cnn_module_agrees_on_every_figure(tmp_path: Path) -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ref = _write(tmp_path, "cnn", CNN)
    result = runner.invoke(app, ["validate", ref, "--batch", "2", "--format", "json"])
    assert result.exit_code == 0, result.output
    checks = _checks(result.output)
    assert {q: c["ok"] for q, c in checks.items()} == dict.fromkeys(
        ("output_shape", "params", "buffers", "macs", "fvcore_flops", "saved_bytes"), True)
    # torch's own counts of the same module, independently
    namespace: dict = {}
    exec(CNN, namespace)
    model = namespace["build_model"]().eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(2, 3, 16, 16))
    assert checks["macs"]["measured"] == counter.get_total_flops() // 2
    assert checks["params"]["measured"] == sum(p.numel() for p in model.parameters())
    assert checks["buffers"]["measured"] == 8 + 8 + 1  # running mean and variance, the batch counter
    assert checks["output_shape"]["measured"] == [2, 10]


def test_attention_shows_what_the_counters_and_the_fused_kernel_leave_out(tmp_path: Path) -> None:
    ref = _write(tmp_path, "tiny", ATTENTION)
    result = runner.invoke(app, ["validate", ref, "--format", "json"])
    assert result.exit_code == 1, result.output  # shown, not hidden: the fvcore and saved-bytes checks disagree
    checks = _checks(result.output)
    n, c, heads = 16, 48, 4
    assert all(checks[q]["ok"] for q in ("output_shape", "params", "buffers", "macs"))
    # fvcore has no formula for scaled_dot_product_attention: it misses Q K^T and A V, 2 N^2 C
    fv = checks["fvcore_flops"]
    assert fv["predicted"] - fv["measured"] == 2 * n * n * c
    # torch's fused CPU kernel keeps a log-sum-exp per head and token instead of the h x N x N weights (float32)
    saved = checks["saved_bytes"]
    assert saved["predicted"] - saved["measured"] == 4 * (heads * n * n - heads * n)
    notes = " ".join(json.loads(result.output)["notes"])
    assert "fused attention" in notes and "scaled_dot_product_attention" in notes
    # the plain counter's blind spot, by its size: in a no_grad eval forward nn.MultiheadAttention takes its fused
    # fast path, counted 0 whole: the four projections (4 N C^2 MACs) and the two products (2 N^2 C), 2 FLOPs each
    assert f"{2 * (4 * n * c * c + 2 * n * n * c):,} fewer than under the math attention kernel" in notes


def test_a_package_callable_and_its_kwargs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "vm_models.py").write_text(CNN.replace("def build_model():", "def build_model(classes=10):")
                                           .replace("nn.Linear(16, 10)", "nn.Linear(16, classes)"))
    monkeypatch.syspath_prepend(str(tmp_path))
    result = runner.invoke(app, ["validate", "vm_models:build_model", "--input", "3x20x20", "--kwargs",
                                 '{"classes": 7}', "--format", "json"])
    assert result.exit_code == 0, result.output
    assert _checks(result.output)["output_shape"]["measured"] == [1, 7]
    assert json.loads(result.output)["input"] == [3, 20, 20]


@pytest.mark.parametrize("args, message", [
    (["--device", "meta"], "validated on the CPU in float32"),
    (["--set", "w=2"], "without --set"),
    (["--input", "3x0x4"], "--input"),
])
def test_options_that_apply_to_a_spec_only_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["validate", _write(tmp_path, "cnn", CNN), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_model_reference_is_told_from_a_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for ref in ("torchvision.models:vit_b_16", "timm:create_model", "net.py", "net.py:build", "a/b/net.py"):
        assert is_model_ref(ref), ref
    for ref in ("vgg16", "torchvision/resnet50", "specs/x.yaml", "C:spec.yaml", "a:b:c"):
        assert not is_model_ref(ref), ref
    (tmp_path / "pkg:net").write_text("name: x\n")  # a spec file with a colon in its name stays a spec
    assert not is_model_ref("pkg:net")
