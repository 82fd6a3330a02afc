"""Multi-query attention on a channels-first grid (Shazeer 2019, "Fast Transformer Decoding: One Write-Head is All You
Need"; MobileNetV4's Mobile MQA, Qin et al. 2024, Sec. 4; timm's MultiQueryAttention2d, timm/layers/attention2d.py).

h query heads share ONE key head and ONE value head. On a C x H x W grid (N = H x W positions): q is a 1 x 1 conv
(C -> h kd); k and v are each a 1 x 1 conv (C -> kd, C -> vd) of the grid, or, with `kv_stride` s > 1, of the grid
through a depthwise conv of its own (kernel k, stride s) and a batch norm (M = H' x W' positions); per head
softmax(Q K^T / sqrt(kd)) V over the M keys; the heads joined (h vd channels) and projected by a 1 x 1 conv (-> D).
With `kv_norm: rmsnorm` the norm is MobileNetV5's RmsNorm2d.
No biases (timm builds the block's convs without)."""

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


def kv_padding(kernel: int, stride: int) -> int:
    """The depthwise conv's padding on each side: timm's symmetric default (create_conv2d, padding '':
    ((stride - 1) + (kernel - 1)) // 2)."""
    return ((stride - 1) + (kernel - 1)) // 2


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF-'same' padding of one axis (timm's Conv2dSame, pad_same): (ceil(W / s) - 1) s + k - W in all, at least 0,
    the smaller half before."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def kv_pads(a: Mapping[str, Any], grid: Shape) -> tuple[tuple[int, int], ...]:
    """The depthwise conv's padding per spatial axis (before, after)."""
    k, s = a["kv_kernel"], a["kv_stride"]
    if a["kv_padding"] == "same":
        return tuple(same_pads(w, k, s) for w in grid)
    return tuple((kv_padding(k, s),) * 2 for _ in grid)


@register
class MultiQueryAttention(Kind):
    name = "multi_query_attention"
    synonyms = ("mqa", "multi_query", "mobile_mqa")
    prefix = "attn"
    autocast = "mixed"  # convolutions and matrix products inside: not followed under autocast
    step_unfollowed = "multi_query_attention's backward is not followed in the step's timeline yet"
    doc = ("Multi-query attention on a C x H x W grid (MobileNetV4's Mobile MQA; timm's MultiQueryAttention2d): "
           "num_heads query heads share one key head and one value head. q = 1x1 conv C -> heads x key_dim; "
           "k = 1x1 conv C -> key_dim and v = 1x1 conv C -> value_dim, each of the grid or, with kv_stride s > 1, "
           "of the grid through its own depthwise conv (kv_kernel, stride s, padding ((s-1) + (k-1)) // 2, no bias) "
           "and norm (kv_norm: batch norm or RMS norm; M = H' x W' positions); per head softmax(Q K^T / "
           "sqrt(key_dim)) V over the M keys; the heads joined and projected by a 1x1 conv (-> out_features, or C). "
           "No biases. MACs per image: N C h kd (q) + M C (kd + vd) (k, v) + 2 M C k^2 (the depthwise convs) + "
           "h N M (kd + vd) (Q K^T, A V) + N h vd D (output); FlopCounterMode counts exactly these (convolutions "
           "and bmm), fvcore adds 2 per element of each batch norm (none of an RMS norm). fvcore counts 0 for "
           "timm's F.scaled_dot_product_attention (docs/tokens.md). norm: batchnorm and gate: iFormer's SHMA "
           "(a batch norm after each projection; v's projection 2 x value_dim wide through a sigmoid, its second "
           "half a gate on the head's output).")
    full_rule = ("2 per MAC, 1 per element of q for the 1/sqrt(key_dim) scale, 3 per attention weight (softmax: "
                 "heads x N x M), 4 per element of each batch norm (eval); an RMS norm: 4 per element and 3 per "
                 "position (as rmsnorm)")
    args = (
        Arg("num_heads", "int", doc="query heads (they share one key and one value head)", aliases=("heads",),
            minimum=1),
        Arg("key_dim", "int", 0, "channels of q per head and of k (0: C / num_heads)", minimum=0),
        Arg("value_dim", "int", 0, "channels of v, and of each head's output (0: C / num_heads)", minimum=0),
        Arg("kv_stride", "int", 1, "k and v each from the grid through a depthwise conv of this stride and a batch "
            "norm (timm's kv_stride); 1: from the grid itself", minimum=1),
        Arg("kv_kernel", "int", 3, "the depthwise conv's kernel (timm's dw_kernel_size), with kv_stride > 1",
            minimum=1),
        Arg("kv_norm", "str", "batchnorm", "the norm after each depthwise conv, with kv_stride > 1: 'batchnorm' "
            "(MobileNetV4's) or 'rmsnorm' (MobileNetV5's RmsNorm2d: x / sqrt(mean of x^2 over the channels + "
            "1e-6) x weight)", choices=("batchnorm", "rmsnorm")),
        Arg("kv_padding", "str", "symmetric", "the depthwise conv's padding: 'symmetric', ((s - 1) + (k - 1)) // 2 on "
            "each side (timm's default); 'same', TF's (timm's Conv2dSame: (ceil(W / s) - 1) s + k - W in all, the "
            "smaller half before; the grid padded as a copy first)", choices=("symmetric", "same")),
        Arg("out_features", "int", 0, "the output projection's channels (0: C)", aliases=("out",), minimum=0),
        Arg("norm", "str", "none", "'batchnorm': a batch norm after each 1x1 conv projection, q's, k's, v's and the "
            "output's (iFormer's ConvNorm); with kv_stride 1", choices=("none", "batchnorm")),
        Arg("gate", "bool", False, "v's projection makes 2 value_dim channels through a sigmoid: v the first half, "
            "a gate the second, which multiplies the head's output before the output projection (iFormer's "
            "single-head modulation attention); one head, kv_stride 1"),
    )
    examples = (
        Example((8, 4, 4), {"num_heads": 2}),
        Example((6, 5, 6), {"num_heads": 3, "key_dim": 4, "value_dim": 3, "kv_stride": 2}),
        Example((8, 6, 6), {"num_heads": 2, "key_dim": 4, "value_dim": 4, "kv_stride": 2, "out_features": 12}),
        Example((4, 7, 5), {"num_heads": 1, "key_dim": 3, "value_dim": 5, "kv_stride": 3, "kv_kernel": 5}),
        Example((6, 6, 5), {"num_heads": 2, "key_dim": 3, "value_dim": 4, "kv_stride": 2, "kv_norm": "rmsnorm"}),
        Example((8, 5, 4), {"num_heads": 1, "key_dim": 4, "value_dim": 8, "norm": "batchnorm", "gate": True}),
        Example((6, 4, 4), {"num_heads": 2, "key_dim": 3, "value_dim": 2, "norm": "batchnorm", "out_features": 5}),
        Example((6, 3, 5), {"num_heads": 1, "key_dim": 2, "value_dim": 5, "gate": True}),
        Example((6, 6, 5), {"num_heads": 2, "key_dim": 3, "value_dim": 4, "kv_stride": 2, "kv_padding": "same",
                            "kv_norm": "rmsnorm"}),
        Example((4, 4, 4), {"num_heads": 2, "key_dim": 2, "value_dim": 3, "kv_stride": 2, "kv_padding": "same"}),
    )

    @staticmethod
    def dims(a: Mapping[str, Any], inp: Shape) -> tuple[int, int, int, int, int, int, int]:
        """(C, h, kd, vd, D, N, M)."""
        c, h = inp[0], a["num_heads"]
        kd, vd = a["key_dim"] or c // h, a["value_dim"] or c // h
        n = numel(inp[1:])
        s, k = a["kv_stride"], a["kv_kernel"]
        if s > 1:
            m = numel(tuple((w + sum(p) - k) // s + 1 for w, p in zip(inp[1:], kv_pads(a, inp[1:]))))
        else:
            m = n
        return c, h, kd, vd, a["out_features"] or c, n, m

    def output(self, a: Mapping[str, Any], inp: Shape, warn: Callable[[str], None]) -> Shape:
        if len(inp) != 3:
            raise LayerError(f"multi_query_attention needs a C x H x W grid; its input is {'x'.join(map(str, inp))}")
        c, h = inp[0], a["num_heads"]
        if (not a["key_dim"] or not a["value_dim"]) and c % h:
            raise LayerError(f"multi_query_attention: {c} channels are not divisible by num_heads {h}; give "
                             "key_dim and value_dim")
        if a["kv_stride"] > 1:
            if any(w + sum(p) < a["kv_kernel"] for w, p in zip(inp[1:], kv_pads(a, inp[1:]))):
                raise LayerError(f"multi_query_attention: kv_kernel {a['kv_kernel']} is larger than the padded grid "
                                 f"{'x'.join(map(str, inp[1:]))}")
            if a["norm"] != "none" or a["gate"]:
                raise LayerError("multi_query_attention: norm and gate are with kv_stride 1 (iFormer's attention)")
        if a["gate"] and h != 1:
            raise LayerError("multi_query_attention: gate is for one head (iFormer's single-head attention)")
        return (a["out_features"] or c, *inp[1:])

    def cost(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Cost:
        c, h, kd, vd, d, n, m = self.dims(a, inp)
        strided = a["kv_stride"] > 1
        k2 = a["kv_kernel"] ** 2
        down = 2 * m * c * k2 if strided else 0  # the two depthwise convs
        g = 2 if a["gate"] else 1  # v's projection: v (and the gate)
        macs = n * c * h * kd + m * c * (kd + g * vd) + down + h * n * m * (kd + vd) + n * h * vd * d
        norms = 2 * m * c if strided else 0  # the two norms' elements
        if a["norm"] == "batchnorm" or a["gate"]:
            # (kv_stride 1) a batch norm after each projection: 2 params and 2 buffers per channel (+ a count), 2 per
            # element in fvcore, 4 in full; the gate: the sigmoid (3 per element) and the product (1 per element),
            # which FlopCounterMode and fvcore do not count
            channels = h * kd + kd + g * vd + d if a["norm"] == "batchnorm" else 0
            elements = h * kd * n + kd * m + g * vd * m + d * n if channels else 0
            gating = 3 * g * vd * m + vd * n if a["gate"] else 0
            return Cost(params=c * h * kd + c * (kd + g * vd) + h * vd * d + 2 * channels, buffers=2 * channels,
                        int_buffers=4 if channels else 0, macs=macs, fvcore=macs + 2 * elements,
                        full=2 * macs + h * n * kd + 3 * h * n * m + 4 * elements + gating)
        if a["kv_norm"] == "rmsnorm":  # timm's RmsNorm2d: a weight per channel; FlopCounterMode and fvcore count
            # none of it; full: the square, the sum, the product by 1/rms and the weight's per element, the division
            # by C, eps and the reciprocal square root per position (as `rmsnorm`)
            return Cost(params=c * h * kd + c * (kd + vd) + h * vd * d + (2 * c * k2 + 2 * c if strided else 0),
                        macs=macs, fvcore=macs,
                        full=2 * macs + h * n * kd + 3 * h * n * m + (4 * norms + 6 * m if strided else 0))
        return Cost(params=c * h * kd + c * (kd + vd) + h * vd * d + (2 * c * k2 + 4 * c if strided else 0),
                    buffers=4 * c if strided else 0, int_buffers=2 if strided else 0, macs=macs,
                    fvcore=macs + 2 * norms,
                    full=2 * macs + h * n * kd + 3 * h * n * m + 4 * norms)

    def backward_macs(self, a: Mapping[str, Any], macs: int, inp: Shape = (),
                      divide_groups: bool = False) -> tuple[int, int]:
        # (the input's gradient, the rest), as FlopCounterMode counts them: each conv's and product's backward is
        # two of its forward size (a depthwise conv's weight gradient `groups` = C times its forward unless the
        # installed torch divides by the groups). The input's gradient: through q's conv and, without kv_stride,
        # through k's and v's; with it, through the depthwise convs.
        c, h, kd, vd, d, n, m = self.dims(a, inp)
        batch = macs // self.cost(a, inp, inp).macs
        k2 = a["kv_kernel"] ** 2
        products = h * n * m * (kd + vd)
        vd_in = 2 * vd if a["gate"] else vd  # v's projection's channels
        if a["kv_stride"] > 1:
            down = 2 * m * c * k2
            grad_input = n * c * h * kd + down
            rest = (n * c * h * kd + 2 * m * c * (kd + vd) + (down if divide_groups else down * c) + 2 * products
                    + 2 * n * h * vd * d)
        else:
            grad_input = n * c * (h * kd + kd + vd_in)
            rest = n * c * (h * kd + kd + vd_in) + 2 * products + 2 * n * h * vd * d
        return batch * grad_input, batch * rest

    def saved(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> Saved:
        # The built module (archcalc.torch.modules.MultiQueryAttention) keeps, measured with saved_tensors_hooks
        # (tests/test_kind_rules.py): the input (q's conv, and k's and v's or the depthwise convs); q scaled, laid
        # out per head (h N kd, a copy), and k (kd M) for Q K^T; the softmax weights (h N M, kept by the softmax
        # and by A V) and v (vd M); the joined heads (h vd N, a copy) for the output conv; with kv_stride each batch
        # norm's input (the depthwise conv's output, M C) and output (the 1x1 conv's input, M C), and its batch
        # mean and 1/std (2C, whatever the batch); an RMS norm's input, 1/rms per position (M), x / rms (M C, for
        # its weight) and output.
        # With norm each projection's batch norm its input (the conv's output) and statistics (q's, k's, v's and
        # the output's: h kd N + kd M + vd M + D N and two per channel); with the gate the sigmoid its output (2 vd
        # M: v and the gate are views of it) and the product the joined heads, the output conv the gated ones.
        c, h, kd, vd, d, n, m = self.dims(a, inp)
        strided, rms = a["kv_stride"] > 1, a["kv_norm"] == "rmsnorm"
        path = (3 * m * c + m if rms else 2 * m * c) if strided else 0
        g = 2 if a["gate"] else 1
        extra = h * n * kd + kd * m + h * n * m + g * vd * m + h * vd * n + 2 * path + 2 * self.padded(a, inp)
        if a["gate"]:
            extra += vd * n
        stats = 4 * c if strided and not rms else 0
        if a["norm"] == "batchnorm":
            extra += h * kd * n + kd * m + g * vd * m + d * n
            stats += 2 * (h * kd + kd + g * vd + d)
        return Saved(input=True, extra=((extra, ACTIVATION),), per_batch=((stats, STATISTICS),) if stats else ())

    def transient(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> tuple[tuple[int, int], ...]:
        # The most alive at once while the built module runs at inference, less its output (D N), in the module's
        # order: q (h kd N) and its scaled copy per head; then beside the copy k's path (the depthwise conv's output
        # and the norm's, M C each, and the RMS norm's temporaries: 1/rms and x / rms; then the norm's output and
        # k: kd M) and v's beside k; the scores beside q's copy, k and v (h N M); the weights beside the scores;
        # A V (h N vd) beside the weights and v; the joined heads' copy beside A V; the output beside the joined
        # heads. (The batch norm's CPU scratch is outside, as for `batchnorm`.)
        # With norm each projection's conv output and its norm's at once; with the gate the sigmoid's output (v
        # and the gate, 2 vd M) beside the norm's, and alive to the gate's product.
        c, h, kd, vd, d, n, m = self.dims(a, inp)
        q, w = h * kd * n, h * n * m
        norm = 2 if a["norm"] == "batchnorm" else 1
        gate = a["gate"]
        big_v = (2 if gate else 1) * vd * m  # v's projection (and gate)
        moments = [norm * q, 2 * q, q + norm * kd * m, q + kd * m + big_v + w, big_v + 2 * w,
                   w + big_v + h * n * vd, 2 * h * n * vd + (big_v if gate else 0), h * n * vd + norm * d * n]
        if a["kv_stride"] > 1:
            norm = 3 * m * c + m if a["kv_norm"] == "rmsnorm" else 2 * m * c
            moments += [q + norm, q + m * c + kd * m, q + kd * m + norm, q + kd * m + m * c + vd * m]
            padded = self.padded(a, inp)
            if padded:  # TF-'same': each path's padded copy beside the depthwise conv's output
                moments += [q + padded + m * c, q + kd * m + padded + m * c]
        else:
            moments.append(q + kd * m + (2 if gate or norm == 2 else 1) * big_v)
        return ((max(moments) - d * n, ACTIVATION),)

    @staticmethod
    def padded(a: Mapping[str, Any], inp: Shape) -> int:
        """With kv_padding 'same' and some padding: the padded copy of the grid each path's depthwise conv reads
        (and keeps), C x H_p x W_p; else 0 (the conv pads itself, or nothing)."""
        if a["kv_stride"] == 1 or a["kv_padding"] != "same":
            return 0
        pads = kv_pads(a, inp[1:])
        if not any(b or e for b, e in pads):
            return 0
        return inp[0] * numel(tuple(w + b + e for w, (b, e) in zip(inp[1:], pads)))

    def rf(self, a: Mapping[str, Any], inp: Shape, out: Shape) -> list[RFStep]:
        return [RFStep(whole=True)] * (len(inp) - 1)  # every position attends to every (reduced) key

    def describe(self, a: Mapping[str, Any], inp: Shape) -> str:
        c, h, kd, vd, d, n, m = self.dims(a, inp)
        kv = f", kv stride {a['kv_stride']} ({m} keys, {a['kv_norm']})" if a["kv_stride"] > 1 else ""
        extra = (", batch norms" if a["norm"] == "batchnorm" else "") + (", gated" if a["gate"] else "")
        return f"{h} heads of q {kd}, one k {kd} / v {vd}{kv}{extra}"


__all__ = ["MultiQueryAttention", "kv_padding", "kv_pads", "same_pads"]
