"""`archcalc validate MODEL`: a PyTorch model itself (not the module archcalc builds from a spec) measured beside the
figures of the spec `archcalc import` makes of it.

    nn.Module ──import──▶ Spec ──analyze──▶ Report
    nn.Module ──run─────▶ what torch, FlopCounterMode and fvcore say of *this* module ──compare──▶ Validation

Whole-model figures only (the model's own modules do not map one to one onto the spec's rows):
  output_shape, params, buffers   one eval forward; the model's parameter and buffer counts
  macs          FlopCounterMode around an eval forward with autograd on, under the math attention kernel
                (`scaled_dot_product_attention` written out as two batched products, which it counts), halved
  fvcore_flops  fvcore's FlopCountAnalysis of the model as it is
  saved_bytes   saved_tensors_hooks during one training-mode forward, as `validate SPEC` measures it

What a plain FlopCounterMode gives (a no_grad forward on the default kernels: the fused attention kernels count 0)
is reported as a note beside the checks when it differs, with the difference, so a counter's blind spot is shown
rather than hidden; fvcore's skipped operators are named the same way.
"""

from __future__ import annotations

from typing import Any

from archcalc.core.analyze import analyze
from archcalc.core.kinds import Shape
from archcalc.torch.validate import Check, Validation, _fvcore, _saved_run

# What a disagreement of the counters on the real model usually means, by operator fvcore names as unsupported.
_ATTENTION_OPS = ("scaled_dot_product_attention", "_native_multi_head_attention")


def validate_model(module: Any, input_shape: Shape, name: str, batch: int = 1, seed: int = 0) -> Validation:
    """Import `module` at `input_shape` (one sample, channels first), analyze the spec, run the module itself on
    the CPU at `batch` and compare."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from archcalc.torch.importer import from_module

    imported = from_module(module, input_shape, name=name)
    report = analyze(imported.spec, batch=batch, convention="fvcore", device="cpu")
    notes = [f"import: {w}" for w in imported.warnings]

    torch.manual_seed(seed)
    x = torch.randn(batch, *report.input)
    module.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as plain:
        out = module(x)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as math:
        module(x)
    if plain.get_total_flops() != math.get_total_flops():
        notes.append(f"a plain FlopCounterMode (no_grad, the default kernels) counts {plain.get_total_flops():,} "
                     f"FLOPs, {math.get_total_flops() - plain.get_total_flops():,} fewer than under the math "
                     "attention kernel: the fused attention kernels it runs are counted as 0 (docs/conventions.md)")
    _, fv_total, fv_notes = _fvcore(module, (x,), [])
    notes.extend(fv_notes)
    if fv_total != report.totals.flops and any(op in note for note in fv_notes for op in _ATTENTION_OPS):
        notes.append("fvcore_flops: fvcore counts 0 for the fused attention this module calls; archcalc's fvcore "
                     "convention counts its products, as fvcore does on attention written out (the module "
                     "`validate SPEC` builds)")
    saved, saved_notes = _saved_run(module, (x,), False)
    notes.extend(saved_notes)
    if saved is not None and saved != report.totals.saved_bytes and any(r.kind == "self_attention"
                                                                       for r in report.rows):
        notes.append("saved_bytes: archcalc's self_attention keeps what the math kernel keeps for backward (the "
                     "h x N x N attention weights); torch's fused kernels keep far less (docs/tokens.md, Memory)")

    def check(quantity: str, predicted: Any, measured: Any) -> Check:
        return Check(quantity, None, predicted, measured, predicted == measured)

    checks = [
        check("output_shape", [batch, *report.totals.output], list(out.shape)),
        check("params", report.totals.params, sum(p.numel() for p in module.parameters())),
        check("buffers", report.totals.buffers, sum(b.numel() for b in module.buffers())),
        check("macs", report.totals.macs, math.get_total_flops() // 2),
        check("fvcore_flops", report.totals.flops, fv_total),
    ]
    if saved is not None:
        checks.append(check("saved_bytes", report.totals.saved_bytes, saved))
    return Validation(report.name, "cpu", batch, report.dtype, report.input, tuple(checks), tuple(notes))
