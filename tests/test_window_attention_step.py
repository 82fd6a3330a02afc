"""window_attention (v1) in the training step's timeline (core.memory.training_timeline with
WindowAttention.backward_moments, train_transient and frozen_transient) against a real step of the spec's built
module (archcalc.torch.modules.WindowAttention) on the CPU, measured by storage as ops create and free tensors
(tests/measure.step_peak_bytes: a TorchDispatchMode and weakref finalizers, no archcalc arithmetic): the first step
and a later one, SGD and Adam; 2-D and 3-D grids, padded, shifted, windows cut to the grid (`shrink`), one head,
one window, windows that are views of the grid, frozen, and Swin-T and a small video Swin whole.

A linear layer right after `to_tokens` reads to_tokens' view of the network input in place at batch 1 and copies it
from two images on (the rule counts the copy at every batch: tests/test_attention_step.py), so cases that start that
way are measured at batches 2 and 3.
"""

from __future__ import annotations

import pytest
import torch
from conftest import load_text
from measure import step_peak_bytes

from archcalc.core.analyze import analyze
from archcalc.core.training import step_peaks, step_unfollowed
from archcalc.torch.build import build_module

T = ("name: a\ninput: [{ch}, {grid}]\nlayers:\n  - to_tokens\n{pre}  - window_attention: {{num_heads: {h}, "
     "window_size: {w}, shift_size: {s}{more}}}\n{post}")
LINEAR = "  - linear: {{out: {}}}\n"
HEAD = "  - linear: {out: 3}\n"

# (case, spec, batches measured)
CASES = [
    ("padded_shifted", T.format(ch=5, grid="6, 6", pre=LINEAR.format(8), h=4, w=4, s=2, more="", post=HEAD), (2, 3)),
    ("plain", T.format(ch=5, grid="8, 8", pre=LINEAR.format(8), h=2, w=4, s=0, more="", post=HEAD), (2, 3)),
    # the first layer: no input gradient (nor the partition's, the roll's and the padding's)
    ("first", T.format(ch=8, grid="8, 8", pre="", h=2, w=4, s=2, more="", post=HEAD), (1, 2, 3)),
    ("last", T.format(ch=5, grid="8, 8", pre=LINEAR.format(8), h=2, w=4, s=2, more="", post=""), (2, 3)),
    # frozen: the windows and the joined heads are made, not kept
    ("frozen", T.format(ch=5, grid="6, 7", pre=LINEAR.format(12), h=3, w=[3, 4], s=1, more=", trainable: false",
                        post=HEAD), (2, 3)),
    ("one_head", T.format(ch=5, grid="6, 6", pre=LINEAR.format(8), h=1, w=4, s=2, more="", post=HEAD), (2, 3)),
    ("one_window", T.format(ch=5, grid="4, 4", pre=LINEAR.format(8), h=2, w=4, s=0, more="", post=HEAD), (2, 3)),
    ("one_window_padded", T.format(ch=5, grid="3, 4", pre=LINEAR.format(8), h=2, w=4, s=2, more="", post=HEAD),
     (2, 3)),
    # two windows one above the other: a view of the grid, the input kept for qkv's weight
    ("a_column_of_windows", T.format(ch=5, grid="8, 4", pre=LINEAR.format(8), h=2, w=4, s=0, more="", post=HEAD),
     (2, 3)),
    ("no_bias", T.format(ch=5, grid="6, 6", pre=LINEAR.format(8), h=2, w=3, s=1, more=", bias: false", post=HEAD),
     (2, 3)),
    ("wide", T.format(ch=5, grid="4, 8", pre=LINEAR.format(32), h=4, w=2, s=1, more="", post=HEAD), (2, 3)),
    ("3d", T.format(ch=5, grid="4, 6, 6", pre=LINEAR.format(8), h=2, w=[2, 4, 4], s=[1, 2, 2], more="", post=HEAD),
     (2, 3)),
    ("3d_shrink", T.format(ch=5, grid="3, 6, 5", pre=LINEAR.format(6), h=3, w=[4, 4, 2], s=[2, 2, 1],
                           more=", shrink: true", post=HEAD), (2, 3)),
    # the softmax's moment of the backward is the step's peak (found by lowering each moment by one element)
    ("at_the_softmax_gradient", T.format(ch=5, grid="6, 6", pre=LINEAR.format(8), h=4, w=4, s=1, more="",
                                         post=HEAD + HEAD), (2, 3)),
    # no position bias (DaViT's and Twins-SVT's windows): no bias gradient, no table gradient
    ("no_position_bias", T.format(ch=5, grid="6, 7", pre=LINEAR.format(8), h=2, w=4, s=2,
                                  more=", position_bias: none", post=HEAD), (2, 3)),
    ("no_position_bias_wide", T.format(ch=5, grid="4, 8", pre=LINEAR.format(32), h=4, w=2, s=1,
                                       more=", position_bias: none", post=HEAD), (2, 3)),
    # (one window, a view of to_tokens' view of the input: from batch 2 on qkv copies it, which the
    # rule does not follow for a first layer, with a table alike: u per image; measured at batch 1)
    ("no_position_bias_first", T.format(ch=6, grid="7, 7", pre="", h=3, w=7, s=0, more=", position_bias: none",
                                        post=HEAD), (1,)),
    ("swin_t", "name: s\ninput: [3, 64, 64]\nextends: torchvision/swin_t\n", (1,)),
    ("swin3d_small", "name: s\ninput: [3, 6, 48, 40]\nextends: torchvision/swin3d_t\n"
                     "args: {embed: 24, h1: 1, h2: 2, h3: 2, h4: 4}\n", (1, 2)),
]


