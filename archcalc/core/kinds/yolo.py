"""Kinds of Ultralytics' YOLO models that no other network here uses: the DFL box decoder and (for C2PSA) its
position-sensitive attention. Their costs are written out from Ultralytics' modules (ultralytics/nn/modules) and
checked against a plain-torch reference in tests/test_kinds_reference.py."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from archcalc.core.kinds.base import (
    ACTIVATION,
    STATISTICS,
    Arg,
    Cost,
    Example,
    Kind,
    LayerError,
    RFStep,
    Saved,
    Shape,
    numel,
    register,
)


@register
class DFL(Kind):
    name = "dfl"
    autocast = "mixed"  # softmax and a 1x1 conv inside: not followed under autocast
    doc = ("The integral of Distribution Focal Loss (Li et al. 2020; Ultralytics' DFL): 4 x reg_max channels are four "
           "box sides' distributions over reg_max bins; a softmax over each side's bins, then their expectation, a "
           "1x1 convolution reg_max -> 1 with the fixed weights 0..reg_max-1 (reg_max parameters, frozen in "
           "Ultralytics: write `trainable: false`). 4 channels out. Ultralytics runs one DFL over every level's "
           "anchors at once; a spec decodes each level with its own dfl, the same operations, and `shared: true` "
           "marks the later ones, whose weights are the first one's (counted once).")
    full_rule = "5 per input element: the softmax's 3 (exp, add to the sum, divide) and the 1x1 conv's 2 per MAC"
    args = (Arg("reg_max", "int", 16, "bins per box side (the input has 4 x reg_max channels)", minimum=2),
            Arg("shared", "bool", False, "true: uses an earlier dfl's weights (no parameters of its own)"))
    examples = (Example((64, 8, 8)), Example((32, 5, 7), {"reg_max": 8, "shared": True}), Example((64, 30)))
    torch_class = "DFL"

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) < 2 or inp[0] != 4 * a["reg_max"]:
            raise LayerError(f"dfl needs 4 x reg_max = {4 * a['reg_max']} channels with spatial axes; got "
                             f"{'x'.join(map(str, inp))}")
        return (4, *inp[1:])

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        macs = numel(inp)  # the 1x1 conv: reg_max MACs for each of the 4 x anchors outputs
        return Cost(params=0 if a["shared"] else a["reg_max"], macs=macs, fvcore=macs, full=3 * macs + 2 * macs)

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The softmax's output (the conv's input); a shared dfl's weights are made in its forward (it holds none),
        # so the conv keeps them as a tensor of its own, once per batch.
        return Saved(extra=((numel(inp), ACTIVATION),), per_batch=((a["reg_max"], ACTIVATION),) if a["shared"] else ())

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        return ((numel(inp), ACTIVATION),)  # the softmax's output, alive while the conv runs

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        return f"reg_max {a['reg_max']}" + (" (shared)" if a["shared"] else "")


@register
class PSAAttention(Kind):
    name = "psa_attention"
    autocast = "mixed"  # convolutions and matrix products inside: not followed under autocast
    prefix = "attn"
    doc = ("The attention of Ultralytics' PSABlock (YOLO11's C2PSA; ultralytics/nn/modules/block.py Attention): "
           "on a C x H x W map, qkv = 1x1 conv C -> C + 2 x num_heads x key_dim (no bias) + BN, key_dim = "
           "int(C / num_heads x attn_ratio); per head softmax(q^T k x key_dim^-0.5) over the H x W positions and "
           "v attn^T (two matmuls of N = H x W positions); plus pe, a depthwise 3x3 conv + BN of v; then proj, a 1x1 "
           "conv + BN. No activation. C must be num_heads x head_dim. MACs: the three convs and both matmuls "
           "(FlopCounterMode counts exactly these); fvcore adds 2 per element of each BN.")
    full_rule = ("2 per MAC, 4 per element of each BN, key_dim x N per head for the scale, 3 per attention weight "
                 "(softmax) and C x N for pe's sum")
    args = (Arg("dim", "int", doc="channels of the input (Ultralytics' dim)", minimum=1),
            Arg("num_heads", "int", 8, "attention heads", minimum=1),
            Arg("attn_ratio", "float", 0.5, "key_dim / head_dim", minimum=0))
    examples = (Example((64, 6, 6), {"dim": 64, "num_heads": 1}), Example((32, 4, 5), {"dim": 32, "num_heads": 2}))
    torch_class = "PSAAttention"
    same_shape = True

    @staticmethod
    def dims(a: Mapping[str, Any], inp: Shape) -> tuple[int, int, int, int]:
        """(C, head_dim, key_dim, qkv channels h)."""
        c, heads = inp[0], a["num_heads"]
        hd = c // heads
        kd = int(hd * a["attn_ratio"])
        return c, hd, kd, c + 2 * heads * kd

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) != 3:
            raise LayerError(f"psa_attention needs a C x H x W input; got {'x'.join(map(str, inp))}")
        if inp[0] != a["dim"]:
            raise LayerError(f"psa_attention dim {a['dim']} but the input has {inp[0]} channels")
        if inp[0] % a["num_heads"]:
            raise LayerError(f"psa_attention: {inp[0]} channels are not divisible by num_heads {a['num_heads']}")
        if self.dims(a, inp)[2] < 1:
            raise LayerError(f"psa_attention: key_dim int({inp[0] // a['num_heads']} x {a['attn_ratio']}) is 0")
        return inp

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        c, hd, kd, h = self.dims(a, inp)
        heads, n = a["num_heads"], numel(inp[1:])
        conv = n * (c * h + 9 * c + c * c)  # qkv 1x1, pe depthwise 3x3, proj 1x1
        matmul = heads * n * n * (kd + hd)  # q^T k, then v attn^T
        bn = (h + 2 * c) * n  # the three BNs' elements
        return Cost(params=c * h + c * c + 9 * c + 2 * (h + 2 * c), buffers=2 * (h + 2 * c), int_buffers=3,
                    macs=conv + matmul, fvcore=conv + matmul + 2 * bn,
                    full=2 * (conv + matmul) + 4 * bn + heads * kd * n + 3 * heads * n * n + c * n)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # (grad of the input, the rest). The input's gradient is qkv's conv backward to x; everything else runs
        # whenever the weights train: the three weight gradients (pe's counted `groups` = C times, as Conv's rule
        # says FlopCounterMode does, unless the installed torch divides by groups: divide_groups), both operands'
        # gradients of both matmuls, and pe's and proj's input gradients.
        c, hd, kd, h = self.dims(a, inp)
        heads, n = a["num_heads"], numel(inp[1:])
        batch = macs // self.cost(a, inp, inp).macs
        matmul = heads * n * n * (kd + hd)
        pe_weight = 9 * c if divide_groups else 9 * c * c
        rest = n * (c * h + c * c + pe_weight) + 2 * matmul + n * (9 * c + c * c)
        return batch * c * h * n, batch * rest

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        c, hd, kd, h = self.dims(a, inp)
        heads, n = a["num_heads"], numel(inp[1:])
        # qkv's conv keeps x (the input); its BN keeps the conv's output (h x N); the matmuls keep q x scale (a new
        # tensor), k and v (views of the BN's output, h x N) and the softmax's output (also kept by the softmax);
        # pe's conv keeps v as a C x N map (a copy where there are several heads: v is then strided; one head's v
        # reshapes as a view of the BN's output), its BN the conv's output; proj's conv keeps the sum, its BN the
        # conv's output. Per-channel BN statistics: 2 per channel of each BN.
        copy = c * n if heads > 1 else 0
        extra = ((h * n, ACTIVATION), (h * n, ACTIVATION), (heads * kd * n, ACTIVATION),
                 (heads * n * n, ACTIVATION), (3 * c * n + copy, ACTIVATION))
        return Saved(input=True, extra=extra, per_batch=((2 * (h + 2 * c), STATISTICS),))

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        c, hd, kd, h = self.dims(a, inp)
        heads, n = a["num_heads"], numel(inp[1:])
        # Measured with torch.profiler on the module (tests/test_kind_rules.py): qkv's BN output (h x N) lives to
        # the end (q, k, v are views of it), and so does the softmax's output (`attn`, a local of forward). Beside
        # them, in turn: the qkv conv's output; q x scale and the scores; the scores (then the softmax); then v
        # attn^T (C x N) with pe's input copy (where there are several heads: v is strided), pe's conv and BN
        # outputs (the argument of a call lives until it returns); then the sum with proj's conv and BN outputs,
        # the last being the output itself.
        copy = c * n if heads > 1 else 0
        alive = h * n + max(h * n, heads * kd * n + heads * n * n, 2 * heads * n * n,
                            heads * n * n + 3 * c * n + copy)
        return ((alive - c * n, ACTIVATION),)

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep(whole=True)] * (len(inp) - 1)  # every position attends to every other

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        c, hd, kd, h = self.dims(a, inp)
        return f"{a['num_heads']} heads, key {kd}, head {hd}"
