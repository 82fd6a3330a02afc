"""self_attention's fused kernel (`kernel: fused`: F.scaled_dot_product_attention under the flash backend, on the CPU
_scaled_dot_product_flash_attention_for_cpu) against torch on the CPU: what autograd keeps (saved_tensors_hooks),
the inference peak (torch.profiler), the training step's peak (by storage, tests/measure.step_peak_bytes), and what
FlopCounterMode and fvcore count for it. CUDA's kernels are modelled from their source and checked only where a GPU
is (`gpu`).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import load_text
from measure import peak_bytes, saved_bytes
from test_attention_step import CASES as MATH_CASES
from test_attention_step import _measured

from archcalc.core.analyze import analyze
from archcalc.core.training import step_peaks
from archcalc.torch.build import build_module


def _fused(text: str) -> str:
    return text.replace("self_attention: {", "self_attention: {kernel: fused, ")


ONE = ("name: a\ninput: [{ch}, {gh}, {gw}]\nlayers:\n  - to_tokens\n  - linear: {{out: {c}}}\n"
       "  - self_attention: {attn}\n")

# (tokens N, channels C, heads, bias, trainable)
SHAPES = [(6, 12, 3, True, True), (6, 12, 1, False, True), (9, 8, 2, True, False), (40, 16, 4, True, True)]


def _one(n: int, c: int, h: int, bias: bool, trainable: bool) -> str:
    attn = f"{{num_heads: {h}, bias: {str(bias).lower()}, trainable: {str(trainable).lower()}, kernel: fused}}"
    return ONE.format(ch=3, gh=n, gw=1, c=c, attn=attn)


@pytest.mark.parametrize("input_grad", [True, False])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_fused_kernel_keeps_qkv_its_output_and_the_log_sum_exp(shape: tuple, input_grad: bool) -> None:  # type: ignore[type-arg]
    # by hand, per image: the linear before keeps its input (the to_tokens view's contiguous copy, 3N, from two
    # images on) when trainable; in_proj keeps its input (the linear's output, NC) when the attention is trainable;
    # the kernel keeps q, k, v (3NC, one tensor), its output (NC) and the log-sum-exp (hN, float32)
    n, c, h, bias, trainable = shape
    spec = load_text(_one(*shape))
    report = analyze(spec, batch=2, device="cpu", input_requires_grad=input_grad)
    x = torch.randn(2, 3, n, 1).requires_grad_(input_grad)
    measured = saved_bytes(build_module(report), x)
    linear_input = 3 * n * 2 * 4
    assert report.totals.saved_bytes == measured == linear_input + (
        (n * c if trainable else 0) + 4 * n * c + h * n) * 2 * 4


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_fused_kernels_inference_peak(shape: tuple) -> None:  # type: ignore[type-arg]
    # per image, E = NC: the linear's output (E) and qkv (3E) alive; then the kernel's output (E) and log-sum-exp
    # (hN floats) beside the per-thread scratch the CPU kernel allocates (one thread: qs x ks + 2 qs + qs x d floats,
    # qs = min(N, 32), ks = min(N, 512): FlashAttentionKernel.cpp), or out_proj's output (E) beside the kernel's.
    # archcalc counts the kernel's scratch as workspace, not part of the peak: it predicts the second moment.
    n, c, h, bias, trainable = shape
    report = analyze(load_text(_one(*shape)), batch=2, device="cpu")
    model = build_module(report).eval()
    x = torch.randn(2, 3, n, 1)
    measured = peak_bytes(lambda: model(x))
    t = report.totals
    predicted = t.peak_bytes - t.param_bytes - t.buffer_bytes - x.numel() * 4
    e, lse = n * c * 2 * 4, h * n * 2 * 4
    qs, ks, d = min(n, 32), min(n, 512), c // h
    scratch = (qs * ks + 2 * qs + qs * d) * 4
    assert predicted == 6 * e
    assert measured == max(6 * e, 5 * e + lse + scratch)


FUSED = [(name, _fused(text), batches) for name, text, batches in MATH_CASES]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("name", "text", "batches"), FUSED, ids=[c[0] for c in FUSED])
def test_the_fused_step_peak_is_exact(name: str, text: str, batches: tuple[int, ...], optimizer: str) -> None:
    spec = load_text(text)
    for batch in batches:
        if batch == 1 and name.startswith("vit") and (optimizer == "adam" or name == "vit_wide"):
            # class_token's gradient at batch 1 (tests/test_property_tokens.py, test_class_token_gradient_at_batch_1,
            # an xfail): AccumulateGrad keeps the narrow view of the sequence's gradient as the token's .grad, which
            # the timeline counts apart; Adam's step peaks beside the gradients, and vit_wide's SGD step peaks while
            # it is alive (C elements over, 192 B: measured)
            continue
        report = analyze(spec, batch=batch, device="cpu")
        later, first = step_peaks(report, optimizer)
        measured = (_measured(report, spec, optimizer, 1), _measured(report, spec, optimizer, 2))
        assert (first.peak, later.peak) == measured, (batch, first.peak - measured[0], later.peak - measured[1])


# Where the later SGD step peaks (measured figures, torch 2.13/2.14 on the CPU): in the fused kernel's backward
# (q, k and v's gradients beside everything it keeps), and at the final layer norm's backward, after take_token's
# backward made the whole sequence's gradient (select_backward: zeros of N x C, the class token's row written).
WHERE = [
    ("after_linear", 3, "backward", "attn1", 12_128),  # q, k and v's gradients
    ("at_in_proj", 2, "backward", "attn1", 1_832),  # in_proj's weight gradient, the kernel's tensors freed
    ("vit_long", 3, "backward", "ln1", 225_600),  # take_token's gradient, the whole sequence's
]


@pytest.mark.parametrize(("name", "batch", "phase", "op", "figure"), WHERE, ids=[w[0] for w in WHERE])
def test_the_fused_peak_is_where_it_is_measured(name: str, batch: int, phase: str, op: str, figure: int) -> None:
    spec = load_text(dict((c[0], c[1]) for c in FUSED)[name])
    report = analyze(spec, batch=batch, device="cpu")
    later = step_peaks(report, "sgd")[0]
    assert (later.phase, later.op) == (phase, op)
    measured = _measured(report, spec, "sgd", 2)
    assert later.peak == measured == figure


def test_what_the_counters_count_on_the_fused_kernel() -> None:
    # FlopCounterMode has no formula for the CPU flash kernel and fvcore none for aten::scaled_dot_product_attention:
    # both count the four projections (4NC^2 MACs per image) and nothing for the two products (2N^2 C), which the
    # `macs` of the layer still counts. archcalc's `fvcore` convention follows fvcore; `validate` shows the
    # FlopCounterMode difference.
    from fvcore.nn import FlopCountAnalysis
    from torch.utils.flop_counter import FlopCounterMode

    n, c = 6, 12
    report = analyze(load_text(_one(n, c, 3, True, True)), batch=2, device="cpu", convention="fvcore")
    row = report.rows[-1]
    model = build_module(report).eval()
    attention = model.get_submodule(next(name for name, m in model.named_modules() if type(m).__name__ ==
                                         "SelfAttention"))
    x = torch.randn(2, n, c)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        attention(x)
    assert counter.get_total_flops() == 2 * 4 * n * c * c * 2
    assert row.macs == (4 * n * c * c + 2 * n * n * c) * 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(attention, x).unsupported_ops_warnings(False)
        assert analysis.total() == 4 * n * c * c * 2 == row.flops


@pytest.mark.gpu
def test_the_cuda_kernels_keep_what_their_source_says() -> None:  # pragma: no cover - needs a GPU
    # From the kernels' source (not measured here): flash (float16/bfloat16) keeps q, k, v, the output and a
    # float32 log-sum-exp per head and token; archcalc's rule for `device: cuda`. (float32 runs the memory-efficient
    # kernel, whose log-sum-exp is padded to a multiple of 32 tokens: not this test.)
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    spec = load_text(_one(64, 32, 4, True, True))
    report = analyze(spec, batch=2, device="cuda", dtype="bfloat16", input_requires_grad=True)
    model = build_module(report).to("cuda", torch.bfloat16)
    x = torch.randn(2, 3, 64, 1, device="cuda", dtype=torch.bfloat16).requires_grad_()
    assert report.totals.saved_bytes == saved_bytes(model, x)
