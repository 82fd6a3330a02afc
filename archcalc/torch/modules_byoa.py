"""torch modules of the byoanet attention kinds (archcalc.core.kinds.byoa): halo attention, which with one block
over the whole grid is BoTNet's bottleneck attention. Written in timm's order of ops (timm/layers/halo_attn.py and
bottleneck_attn.py), so FlopCounterMode and fvcore count what timm's modules run."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HaloAttention(nn.Module):
    """Multi-head attention within blocks of a C x H x W grid, keys and values from each block and a halo around it
    (Vaswani et al. 2021, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones"; timm's HaloAttn);
    one block over the whole grid without a halo is BoTNet's (Srinivas et al. 2021; timm's BottleneckAttn). q from
    a 1 x 1 conv (strided by `query_stride`), k and v from another, zero-padded by the halo and unfolded into
    (block + 2 halo)^2 windows; per head softmax(Q K^T / sqrt(dk) + R) V, R the 2-D relative logits of q with a
    height and a width table; the heads joined on the grid; a 2 x 2 average pool with `pool`."""

    @staticmethod
    def rel_logits_1d(q: torch.Tensor, rel: torch.Tensor, win: int) -> torch.Tensor:
        """Relative logits along the last axis of q (n x rows x cols x d) from a (2 win - 1) x d table: n x rows x
        cols x win, the logit of each query and each key column of its window (Bello et al. 2019, "Attention
        Augmented Convolutional Networks": the products with every relative offset, shifted to absolute positions by
        a pad and a reshape). A static method, so `archcalc export` copies it with the class."""
        n, rows, cols, _ = q.shape
        size = rel.shape[0]
        x = (q @ rel.transpose(-1, -2)).reshape(-1, cols, size)
        x = F.pad(x, [0, 1]).flatten(1)
        x = F.pad(x, [0, size - cols])
        x = x.reshape(-1, cols + 1, size)[:, :cols, win - 1:]
        return x.reshape(n, rows, cols, win)

    def __init__(self, channels: int, out: int, num_heads: int, key_dim: int, block: tuple[int, int], halo: int,
                 query_stride: int, pool: bool, bias: bool) -> None:
        super().__init__()
        self.heads, self.dk, self.dv = num_heads, key_dim, out // num_heads
        self.block, self.halo, self.query_stride = block, halo, query_stride
        self.win = (block[0] + 2 * halo, block[1] + 2 * halo)
        self.scale = key_dim ** -0.5
        self.q = nn.Conv2d(channels, num_heads * key_dim, 1, stride=query_stride, bias=bias)
        self.kv = nn.Conv2d(channels, num_heads * (key_dim + self.dv), 1, bias=bias)
        self.height_rel = nn.Parameter(torch.randn(2 * self.win[0] - 1, key_dim) * self.scale)
        self.width_rel = nn.Parameter(torch.randn(2 * self.win[1] - 1, key_dim) * self.scale)
        self.pool = nn.AvgPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        bh, bw = self.block
        nh, nw = height // bh, width // bw
        qh, qw = bh // self.query_stride, bw // self.query_stride
        h, dk, dv = self.heads, self.dk, self.dv
        # q laid out per head and block: B h x blocks x queries x dk (one copy, whatever the layout allowed)
        q = self.q(x).reshape(b * h, dk, nh, qh, nw, qw).permute(0, 2, 4, 3, 5, 1).reshape(
            b * h, nh * nw, qh * qw, dk).contiguous()
        kv = self.kv(x)
        if self.halo:
            kv = F.pad(kv, [self.halo] * 4)
        # each block's window of keys and values: B h x blocks x window x (dk + dv), one copy
        kv = kv.unfold(2, self.win[0], bh).unfold(3, self.win[1], bw).reshape(
            b, h, dk + dv, nh, nw, self.win[0], self.win[1]).permute(0, 1, 3, 4, 5, 6, 2).reshape(
            b * h, nh * nw, self.win[0] * self.win[1], dk + dv).contiguous()
        k, v = torch.split(kv, [dk, dv], dim=-1)
        attn = (q @ k.transpose(-1, -2)).mul_(self.scale)
        # the relative logits added in place (timm adds the two tables' logits, then the sum to the scores)
        rows = q.reshape(-1, qh, qw, dk)
        w = self.rel_logits_1d(rows, self.width_rel, self.win[1])  # n x qh x qw x win_w
        scores = attn.view(-1, qh, qw, self.win[0], self.win[1]).add_(w.unsqueeze(-2))
        del w
        hh = self.rel_logits_1d(rows.transpose(1, 2), self.height_rel, self.win[0])  # n x qw x qh x win_h
        scores.add_(hh.transpose(1, 2).unsqueeze(-1))
        del hh, scores
        attn = attn.softmax(dim=-1)
        out = (attn @ v).reshape(b, h, nh, nw, qh, qw, dv).permute(0, 1, 6, 2, 4, 3, 5).reshape(
            b, h * dv, nh * qh, nw * qw).contiguous()
        return self.pool(out)


class LambdaLayer(nn.Module):
    """A lambda layer (Bello 2021, "LambdaNetworks: Modeling Long-Range Interactions Without Attention"; timm's
    LambdaLayer) on a C x H x W grid: q (heads x dk), k (dk) and v (dv = C / heads) from one 1 x 1 conv, q and v
    batch-normed, k softmax-normalised over the positions; the content lambda K V (dk x dv) shared by every
    position, a position lambda per position from a r x r x 1 conv3d over (H, W, dv) (`r`) or, with r = 0, a
    relative position embedding over the whole grid gathered by an index buffer; each head's q times both
    lambdas, the two outputs added; a 2 x 2 average pool with `pool`. timm's order of ops."""

    def __init__(self, channels: int, num_heads: int, key_dim: int, r: int, grid: tuple[int, int], pool: bool,
                 bias: bool) -> None:
        super().__init__()
        self.heads, self.dk, self.dv = num_heads, key_dim, channels // num_heads
        self.qkv = nn.Conv2d(channels, num_heads * key_dim + key_dim + self.dv, 1, bias=bias)
        self.norm_q = nn.BatchNorm2d(num_heads * key_dim)
        self.norm_v = nn.BatchNorm2d(self.dv)
        self.conv_lambda: nn.Module | None = None
        self.pos_emb: nn.Parameter | None = None
        if r:
            self.conv_lambda = nn.Conv3d(1, key_dim, (r, r, 1), padding=(r // 2, r // 2, 0))
        else:
            height, width = grid
            self.pos_emb = nn.Parameter(torch.randn(2 * height - 1, 2 * width - 1, key_dim) * 0.02)
            ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
            pos = torch.stack([ys.flatten(), xs.flatten()])  # 2 x M
            rel = pos[:, None, :] - pos[:, :, None]  # the offset of each key from each query
            rel[0] += height - 1
            rel[1] += width - 1
            self.register_buffer("rel_pos_indices", rel, persistent=False)
        self.pool = nn.AvgPool2d(2, 2) if pool else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        m = height * width
        q, k, v = torch.split(self.qkv(x), [self.heads * self.dk, self.dk, self.dv], dim=1)
        q = self.norm_q(q).reshape(b, self.heads, self.dk, m).transpose(-1, -2)  # B x h x M x dk
        v = self.norm_v(v).reshape(b, self.dv, m).transpose(-1, -2)  # B x M x dv
        k = F.softmax(k.reshape(b, self.dk, m), dim=-1)  # B x dk x M
        content_out = q @ (k @ v).unsqueeze(1)  # B x h x M x dv
        if self.conv_lambda is not None:
            position = self.conv_lambda(v.reshape(b, 1, height, width, self.dv))  # B x dk x H x W x dv
            position = position.reshape(b, 1, self.dk, m, self.dv).transpose(2, 3)  # B x 1 x M x dk x dv
        else:
            assert self.pos_emb is not None
            index = self.get_buffer("rel_pos_indices")
            emb = self.pos_emb[index[0], index[1]].expand(b, -1, -1, -1)
            position = (emb.transpose(-1, -2) @ v.unsqueeze(1)).unsqueeze(1)  # B x 1 x M x dk x dv
        position_out = (q.unsqueeze(-2) @ position).squeeze(-2)  # B x h x M x dv
        out = (content_out + position_out).transpose(-1, -2).reshape(b, c, height, width)
        return self.pool(out)


class BilinearAttention(nn.Module):
    """BAT's bilinear attention transform (Zheng et al. 2020, "Learning Non-Local Spatial Correlations ...";
    timm's BilinearAttnTransform) on a C x H x W grid, in timm's order of ops: a 1 x 1 conv to `groups` channels
    (batch norm, ReLU); row and column max pools to b x 1 and 1 x b; a (b, 1) and a (1, b) conv to b^2 per group,
    sigmoid, each normalised to sum to 1 along a row or a column: two b x b mixing matrices per group, repeated
    over the group's C / groups channels and blown up to H x H and W x W (each entry times an identity); y = P x Q
    per channel; a 1 x 1 conv (batch norm, ReLU)."""

    def __init__(self, channels: int, block: int, groups: int) -> None:
        super().__init__()
        self.block, self.groups = block, groups
        self.conv1 = nn.Conv2d(channels, groups, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(groups)
        self.conv_p = nn.Conv2d(groups, block * block * groups, kernel_size=(block, 1))
        self.conv_q = nn.Conv2d(groups, block * block * groups, kernel_size=(1, block))
        self.conv2 = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def resize(self, x: torch.Tensor, t: int) -> torch.Tensor:
        b, c, block, _ = x.shape
        if t <= 1:
            return x
        x = x.view(b * c, -1, 1, 1) * torch.eye(t, t, dtype=x.dtype, device=x.device)
        x = x.view(b * c, block, block, t, t)
        x = torch.cat(torch.split(x, 1, dim=1), dim=3)
        x = torch.cat(torch.split(x, 1, dim=2), dim=4)
        return x.view(b, c, block * t, block * t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        g, s = self.groups, self.block
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        p = self.conv_p(F.adaptive_max_pool2d(out, (s, 1))).view(b, g, s, s).sigmoid()
        q = self.conv_q(F.adaptive_max_pool2d(out, (1, s))).view(b, g, s, s).sigmoid()
        p = p / p.sum(dim=3, keepdim=True)
        q = q / q.sum(dim=2, keepdim=True)
        p = p.view(b, g, 1, s, s).expand(b, g, c // g, s, s).contiguous().view(b, c, s, s)
        q = q.view(b, g, 1, s, s).expand(b, g, c // g, s, s).contiguous().view(b, c, s, s)
        y = self.resize(p, height // s).matmul(x).matmul(self.resize(q, width // s))
        return F.relu(self.bn2(self.conv2(y)), inplace=True)
