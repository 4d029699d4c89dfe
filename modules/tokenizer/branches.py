"""Pixel branch: a VQGAN-style CNN encoder and decoder (TokenFlow's pixel branch, REFERENCE.md
"NextFlow tokenizer": ch 128, ch_mult [1,1,2,2,4], 16x downsampling at full size).

The downsampling factor (the tokenizer `patch`) is 2**(len(ch_mult) - 1); channels, depth and,
for the decoder, a width multiplier (stage 3 doubles it) are configurable. Both networks are
fully convolutional, so any H x W that the patch divides goes through unchanged.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def norm(channels: int) -> nn.GroupNorm:
    groups = 8 if channels % 8 == 0 else (4 if channels % 4 == 0 else 1)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x_BCHW) + h


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x_BCHW):
        return self.conv(F.pad(x_BCHW, (0, 1, 0, 1)))  # VQGAN's asymmetric pad: exact /2


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x_BCHW):
        return self.conv(F.interpolate(x_BCHW, scale_factor=2.0, mode="nearest"))


class CNNEncoder(nn.Module):
    """Image (B,3,H,W) -> features (B, out_dim, H/patch, W/patch). Also the default
    from-scratch semantic encoder (with its own weights)."""

    def __init__(self, out_dim: int, ch: int = 64, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, in_channels: int = 3):
        super().__init__()
        self.patch = 2 ** (len(ch_mult) - 1)
        chans = [ch * m for m in ch_mult]
        layers: list[nn.Module] = [nn.Conv2d(in_channels, chans[0], 3, padding=1)]
        c = chans[0]
        for level, c_level in enumerate(chans):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(c, c_level))
                c = c_level
            if level < len(chans) - 1:
                layers.append(Downsample(c))
        layers += [ResBlock(c, c), norm(c), nn.SiLU(), nn.Conv2d(c, out_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        return self.net(x_B3HW)


class CNNDecoder(nn.Module):
    """Features (B, in_dim, h, w) -> image (B,3,h*patch,w*patch). `width` multiplies every
    channel count (REFERENCE.md: stage 3 gives the pixel decoder 2x capacity)."""

    def __init__(self, in_dim: int, ch: int = 64, ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4),
                 num_res_blocks: int = 2, width: float = 1.0, out_channels: int = 3):
        super().__init__()
        self.patch = 2 ** (len(ch_mult) - 1)
        chans = [max(8, int(round(ch * m * width))) for m in ch_mult]
        c = chans[-1]
        layers: list[nn.Module] = [nn.Conv2d(in_dim, c, 3, padding=1), ResBlock(c, c)]
        for level in reversed(range(len(chans))):
            for _ in range(num_res_blocks + 1):  # VQGAN: one more block per level than the encoder
                layers.append(ResBlock(c, chans[level]))
                c = chans[level]
            if level > 0:
                layers.append(Upsample(c))
        layers += [norm(c), nn.SiLU(), nn.Conv2d(c, out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    @property
    def last_layer(self) -> torch.Tensor:
        """Weight of the output conv (where VQGAN's adaptive GAN weight compares gradients)."""
        return self.net[-1].weight

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        return self.net(z_BChw)


@torch.no_grad()
def widen_decoder(old: CNNDecoder, new: CNNDecoder, noise: float = 0.01) -> bool:
    """Net2WiderNet-style init of a decoder with an integer multiple of `old`'s channels: every
    channel is repeated (interleaved, so GroupNorm groups hold copies of the same channels and
    their statistics are unchanged) and incoming weights are divided by the repeat, so `new`
    computes what `old` computes (Chen et al. 2016, Net2Net); `noise` (relative) breaks the
    symmetry between copies. Returns False (new left as is) when the layouts do not match."""
    pairs = list(zip(old.modules(), new.modules()))
    if len(list(old.modules())) != len(list(new.modules())):
        return False
    for a, b in pairs:
        if type(a) is not type(b):
            return False
        if isinstance(a, nn.GroupNorm) and (a.num_groups != b.num_groups or b.num_channels % a.num_channels):
            return False
        if isinstance(a, nn.Conv2d) and (b.out_channels % a.out_channels or b.in_channels % a.in_channels):
            return False
    for a, b in pairs:
        if isinstance(a, nn.Conv2d):
            r_out, r_in = b.out_channels // a.out_channels, b.in_channels // a.in_channels
            w = a.weight.repeat_interleave(r_out, 0).repeat_interleave(r_in, 1) / r_in
            b.weight.copy_(w + noise * w.std() * torch.randn_like(w))
            b.bias.copy_(a.bias.repeat_interleave(r_out))
        elif isinstance(a, nn.GroupNorm):
            r = b.num_channels // a.num_channels
            b.weight.copy_(a.weight.repeat_interleave(r))
            b.bias.copy_(a.bias.repeat_interleave(r))
    return True
