"""The engine's memory models on small graphs, against what torch does with the built network.

- The inference peak: torch.profiler's CPU memory events during one no_grad forward (every allocation and free the
  real module makes), against the predicted peak less the parameters, buffers and input.
- Saved for backward: autograd's saved_tensors_hooks around one training forward, parameters and buffers left out,
  each storage once, with the input needing a gradient or not and with frozen layers, against the prediction.

The graphs mix what the walk has to get right: in-place and out-of-place activations, views, residual adds,
concatenations, broadcasting products, named tensors read later, frozen prefixes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import load_text
from measure import peak_bytes, saved_bytes

from archcalc.core.analyze import analyze
from archcalc.torch.build import build_module

GRAPHS = {
    "sequence": """
layers:
  - conv: {out: 4, kernel: 3, padding: 1}
  - relu
  - maxpool: {k: 2}
  - conv: {out: 2, kernel: 1}
  - relu: {inplace: true}
  - flatten
  - dropout
  - linear: {out: 3}
""",
    "residuals": """
layers:
  - conv: {out: 4, kernel: 1}
  - residual:
      - conv: {out: 4, kernel: 3, padding: 1}
      - relu
    after: [relu]
  - residual:
      - conv: {out: 6, kernel: 3, stride: 2, padding: 1}
    shortcut: projection
  - global_avgpool
""",
    "branches": """
layers:
  - parallel:
      - [conv: {out: 2, kernel: 1}]
      - [maxpool: {kernel: 3, stride: 1, padding: 1}]
      - []
    merge: concat
  - parallel: [[relu], [sigmoid], [tanh]]
    merge: add
  - parallel:
      - []
      - [global_avgpool, {conv: {out: 2, kernel: 1}}, relu, {conv: {out: 8, kernel: 1}}, sigmoid]
    merge: mul
""",
    "named": """
layers:
  - conv: {out: 4, kernel: 3, padding: 1, name: stem}
  - maxpool: {k: 2, name: down}
  - conv: {out: 4, kernel: 1, name: mid}
  - upsample: {scale_factor: 2, name: up}
  - concat: [stem, up]
    name: joined
  - conv: {out: 2, kernel: 1}
""",
    # a one-parameter first layer (recorded: its parameter needs a gradient), a layer with parameters that keeps
    # a copy instead of its input (asymmetric padding, channel layer norm), a three-way product, a frozen linear
    "odd": """
layers:
  - prelu
  - conv: {out: 4, kernel: 2, padding: same}
  - channel_layernorm
  - parallel: [[], [sigmoid], [tanh]]
    merge: mul
  - linear: {out: 3, trainable: false}
""",
    "frozen": """
layers:
  - conv: {out: 4, kernel: 3, trainable: false}
  - relu
  - conv: {out: 4, kernel: 1, trainable: false}
  - maxpool: {k: 2}
  - conv: {out: 2, kernel: 1}
  - sigmoid
  - linear: {out: 3, trainable: false}
""",
}


# For the peak: only ops whose CPU kernels allocate nothing beyond their output and declared temporaries (a small
# 3x3 convolution runs im2col, whose buffer is backend workspace the model leaves out; see the README).
PEAK_GRAPHS = {
    "sequence": """
layers:
  - conv: {out: 4, kernel: 1}
  - relu
  - maxpool: {k: 2}
  - conv: {out: 2, kernel: 1}
  - relu: {inplace: true}
  - flatten
  - dropout
  - linear: {out: 3}
""",
    "residuals": """
layers:
  - conv: {out: 4, kernel: 1}
  - residual:
      - conv: {out: 4, kernel: 1}
      - relu
    after: [relu]
  - residual:
      - sigmoid
      - conv: {out: 4, kernel: 1}
""",
    "branches": """
layers:
  - parallel:
      - [conv: {out: 2, kernel: 1}]
      - [maxpool: {kernel: 3, stride: 1, padding: 1}]
      - []
    merge: concat
  - parallel: [[relu], [sigmoid], [tanh]]
    merge: add
  - parallel: [[], [sigmoid], [tanh]]
    merge: mul
