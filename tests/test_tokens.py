"""Token layouts and attention: torchvision's vision transformers against figures measured on the real models
(tests/data/torchvision_vit.json; torchvision is not imported here), hand-written torch modules against the same
layers written as a spec, the receptive field measured by gradient, the memory autograd keeps, and the errors a
token layout brings (a grid layer on tokens, a token layer on a grid)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import load_text
from measure import saved_bytes
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from archcalc.cli.app import app
from archcalc.core.analyze import analyze
from archcalc.core.receptive import seen
from archcalc.core.resolve import bundled
from archcalc.core.spec import load_spec

DATA = json.loads((Path(__file__).parent / "data" / "torchvision_vit.json").read_text(encoding="utf-8"))
VITS = sorted(k for k in DATA if k != "versions")
# torchvision/models/vision_transformer.py's builders (patch_size, num_layers, hidden_dim, mlp_dim), written out
ARCH = {"vit_b_16": (16, 12, 768, 3072), "vit_b_32": (32, 12, 768, 3072), "vit_l_16": (16, 24, 1024, 4096),
        "vit_l_32": (32, 24, 1024, 4096), "vit_h_14": (14, 32, 1280, 5120)}
runner = CliRunner()


def _spec(name: str, size: int = 224):  # type: ignore[no-untyped-def]
    return analyze(load_spec(bundled()[f"torchvision/{name}"]), input_shape=(3, size, size))


def _fvcore(name: str, size: int = 224) -> int:
    return analyze(load_spec(bundled()[f"torchvision/{name}"]), input_shape=(3, size, size),
                   convention="fvcore").totals.flops


def test_every_torchvision_vit_was_measured() -> None:
    assert VITS == sorted(ARCH)
    assert {n for n in bundled() if n.startswith("torchvision/vit_")} == {f"torchvision/{m}" for m in ARCH}


@pytest.mark.parametrize("name", VITS)
def test_vit_spec_is_torchvisions_model(name: str) -> None:
    m = DATA[name]
    report = _spec(name)
    t = report.totals
    assert t.params == m["params"] == m["published_params"]
    assert t.buffers == m["float_buffers"] + m["int_buffers"] == 0
    assert [1, *t.output] == m["output_shape"]
    assert f"{t.macs / 1e9:.3f}" == m["published_gmacs"]  # torchvision's _ops: GMACs, 3 decimals
    # FlopCounterMode with autograd on and the math attention kernel counts every product: 2 per MAC.
    assert 2 * t.macs == m["flop_counter_math"]


@pytest.mark.parametrize("name", VITS)
def test_every_published_weights_entry_at_its_size(name: str) -> None:
    for weights, w in DATA[name]["published_weights"].items():
        t = _spec(name, w["crop_size"]).totals
        assert (t.params, f"{t.macs / 1e9:.3f}") == (w["num_params"], w["gmacs"]), weights


@pytest.mark.parametrize("name", VITS)
def test_what_torchs_counters_miss_on_torchvisions_vit(name: str) -> None:
    """The disagreements, stated: in a plain no_grad forward nn.MultiheadAttention takes its fused fast path
    (aten._native_multi_head_attention), which FlopCounterMode counts as 0 -- the projections and both products of
    every layer; fvcore, tracing with autograd on, counts the projections but skips
    aten::scaled_dot_product_attention (Q K^T and A V: 2 N^2 C per layer)."""
    patch, depth, c, _ = ARCH[name]
    n = (224 // patch) ** 2 + 1
    m = DATA[name]
    t = _spec(name).totals
    assert m["flop_counter_no_grad"] == 2 * (t.macs - depth * (4 * n * c * c + 2 * n * n * c))
    assert m["fvcore"] == _fvcore(name) - depth * 2 * n * n * c
    assert m["fvcore_unsupported"]["aten::scaled_dot_product_attention"] == depth


@pytest.mark.parametrize("name", VITS)
def test_archcalc_import_of_torchvisions_vit_is_exact(name: str) -> None:
    """`archcalc import` of torchvision's own model (run by the measurement script on the real model): the
    measured params, output and FlopCounterMode MACs (math kernel), and the same figures as the bundled spec."""
    m, imported = DATA[name], DATA[name]["import"]
    t = _spec(name).totals
    assert imported["params"] == m["params"] and imported["buffers"] == 0
    assert 2 * imported["macs"] == m["flop_counter_math"]
    assert [1, *imported["output"]] == m["output_shape"]
    assert (imported["macs"], imported["fvcore"]) == (t.macs, _fvcore(name))
    assert {"to_tokens", "class_token", "pos_embed", "self_attention", "take_token"} <= set(imported["kinds"])


# ---- hand-written modules ----------------------------------------------------------------------------------------


class TinyViT(nn.Module):
    """A small ViT written from plain torch.nn, as torchvision writes its VisionTransformer."""

    def __init__(self, c: int = 32, heads: int = 4, patch: int = 4, size: int = 16, depth: int = 2,
                 classes: int = 10, bias: bool = True) -> None:
        super().__init__()
        n = (size // patch) ** 2
        self.conv_proj = nn.Conv2d(3, c, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, c))
        self.pos_embedding = nn.Parameter(torch.randn(1, n + 1, c))
        self.ln1 = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for _ in range(depth))
        self.attn = nn.ModuleList(nn.MultiheadAttention(c, heads, bias=bias, batch_first=True) for _ in range(depth))
        self.ln2 = nn.ModuleList(nn.LayerNorm(c, eps=1e-6) for _ in range(depth))
        self.mlp = nn.ModuleList(nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, c))
                                 for _ in range(depth))
        self.ln = nn.LayerNorm(c, eps=1e-6)
        self.head = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        for ln1, attn, ln2, mlp in zip(self.ln1, self.attn, self.ln2, self.mlp):
            y = ln1(x)
            x = x + attn(y, y, y, need_weights=False)[0]
            x = x + mlp(ln2(x))
        return self.head(self.ln(x)[:, 0])


def _tiny_spec(c: int = 32, heads: int = 4, patch: int = 4, size: int = 16, depth: int = 2, classes: int = 10,
               bias: bool = True) -> str:
    return f"""
