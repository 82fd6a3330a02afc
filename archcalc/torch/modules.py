"""The few torch modules archcalc needs beyond torch.nn (the recipes in archcalc.torch.recipes use them)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

Pads = Sequence[tuple[int, int]]


def f_pad(pads: Pads) -> tuple[int, ...]:
    # F.pad takes (last axis before, last axis after, second-to-last before, ...).
    flat: list[int] = []
    for before, after in reversed(list(pads)):
        flat += [before, after]
    return tuple(flat)


def symmetric(pads: Pads) -> bool:
    return all(before == after for before, after in pads)


class AsymmetricPadConv(nn.Module):
    """A convolution whose padding differs before and after (TensorFlow SAME with stride > 1).

    Parameters stay `weight` and `bias` (the padding is applied functionally), so names match the spec.
    """

    def __init__(self, conv: nn.Module, pads: Pads) -> None:
        super().__init__()
        self.pad = f_pad(pads)
        self.weight = conv.weight
        self.bias = conv.bias
        self._conv: Any = conv._conv_forward  # type: ignore[attr-defined]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv(F.pad(x, self.pad), self.weight, self.bias)


class StdConv(nn.Module):
    """A convolution whose weight is standardised per filter at each forward (weight standardisation, as timm's
    StdConv2d; with `gain`, times a learned gain per filter and gamma / sqrt(fan-in), as ScaledStdConv2d), by
    F.batch_norm over the weight. 1-, 2- or 3-D by the kernel's length; `pads` (before, after) per axis, applied
    with F.pad when they differ. Parameters: weight, bias, gain."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Sequence[int], stride: Sequence[int],
                 pads: Pads, dilation: Sequence[int], groups: int, bias: bool, eps: float, gain: bool,
                 gamma: float) -> None:
        super().__init__()
        self.stride, self.dilation, self.groups, self.eps = tuple(stride), tuple(dilation), groups, eps
        same = all(before == after for before, after in pads)  # (symmetric: the convolution pads)
        self.pad = () if same else f_pad(pads)
        self.padding = tuple(p for p, _ in pads) if same else (0,) * len(pads)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.gain = nn.Parameter(torch.ones(out_channels, *(1,) * (len(kernel_size) + 1))) if gain else None
        self.scale = gamma * self.weight[0].numel() ** -0.5  # gamma / sqrt(fan-in)
        nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)  # nn.Conv's initialisation
        self.conv: Any = (F.conv1d, F.conv2d, F.conv3d)[len(kernel_size) - 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, self.pad)
        # (the gain times its factor is an argument, not a local: freed when batch_norm returns, as in timm)
        weight = F.batch_norm(self.weight.reshape(1, self.weight.shape[0], -1), None, None,
                              weight=None if self.gain is None else (self.gain * self.scale).view(-1),
                              training=True, momentum=0.0, eps=self.eps).reshape_as(self.weight)
        return self.conv(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class PaddedPool(nn.Module):
    """A pooling layer with asymmetric padding: pads with -inf (max) or zeros (avg), then pools unpadded.

    `pads` come from the kind's explicit_pads: with ceil_mode the after-padding may be cut so that no window starts
    in it, as with symmetric padding."""

    def __init__(self, pool: nn.Module, pads: Pads, value: float) -> None:
        super().__init__()
        self.pool = pool
        self.pad = f_pad(pads)
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.pad(x, self.pad, value=self.value))