""",
    "named": """
layers:
  - conv: {out: 4, kernel: 1, name: stem}
  - maxpool: {k: 2, name: down}
  - conv: {out: 4, kernel: 1, name: mid}
  - maxpool: {k: 2, name: down2}
  - upsample: {scale_factor: 4, name: up}
  - concat: [stem, up]
    name: joined
  - add: [joined, joined]
  - sigmoid
""",
    # dropout at inference is its input: the storage lives until the last reader of either name (the concat)
    "alias": """
layers:
  - conv: {out: 4, kernel: 1, name: a}
  - dropout: {name: d}
  - conv: {out: 8, kernel: 1, name: wide}
  - conv: {out: 4, kernel: 1, name: narrow}
  - concat: [a, narrow]
""",
    # the peak is while max pooling runs: its input, its output and the int64 indices it drops
    "pool_first": """
layers:
  - maxpool: {k: 2}
  - conv: {out: 2, kernel: 1}
""",
    # the peak is while the three-way product runs: its factors, its output and the partial product
    "product": """
layers:
  - parallel: [[], [sigmoid], [tanh]]
    merge: mul
  - conv: {out: 1, kernel: 1}
""",
}


def _spec(name: str, graphs: dict[str, str] = GRAPHS) -> str:
    return f"name: {name}\ninput: [3, 8, 8]\n" + graphs[name]


@pytest.mark.parametrize("name", sorted(PEAK_GRAPHS))
def test_inference_peak_is_what_the_profiler_sees(name: str) -> None:
    report = analyze(load_text(_spec(name, PEAK_GRAPHS)), batch=2)
    model = build_module(report).eval()
    x = torch.randn(2, 3, 8, 8)
    measured = peak_bytes(lambda: model(x))  # one thread: per-thread scratch of parallel kernels would blur it
    t = report.totals
    assert t.peak_bytes - t.param_bytes - t.buffer_bytes - x.numel() * 4 == measured


@pytest.mark.parametrize("input_grad", [False, True], ids=["batch", "input-grad"])
@pytest.mark.parametrize("name", sorted(GRAPHS) + [f"peak-{n}" for n in sorted(PEAK_GRAPHS)])
def test_saved_bytes_are_what_autograd_keeps(name: str, input_grad: bool) -> None:
    kwargs: dict[str, Any] = {"batch": 2, "device": "cpu", "input_requires_grad": input_grad}
    text = _spec(name[5:], PEAK_GRAPHS) if name.startswith("peak-") else _spec(name)
    report = analyze(load_text(text), **kwargs)
    model = build_module(report)
    x = torch.randn(2, 3, 8, 8).requires_grad_(input_grad)
    assert report.totals.saved_bytes == saved_bytes(model, x)


def test_a_frozen_prefix_keeps_less_than_a_trained_one() -> None:
    """The frozen graph keeps nothing before its first trainable layer; trained, every layer keeps its share."""
    frozen = analyze(load_text(_spec("frozen")), batch=2, device="cpu")
    trained = analyze(load_text(_spec("frozen").replace(", trainable: false", "")), batch=2, device="cpu")
    assert 0 < frozen.totals.saved_bytes < trained.totals.saved_bytes


def test_saved_statistics_follow_the_device() -> None:
    """float16 batch norm and dropout: on CUDA the batch statistics are float32 and dropout's mask a bool; on the CPU
    both are float16 (kinds.base.itemsize_for). Batch 2, 4 channels of 3x3, after a conv (which keeps its input)."""
    text = "name: t\ninput: [2, 3, 3]\nlayers:\n  - conv: {out: 4, kernel: 1}\n  - batchnorm\n  - dropout\n"
    conv_input, bn_input, stats, mask = 2 * 2 * 9, 2 * 4 * 9, 2 * 4, 2 * 4 * 9
    for device, stats_size, mask_size in (("cpu", 2, 2), ("cuda", 4, 1)):
        report = analyze(load_text(text), batch=2, dtype="float16", device=device)
        assert report.totals.saved_bytes == (conv_input + bn_input) * 2 + stats * stats_size + mask * mask_size
