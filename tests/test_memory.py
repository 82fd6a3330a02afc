"""The inference peak (tensor liveness) and the training saved-activation models, on cases worked by hand."""

from __future__ import annotations

from archcalc.core.analyze import analyze
from archcalc.core.spec import load_spec


def run(write_spec, text: str):  # type: ignore[no-untyped-def]
    return analyze(load_spec(write_spec(text)))


def test_sequence_peak_counts_input_and_output_of_the_running_layer(write_spec) -> None:  # type: ignore[no-untyped-def]
    # input 1x4x4 = 16 values; conv1 -> 2x4x4 = 32; relu -> 32 (new tensor); conv2 -> 16.
    # Alive at most while relu runs: input 16 (the caller holds it) + conv1 out 32 + relu out 32 = 80 values.
    # Parameters: conv1 2*1 + 2 = 4, conv2 2 + 1 = 3 -> 7 values. float32: (80 + 7) * 4 bytes.
    r = run(write_spec, "name: t\ninput: [1, 4, 4]\nlayers:\n  - conv: {out: 2, kernel: 1}\n  - relu\n"
                        "  - conv: {out: 1, kernel: 1}\n")
    assert r.totals.peak_bytes == (80 + 7) * 4


def test_inplace_relu_allocates_nothing(write_spec) -> None:  # type: ignore[no-untyped-def]
    # As above with relu in place: 16 + 32 while conv1 runs, then 16 + 32 + 16 while conv2 runs = 64 values.
    r = run(write_spec, "name: t\ninput: [1, 4, 4]\nlayers:\n  - conv: {out: 2, kernel: 1}\n"
                        "  - relu: {inplace: true}\n  - conv: {out: 1, kernel: 1}\n")
    assert r.totals.peak_bytes == (64 + 7) * 4


def test_residual_keeps_its_input_until_the_add(write_spec) -> None:  # type: ignore[no-untyped-def]
    # input 2x4x4 = 32; body conv -> 32 (input still held for the identity shortcut); add -> 32: 96 values.
    # Parameters 2*2 + 2 = 6.
    r = run(write_spec, "name: t\ninput: [2, 4, 4]\nlayers:\n  - residual: [{conv: {out: 2, kernel: 1}}]\n")
    assert r.totals.peak_bytes == (96 + 6) * 4


def test_views_and_dropout_allocate_nothing(write_spec) -> None:  # type: ignore[no-untyped-def]
    # input 8; flatten (view) and dropout (identity at inference) add nothing; linear 8 -> 2 allocates 2.
    r = run(write_spec, "name: t\ninput: [2, 2, 2]\nlayers:\n  - flatten\n  - dropout\n  - linear: {out: 2}\n")
    assert r.totals.peak_bytes == (8 + 2 + 8 * 2 + 2) * 4


def test_saved_bytes_deduplicate_shared_tensors(write_spec) -> None:  # type: ignore[no-untyped-def]
    # Training forward: conv1 keeps the input (16); relu keeps its output (32), which conv2 keeps too (counted
    # once); max-pool keeps its input (conv2's output, 16) and int64 indices (4 values * 8 bytes).
    r = run(write_spec, "name: t\ninput: [1, 4, 4]\nlayers:\n  - conv: {out: 2, kernel: 1}\n  - relu\n"
                        "  - conv: {out: 1, kernel: 1}\n  - maxpool: {kernel: 2}\n")
    assert r.totals.saved_bytes == (16 + 32 + 16) * 4 + 4 * 8


def test_batch_scales_activations_not_parameters(write_spec) -> None:  # type: ignore[no-untyped-def]
    text = "name: t\ninput: [1, 4, 4]\nlayers:\n  - conv: {out: 2, kernel: 1}\n"
    one = analyze(load_spec(write_spec(text)))
    four = analyze(load_spec(write_spec(text)), batch=4)
    assert four.totals.peak_bytes - four.totals.param_bytes == 4 * (one.totals.peak_bytes - one.totals.param_bytes)