class FlattenLinear(nn.Linear):
    """nn.Linear that first flattens a C x H x W input to one vector per sample (a view, no copy)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.flatten(1) if x.dim() > 2 else x)


class Bias(nn.Module):
    """A learned additive bias of a given per-sample shape (broadcast over the batch and any size-1 axes)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(*shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


class Scalar(nn.Module):
    """Arithmetic with a constant: x + c, x - c, c - x, x * c, x / c, x ** c."""

    def __init__(self, op: str, value: float) -> None:
        super().__init__()
        self.op = op
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.value
        return {"add": lambda: x + c, "sub": lambda: x - c, "rsub": lambda: c - x, "mul": lambda: x * c,
                "div": lambda: x / c, "pow": lambda: x ** c}[self.op]()


class Maxout(nn.Module):
    """Maxout (Goodfellow et al. 2013): the maximum over groups of `pieces` consecutive channels."""

    def __init__(self, pieces: int) -> None:
        super().__init__()
        self.pieces = pieces

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, *rest = x.shape
        return x.view(n, c // self.pieces, self.pieces, *rest).amax(dim=2)

    def extra_repr(self) -> str:
        return f"pieces={self.pieces}"


class ChannelSliceModule(nn.Module):
    """x[:, start:stop]: a view of a range of channels."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.start:self.stop]

    def extra_repr(self) -> str:
        return f"start={self.start}, stop={self.stop}"


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of each position, as torchvision's ConvNeXt computes it: permute to
    channels-last, F.layer_norm over C, permute back."""

    def __init__(self, num_channels: int, eps: float = 1e-6, elementwise_affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__(num_channels, eps, elementwise_affine, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = list(range(x.dim()))
        last = dims[:1] + dims[2:] + dims[1:2]  # N, *spatial, C
        back = [0, x.dim() - 1] + list(range(1, x.dim() - 1))
        x = x.permute(*last)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(*back)


class GRN(nn.Module):
    """Global Response Normalization (ConvNeXt-V2, Woo et al. 2023), channels first, written as timm writes it:
    gx = the L2 norm over the spatial axes, nx = gx / (mean of gx over channels + eps), x + (bias + weight * x * nx).
    """

    def __init__(self, channels: int, rank: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.spatial = tuple(range(2, rank + 2))
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.zeros(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = x.norm(p=2, dim=self.spatial, keepdim=True)
        nx = gx / (gx.mean(dim=1, keepdim=True) + self.eps)
        return x + torch.addcmul(self.bias.view(self.shape), self.weight.view(self.shape), x * nx)


class EvoNormS0(nn.Module):
    """EvoNorm-S0 (Liu et al. 2020), as timm's EvoNorm2dS0 computes it: x * sigmoid(v * x) / group_std(x) * weight +
    bias, or without v x / group_std(x) * weight + bias; group_std the square root of each group's biased variance
    plus eps, expanded back to x's shape."""

    def __init__(self, channels: int, rank: int, groups: int, eps: float, act: bool) -> None:
        super().__init__()
        self.groups, self.eps = groups, eps
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.v = nn.Parameter(torch.ones(channels)) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        grouped = x.reshape(n, self.groups, c // self.groups, *x.shape[2:])
        dims = tuple(range(2, grouped.dim()))
        std = grouped.var(dim=dims, unbiased=False, keepdim=True).add(self.eps).sqrt()
        std = std.expand(grouped.shape).reshape(x.shape)
        if self.v is not None:
            x = x * (x * self.v.view(self.shape)).sigmoid()
        return x / std * self.weight.view(self.shape) + self.bias.view(self.shape)


class RMSNorm(nn.Module):
    """RMS normalization over the channels of each position, as timm's rms_norm2d computes it (x * rsqrt(mean of x^2
    over dim 1 + eps) * weight); with statistic 'variance', as its SimpleNorm2d (channels-last, the variance over
    the channels in place of the mean square)."""

    def __init__(self, channels: int, rank: int, eps: float, elementwise_affine: bool, statistic: str) -> None:
        super().__init__()
        self.eps, self.statistic = eps, statistic
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.ones(channels)) if elementwise_affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.statistic == "variance":
            rank = x.dim()
            x = x.permute(0, *range(2, rank), 1)
            v = torch.var(x, dim=(-1,), keepdim=True)
            x = x * torch.rsqrt(v + self.eps)
            if self.weight is not None:
                x = x * self.weight
            return x.permute(0, rank - 1, *range(1, rank - 1))
        v = x.pow(2)
        v = torch.mean(v, dim=1, keepdim=True)
        x = x * torch.rsqrt(v + self.eps)
        if self.weight is not None:
            x = x * self.weight.reshape(self.shape)
        return x


class FRN(nn.Module):
    """Filter Response Normalization (Singh and Krishnan 2019) as timm's FilterResponseNormTlu2d computes it:
    x * rsqrt(mean of x^2 over the spatial axes + eps) * weight + bias, then max(., tau) with tlu."""

    def __init__(self, channels: int, rank: int, eps: float, tlu: bool) -> None:
        super().__init__()
        self.eps = eps
        self.spatial = tuple(range(2, rank + 2))
        self.shape = (1, -1, *(1,) * rank)
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.tau = nn.Parameter(torch.zeros(channels)) if tlu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * x.square().mean(dim=self.spatial, keepdim=True).add(self.eps).rsqrt().expand(x.shape)
        x = x * self.weight.view(self.shape) + self.bias.view(self.shape)
        return torch.maximum(x, self.tau.reshape(self.shape)) if self.tau is not None else x


class LayerScale(nn.Module):
    """x * gamma with a learned per-channel gamma (ConvNeXt's layer_scale)."""

    def __init__(self, shape: Sequence[int], init: float = 1e-6) -> None:
        super().__init__()
        self.shape = tuple(shape)
        self.init = init
        self.gamma = nn.Parameter(torch.full(self.shape, float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class StochasticDepth(nn.Module):
    """torchvision.ops.StochasticDepth: the identity at inference; in training drops a sample's (mode 'row') or
    the batch's ('batch') input with probability p and divides the survivors by 1 - p."""

    def __init__(self, p: float, mode: str = "row") -> None:
        super().__init__()
        self.p = p
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0]] + [1] * (x.dim() - 1) if self.mode == "row" else [1] * x.dim()
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


class Mean(nn.Module):
    """x.mean(dims): MNASNet's and ShuffleNetV2's global pooling in torchvision."""

    def __init__(self, dims: Sequence[int], keepdim: bool = False) -> None:
        super().__init__()
        self.dims = tuple(dims)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(list(self.dims), keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dims={self.dims}, keepdim={self.keepdim}"


class Reshape(nn.Module):
    """x.view(B, *shape, *x.shape[-keep:]): ECA's view of C pooled channels as one 1-D signal for a Conv1d, and
    back; ResNeSt's view of radix x C channels as (radix, C) with the spatial axes kept."""

    def __init__(self, shape: Sequence[int] | int, keep: int = 0) -> None:
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.keep = keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape, *x.shape[x.dim() - self.keep:])

    def extra_repr(self) -> str:
        return f"shape={self.shape}, keep={self.keep}"


class BlurPool(nn.Module):
    """Anti-aliased downsampling (Zhang 2019; timm's BlurPool2d): pad, then a depthwise conv with a fixed binomial
    filter, held in a buffer (not a parameter)."""

    def __init__(self, channels: int, kernel_size: Sequence[int], stride: Sequence[int], pads: Pads,
                 padding_mode: str) -> None:
        super().__init__()
        rows = []
        for k in kernel_size:
            taps = [1.0]
            for _ in range(k - 1):  # Pascal's triangle: the binomial coefficients C(k - 1, i)
                taps = [a + b for a, b in zip([0.0, *taps], [*taps, 0.0])]
            row = torch.tensor(taps, dtype=torch.float32)
            rows.append(row / row.sum())
        filt = rows[0][:, None] * rows[1][None, :]
        self.register_buffer("filt", filt[None, None].repeat(channels, 1, 1, 1), persistent=False)
        self.stride = tuple(stride)
        self.pad = f_pad(pads)
        self.mode = "reflect" if padding_mode == "reflect" else "constant"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode=self.mode)
        return F.conv2d(x, self.get_buffer("filt"), stride=self.stride, groups=x.shape[1])

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad={self.pad}, mode={self.mode}"


class SpaceToDepth(nn.Module):
    """TensorFlow's space_to_depth (TResNet's stem): each r x r block of positions into the channels, block position
    first: view as (C, H/r, r, W/r, r), permute the two r axes before C, view as (r*r*C, H/r, W/r)."""

    def __init__(self, block_size: int) -> None:
        super().__init__()
        self.block_size = block_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        r = self.block_size
        x = x.view(n, c, h // r, r, w // r, r).permute(0, 3, 5, 1, 2, 4).contiguous()
        return x.view(n, c * r * r, h // r, w // r)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}"


class Sum(nn.Module):
    """x.sum(dim): ResNeSt's and SKNet's sum over a split sample's branches."""

    def __init__(self, dim: int, keepdim: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(self.dim, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class Transpose(nn.Module):
    """x.transpose(dim0, dim1): a view."""

    def __init__(self, dim0: int, dim1: int) -> None:
        super().__init__()
        self.dim0 = dim0
        self.dim1 = dim1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"dim0={self.dim0}, dim1={self.dim1}"


class CenterCrop(nn.Module):
    """x[..., o:o+s, ...] per spatial axis: a view (U-Net's crop before concatenation)."""

    def __init__(self, offsets: Sequence[int], sizes: Sequence[int]) -> None:
        super().__init__()
        self.offsets = tuple(offsets)
        self.sizes = tuple(sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = (slice(None), slice(None)) + tuple(slice(o, o + s) for o, s in zip(self.offsets, self.sizes))
        return x[index]

    def extra_repr(self) -> str:
        return f"offsets={self.offsets}, sizes={self.sizes}"


class DFL(nn.Module):
    """Ultralytics' DFL: softmax over each box side's reg_max bins, then their expectation (a 1x1 conv with the
    weights 0..reg_max-1); 4 x reg_max channels in, 4 out, any spatial shape. `shared`: the weights are an earlier
    DFL's, so this one holds none (made in forward)."""

    def __init__(self, reg_max: int = 16, shared: bool = False) -> None:
        super().__init__()
        self.reg_max, self.shared = reg_max, shared
        bins = torch.arange(reg_max, dtype=torch.float).view(1, reg_max, 1, 1)
        if shared:  # a plain tensor, neither parameter nor buffer: made once, moved at the first use elsewhere
            self._bins = bins
        else:
            self.weight = nn.Parameter(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, spatial = x.shape[0], x.shape[2:]
        if self.shared and (self._bins.device != x.device or self._bins.dtype != x.dtype):
            self._bins = self._bins.to(x)
        w = self._bins if self.shared else self.weight
        bins = x.reshape(b, 4, self.reg_max, -1).transpose(2, 1).softmax(1)
        return F.conv2d(bins, w).reshape(b, 4, *spatial)

    def extra_repr(self) -> str:
        return f"reg_max={self.reg_max}, shared={self.shared}"


class PSAAttention(nn.Module):
    """The attention of Ultralytics' PSABlock: qkv 1x1 conv + BN, per-head softmax(q^T k * scale), v attn^T, plus a
    depthwise 3x3 conv + BN of v, then a 1x1 conv + BN."""

    def __init__(self, dim: int, num_heads: int = 8, attn_ratio: float = 0.5) -> None:
        super().__init__()
        self.dim, self.num_heads, self.attn_ratio = dim, num_heads, attn_ratio
        self.head_dim = dim // num_heads
        self.key_dim = int(self.head_dim * attn_ratio)
        self.scale = self.key_dim**-0.5
        self.qkv = self.conv_bn(dim, dim + 2 * self.key_dim * num_heads)
        self.proj = self.conv_bn(dim, dim)
        self.pe = self.conv_bn(dim, dim, 3, g=dim)

    @staticmethod
    def conv_bn(c1: int, c2: int, k: int = 1, g: int = 1) -> nn.Sequential:
        """Ultralytics' Conv with act=False: conv (no bias, padding k // 2), then BatchNorm2d."""
        seq = nn.Sequential()
        seq.add_module("conv", nn.Conv2d(c1, c2, k, 1, k // 2, groups=g, bias=False))
        seq.add_module("bn", nn.BatchNorm2d(c2))
        return seq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = h * w
        q, k, v = self.qkv(x).view(b, self.num_heads, self.key_dim * 2 + self.head_dim, n).split(
            [self.key_dim, self.key_dim, self.head_dim], dim=2)
        attn = ((q * self.scale).transpose(-2, -1) @ k).softmax(dim=-1)
        y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
        return self.proj(y)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, attn_ratio={self.attn_ratio}"


# ---- tokens and attention (archcalc.core.kinds.tokens) ---------------------------------------------------------------


class ToTokens(nn.Module):
    """B x C x (spatial) -> B x N x C: flatten the spatial axes and move the channels last (a view, as torchvision's
    ViT writes it: reshape to B x C x N, then permute)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)


class ToGrid(nn.Module):
    """B x N x C -> B x C x (size): the channels first again, the tokens laid out on the grid (a copy: the
    transposed tokens are not contiguous)."""

    def __init__(self, size: Sequence[int]) -> None:
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], *self.size)


class ClassToken(nn.Module):
    """A learned token put before the sequence (torchvision's VisionTransformer: `class_token`, expanded over the
    batch and concatenated)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.class_token = nn.Parameter(torch.zeros(1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)


class PositionEmbedding(nn.Module):
    """A learned N x C tensor added to the tokens (torchvision's Encoder: `input + self.pos_embedding`)."""

    def __init__(self, tokens: int, channels: int) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, tokens, channels).normal_(std=0.02))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_embedding


class TakeToken(nn.Module):
    """x[:, index]: one token of a B x N x C sequence (torchvision's ViT takes the class token, `x[:, 0]`)."""

    def __init__(self, index: int = 0) -> None:
        super().__init__()
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, self.index]


class SelfAttention(nn.Module):
    """Multi-head self-attention over B x N x C tokens, computed as PyTorch's math path does (the reference
    `scaled_dot_product_attention` in torch.nn.functional's docs): one linear layer makes q, k and v, each head
    takes Q K^T / sqrt(d) and a softmax over the keys, then A V; the heads are joined and projected. Its parameters
    are nn.MultiheadAttention's (in_proj: 3C x C and 3C, out_proj: C x C and C). Written out so that every
    product is an op torch's FlopCounterMode and fvcore count (their fused kernels count nothing on the CPU:
    docs/conventions.md)."""

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, qkv_bias: bool = True) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias and qkv_bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        h = self.num_heads
        q, k, v = self.in_proj(x).reshape(b, n, 3, h, c // h).permute(2, 0, 3, 1, 4).unbind(0)
        # k and v as contiguous B x h x N x d copies: the products then keep these (at every batch size), not the
        # whole q/k/v tensor as they would at batch 1.
        weights = ((q * (c // h) ** -0.5) @ k.contiguous().transpose(-2, -1)).softmax(dim=-1)
        return self.out_proj((weights @ v.contiguous()).transpose(1, 2).reshape(b, n, c))