name: tiny-vit
input: [3, {size}, {size}]
defaults:
  layernorm: {{eps: 0.000001}}
layers:
  - conv: {{out: {c}, kernel: {patch}, stride: {patch}}}
  - to_tokens
  - class_token
  - pos_embed
  - repeat: {depth}
    block:
      - residual: [layernorm, {{self_attention: {{num_heads: {heads}, bias: {str(bias).lower()}}}}}]
      - residual: [layernorm, {{linear: {{out: {2 * c}}}}}, gelu, {{linear: {{out: {c}}}}}]
  - layernorm
  - take_token
  - linear: {{out: {classes}}}
"""


@pytest.mark.parametrize(("heads", "bias"), [(1, True), (4, True), (8, False)])
def test_a_hand_written_vit_has_the_specs_params_and_macs(heads: int, bias: bool) -> None:
    torch.manual_seed(0)
    model = TinyViT(heads=heads, bias=bias)
    report = analyze(load_text(_tiny_spec(heads=heads, bias=bias)), batch=2)
    assert report.totals.params == sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 16, 16)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        y = model(x)  # autograd on: nn.MultiheadAttention's slow path, the math kernel's bmm's
    assert [2, *report.totals.output] == list(y.shape)
    assert 2 * report.totals.macs == counter.get_total_flops()
    # Written out: conv, then per layer 4 N C^2 + 2 N^2 C and the MLP's 2 x 2 N C^2, then the head (batch 2).
    n, c = 17, 32
    expected = 2 * (16 * c * 3 * 16 + 2 * (4 * n * c * c + 2 * n * n * c + 4 * n * c * c) + c * 10)
    assert report.totals.macs == expected


def test_attention_macs_do_not_depend_on_the_number_of_heads() -> None:
    """Q K^T is heads x N x N x (C / heads) multiply-accumulates: N^2 C whatever the split."""
    figures = {h: analyze(load_text(_tiny_spec(heads=h))).totals.macs for h in (1, 2, 4, 8)}
    assert len(set(figures.values())) == 1


def test_torchs_counters_on_its_own_attention_as_documented() -> None:
    """docs/conventions.md's table, on the installed torch: FlopCounterMode counts nothing of the CPU's fused
    attention (nn.MultiheadAttention's no_grad fast path; scaled_dot_product_attention's flash kernel for CPU)
    and counts the math kernel's two bmm's."""
    n, c, h = 9, 16, 4
    x = torch.randn(1, n, c)
    mha = nn.MultiheadAttention(c, h, batch_first=True).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as fast:
        mha(x, x, x, need_weights=False)
    assert fast.get_total_flops() == 0
    with FlopCounterMode(display=False) as slow:  # autograd on: projections counted, the fused product not
        mha(x, x, x, need_weights=False)
    assert slow.get_total_flops() == 2 * 4 * n * c * c
    q = k = v = torch.randn(1, h, n, c // h)
    with torch.no_grad(), FlopCounterMode(display=False) as fused:
        F.scaled_dot_product_attention(q, k, v)
    assert fused.get_total_flops() == 0
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math_path:
        F.scaled_dot_product_attention(q, k, v)
    assert math_path.get_total_flops() == 2 * 2 * n * n * c


def test_validate_measures_attention_and_sees_a_wrong_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """`validate` runs the built module under FlopCounterMode and fvcore: every check agrees; a self_attention
    rule that forgets the products disagrees on MACs (the built module's products are counted ops)."""
    from archcalc.core.kinds import REGISTRY
    from archcalc.core.kinds.base import Cost
    from archcalc.torch.validate import validate

    spec = load_text(_tiny_spec(depth=1))
    assert validate(spec, batch=2).ok
    kind = type(REGISTRY["self_attention"])
    real = kind.cost

    def forgets_products(self, a, inp, out):  # type: ignore[no-untyped-def]
        cost = real(self, a, inp, out)
        products = self.parts(inp)[1]
        return Cost(cost.params, cost.buffers, cost.int_buffers, cost.macs - products, cost.fvcore, cost.full)

    monkeypatch.setattr(kind, "cost", forgets_products)
    failed = {c.quantity for c in validate(spec, batch=2).failures}
    assert "macs" in failed


@pytest.mark.parametrize("batch", [1, 3])
def test_attention_keeps_the_same_bytes_at_every_batch(batch: int) -> None:
    """What the built module keeps for backward (q, contiguous k and v, the softmax weights, the joined heads),
    against autograd at batch 1 and 3 (tests/test_kind_rules.py checks batch 2)."""
    text = "name: a\ninput: [12, 5, 2]\nlayers:\n  - to_tokens\n  - self_attention: {num_heads: 3}\n"
    report = analyze(load_text(text), batch=batch, device="cpu", input_requires_grad=True)
    from archcalc.torch.modules import SelfAttention

    torch.manual_seed(0)
    x = torch.randn(batch, 10, 12).requires_grad_()
    assert report.totals.saved_bytes == saved_bytes(SelfAttention(12, 3), x)
    n, c = 10, 12
    assert report.totals.saved_bytes == 4 * batch * (n * c + 4 * n * c + 3 * n * n)  # input, 4 NC, h N^2


def test_a_frozen_attention_keeps_what_its_input_gradient_needs() -> None:
    """Frozen, after a trainable layer: q, k, v, the softmax weights (for the input's gradient), not its input nor
    the joined heads (kept for the projections' weights only)."""
    from archcalc.torch.build import build_module

    text = ("name: a\ninput: [12, 5, 2]\nlayers:\n  - to_tokens\n  - linear: {out: 12}\n"
            "  - self_attention: {num_heads: 3, trainable: false}\n")
    report = analyze(load_text(text), batch=2, device="cpu")
    torch.manual_seed(0)
    model = build_module(report)
    for p in model.get_submodule("attn1").parameters():
        p.requires_grad_(False)
    n, c = 10, 12
    # the linear keeps its input (the to_tokens view of the batch: 2 x 120 elements), the attention 3NC + hN^2
    assert report.totals.saved_bytes == saved_bytes(model, torch.randn(2, 12, 5, 2)) == 4 * 2 * (
        n * c + 3 * n * c + 3 * n * n)


# ---- receptive field ----------------------------------------------------------------------------------------------


def _token_rf(text: str, token: int) -> tuple[int, int]:
    """The rows and columns of the input one output token depends on (by gradient), on the built module."""
    from archcalc.torch.build import build_module

    report = analyze(load_text(text))
    model = build_module(report).double().eval()
    x = torch.rand(1, *report.input, dtype=torch.float64, requires_grad=True)
    model(x)[0, token].sum().backward()
    assert x.grad is not None
    hit = x.grad.abs().sum(0).sum(0) > 0
    rows, cols = torch.nonzero(hit.any(1)).flatten(), torch.nonzero(hit.any(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


def test_receptive_field_of_tokens_by_gradient() -> None:
    """Per-token layers keep a patch's field (4 x 4); after attention every token sees the whole input, and the
    report names the attention layer as where that starts."""
    per_token = ("name: p\ninput: [3, 16, 12]\nlayers:\n  - conv: {out: 8, kernel: 4, stride: 4}\n  - to_tokens\n"
                 "  - layernorm\n  - linear: {out: 8}\n  - gelu\n")
    report = analyze(load_text(per_token))
    assert _token_rf(per_token, 5) == (4, 4) == tuple(report.totals.rf)
    attention = per_token + "  - self_attention: {num_heads: 2, name: attn}\n  - linear: {out: 8}\n"
    report = analyze(load_text(attention))
    field = seen(report.rows, report.input, report.totals.rf)
    assert _token_rf(attention, 5) == (16, 12) == field.clipped
    assert field.global_at == "attn"


# ---- errors -------------------------------------------------------------------------------------------------------

BAD = [
    ("  - to_tokens\n  - conv: {out: 4, kernel: 1}\n", "conv needs a grid"),
    ("  - to_tokens\n  - groupnorm: {num_groups: 2}\n", "groupnorm needs a grid"),  # (batchnorm takes tokens)
    ("  - self_attention: {num_heads: 2}\n", "self_attention needs a token sequence"),
    ("  - to_tokens\n  - self_attention: {num_heads: 3}\n", "not divisible by num_heads 3"),
    ("  - to_tokens\n  - to_grid: {size: [3, 3]}\n", "holds 9 tokens, not 16"),
    ("  - to_tokens\n  - take_token: {index: 16}\n", "past the last of 16 tokens"),
    ("  - to_tokens: {name: t}\n  - linear: {out: 3, name: u}\n  - concat: [t, u]\n", "their channels must agree"),
    ("  - relu: {name: g}\n  - to_tokens: {name: t}\n  - add: [t, g]\n", "cannot be mixed"),
]


@pytest.mark.parametrize(("layers", "message"), BAD, ids=[b[1] for b in BAD])
def test_a_layer_on_the_wrong_layout_is_a_located_error(tmp_path: Path, layers: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\ninput: [4, 4, 4]\nlayers:\n" + layers, encoding="utf-8")
    result = runner.invoke(app, ["calc", str(path)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert f"{path}:" in result.output and "Traceback" not in result.output


def test_tokens_keep_their_layout_through_elementwise_layers_and_residuals() -> None:
    text = ("name: r\ninput: [6, 3, 3]\nlayers:\n  - to_tokens\n  - residual: [gelu, {dropout: {p: 0.1}}]\n"
            "  - linear: {out: 5}\n")
    report = analyze(load_text(text))
    assert report.totals.output == (9, 5)
    assert report.totals.macs == 9 * 6 * 5
    assert math.prod(report.totals.output) == 45


@pytest.mark.parametrize("name", ["vit_b_16", "vit_l_32"])
def test_validate_agrees_on_the_vit_specs_at_a_reduced_size(name: str) -> None:
    """`archcalc validate` on the spec's built module at the real widths, two encoder layers, 32 x 32 (a few tokens):
    shapes, params, MACs, fvcore, activations, saved bytes and training FLOPs, per layer and in total."""
    from archcalc.torch.validate import validate

    spec = load_spec(bundled()[f"torchvision/{name}"], overrides={"depth": "2"})
    result = validate(spec, batch=2, input_shape=(3, 32, 32))
    assert result.ok, [c for c in result.failures]
    assert len(result.checks) > 150


# ---- import ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("heads", "bias"), [(4, True), (2, False)])
def test_a_hand_written_vit_imports_exact(heads: int, bias: bool) -> None:
    """torchvision's idioms in a plain-torch ViT (reshape and permute to tokens, a class token expanded and
    concatenated, a position embedding added, nn.MultiheadAttention called as m(x, x, x, need_weights=False),
    x[:, 0]) import as the token kinds, with the module's own parameters and FlopCounterMode's MACs (the math
    kernel) and the hand-written spec's rows."""
    from archcalc.torch.importer import from_module

    class Reshaped(TinyViT):  # torchvision's _process_input: reshape to C x N, then permute
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.conv_proj(x)
            x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
            x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = x + self.pos_embedding
            for ln1, attn, ln2, mlp in zip(self.ln1, self.attn, self.ln2, self.mlp):
                y = ln1(x)
                y, _ = attn(y, y, y, need_weights=False)
                x = x + y
                x = x + mlp(ln2(x))
            return self.head(self.ln(x)[:, 0])

    torch.manual_seed(0)
    for model in (TinyViT(heads=heads, bias=bias), Reshaped(heads=heads, bias=bias)):
        model.eval()
        imported = analyze(from_module(model, (3, 16, 16)).spec, batch=2)
        x = torch.randn(2, 3, 16, 16)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            y = model(x)
        assert imported.totals.params == sum(p.numel() for p in model.parameters())
        assert 2 * imported.totals.macs == counter.get_total_flops()
        assert [2, *imported.totals.output] == list(y.shape)
        kinds = [r.kind for r in imported.rows]
        assert kinds[:4] == ["conv", "to_tokens", "class_token", "pos_embed"]
        assert kinds.count("self_attention") == 2 and kinds[-2:] == ["take_token", "linear"]
        spec = analyze(load_text(_tiny_spec(heads=heads, bias=bias)), batch=2)
        assert (imported.totals.macs, imported.totals.saved_bytes) == (spec.totals.macs, spec.totals.saved_bytes)


@pytest.mark.parametrize(("mode", "message"), [
    ("weights", "need_weights"), ("mask", "a mask"), ("cross", "different query, key and value"),
])
def test_attention_the_importer_does_not_read_is_refused(mode: str, message: str) -> None:
    """nn.MultiheadAttention as the importer does not read it: returning its weights, with a mask, or attending
    one sequence to another; each refused with the reason, never imported with another count."""
    from archcalc.torch.importer import ImportFailure, from_module

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
            self.ln = nn.LayerNorm(8)
            self.register_buffer("mask", torch.zeros(4, 4, dtype=torch.bool))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(2).transpose(1, 2)
            if mode == "weights":
                return self.attn(x, x, x)[0]
            if mode == "mask":
                return self.attn(x, x, x, need_weights=False, attn_mask=self.mask)[0]
            y = self.ln(x)
            return self.attn(x, y, y, need_weights=False)[0]

    with pytest.raises(ImportFailure, match=message):
        from_module(Net().eval(), (8, 2, 2))


def test_calc_gives_the_training_peak_for_attention_and_fit_uses_it() -> None:
    # self_attention's backward is in the training timeline (tests/test_attention_step.py measures it): calc gives
    # the step's peak, and --fit sizes the batch by it (exact, not the term-by-term upper bound).
    result = runner.invoke(app, ["calc", "torchvision/vit_b_32", "-f", "json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["training_peak"]["later_step"]["bytes"] < data["training_memory"]["total_bytes"]
    fit = runner.invoke(app, ["calc", "torchvision/vit_b_32", "--fit", "8GiB"]).output
    assert "is the largest whose training peak fits" in fit.replace("\n", " ")