def _measured(report, spec, optimizer: str, steps: int) -> int:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = build_module(report)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3) if optimizer == "sgd" else torch.optim.Adam(params, lr=1e-3)
    x = torch.randn(report.batch, *spec.inputs[0].shape)
    return step_peak_bytes(model, (x,), opt, steps)[1]


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize(("name", "text", "batches"), CASES, ids=[c[0] for c in CASES])
def test_the_window_attention_step_peak_is_exact(name: str, text: str, batches: tuple[int, ...],
                                                 optimizer: str) -> None:
    spec = load_text(text)
    for batch in batches:
        report = analyze(spec, batch=batch, device="cpu")
        later, first = step_peaks(report, optimizer)
        measured = (_measured(report, spec, optimizer, 1), _measured(report, spec, optimizer, 2))
        assert (first.peak, later.peak) == measured, (batch, first.peak - measured[0], later.peak - measured[1])


# Where the later SGD step peaks (measured figures, torch 2.14.1): in the window attention's backward and forward.
WHERE = [
    ("padded_shifted", 3, "backward", "attn1", 181_040),
    ("3d", 3, "backward", "attn1", 716_632),
    ("3d_shrink", 2, "backward", "attn1", 299_404),
    ("at_the_softmax_gradient", 2, "backward", "attn1", 122_352),
    ("plain", 3, "forward", "attn1", 118_068),
    ("frozen", 3, "forward", "attn1", 107_184),
    ("swin_t", 1, "backward", "stage2.0.residual1.attn", 231_063_272),
]


@pytest.mark.parametrize(("name", "batch", "phase", "op", "figure"), WHERE, ids=[w[0] for w in WHERE])
def test_the_peak_is_in_window_attention(name: str, batch: int, phase: str, op: str, figure: int) -> None:
    spec = load_text(dict((c[0], c[1]) for c in CASES)[name])
    report = analyze(spec, batch=batch, device="cpu")
    later = step_peaks(report, "sgd")[0]
    assert (later.phase, later.op) == (phase, op)
    assert later.peak == _measured(report, spec, "sgd", 2) == figure


def test_v2_is_not_followed() -> None:
    spec = load_text(T.format(ch=8, grid="8, 8", pre="", h=2, w=4, s=2, more=", v2: true", post=""))
    report = analyze(spec, batch=2, device="cpu")
    assert "v2" in step_unfollowed(report)
    with pytest.raises(ValueError, match="v2"):
        step_peaks(report, "sgd")


def test_autocast_is_not_followed() -> None:
    """Under bf16 autocast its linear layers and products run in bfloat16 and its softmax in float32: not followed
    (as self_attention)."""
    from archcalc.core.training import autocast_unfollowed

    text = "name: a\ninput: [3, 16, 16]\nlayers:\n  - conv: {out: 8, kernel: 2, stride: 2}\n  - to_tokens\n" \
           "  - window_attention: {num_heads: 2, window_size: 4}\n"
    report = analyze(load_text(text), batch=2, device="cpu")
    assert "mixed types under autocast" in autocast_unfollowed(report, "bf16")
