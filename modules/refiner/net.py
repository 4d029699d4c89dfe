"""RefinerNet: a small conditional UNet in pixel space with FiLM timestep conditioning.

Input channels: the noisy residual x_t (3), the tokenizer's decoded image (3) and the code
features f̂ (the multi-scale sum Σ_k φ_k(up(e[idx_k])), semantic + pixel channels) projected by
a 1x1 conv on the token grid and nearest-upsampled to the image (DiTo: latent nearest-upsampled and
concatenated with the noisy image as channels). Output: 3 channels (a velocity, or the residual
itself for the regression control). The last conv starts at zero, so an untrained refiner
returns the decoder's image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class RefinerConfig:
    ch: int = 32
    ch_mult: tuple[int, ...] = (1, 2, 2)  # one level per entry; each after the first halves the side
    blocks: int = 1  # FiLM residual blocks per level (down and up paths)
    cond_feature_dim: int = 40  # channels of f̂ (tokenizer sem_dim + pix_dim)
    feature_proj: int = 16  # f̂ channels after the 1x1 projection
    t_dim: int = 64

    @classmethod
    def tiny(cls, cond_feature_dim: int = 40) -> "RefinerConfig":
        return cls(ch=8, ch_mult=(1, 2), blocks=1, cond_feature_dim=cond_feature_dim, feature_proj=4, t_dim=16)


def timestep_embedding(t_B: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of t in [0, 1] (scaled by 1000; DDPM / "Attention is all you need")."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t_B.device, dtype=torch.float32) / half)
    args_BH = 1000.0 * t_B.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args_BH), torch.sin(args_BH)], dim=1)


def _groups(ch: int) -> int:
    return math.gcd(8, ch)


class FiLMResBlock(nn.Module):
    """GroupNorm-SiLU-conv, then FiLM (h·(1 + γ(t)) + β(t), Perez et al. 2018) on the second norm."""

    def __init__(self, ch_in: int, ch_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(ch_in), ch_in), nn.Conv2d(ch_in, ch_out, 3, padding=1)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(ch_out), ch_out), nn.Conv2d(ch_out, ch_out, 3, padding=1)
        self.film = nn.Linear(t_dim, 2 * ch_out)
        self.skip = nn.Conv2d(ch_in, ch_out, 1) if ch_in != ch_out else nn.Identity()

    def forward(self, x_BCHW: torch.Tensor, temb_BT: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCHW)))
        gamma_BC, beta_BC = self.film(temb_BT).chunk(2, dim=1)
        h = self.norm2(h) * (1 + gamma_BC[..., None, None]) + beta_BC[..., None, None]
        return self.skip(x_BCHW) + self.conv2(F.silu(h))


class RefinerNet(nn.Module):
    def __init__(self, config: RefinerConfig | None = None):
        super().__init__()
        self.config = c = config or RefinerConfig()
        self.t_mlp = nn.Sequential(nn.Linear(c.t_dim, c.t_dim), nn.SiLU(), nn.Linear(c.t_dim, c.t_dim))
        self.feature_proj = nn.Conv2d(c.cond_feature_dim, c.feature_proj, 1)
        self.stem = nn.Conv2d(3 + 3 + c.feature_proj, c.ch * c.ch_mult[0], 3, padding=1)
        chans = [c.ch * m for m in c.ch_mult]
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, ch in enumerate(chans):
            prev = chans[max(0, i - 1)]
            self.down.append(nn.ModuleList(FiLMResBlock(prev if j == 0 else ch, ch, c.t_dim) for j in range(c.blocks)))
            self.downsample.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1) if i < len(chans) - 1 else nn.Identity())
        self.mid = FiLMResBlock(chans[-1], chans[-1], c.t_dim)
        self.up = nn.ModuleList()
        for i in reversed(range(len(chans))):
            nxt = chans[max(0, i - 1)]
            self.up.append(nn.ModuleList(FiLMResBlock(2 * chans[i] if j == 0 else nxt, nxt, c.t_dim)
                                         for j in range(c.blocks)))
        self.out_norm = nn.GroupNorm(_groups(chans[0]), chans[0])
        self.out = nn.Conv2d(chans[0], 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def factor(self) -> int:
        """Image sides must be multiples of this."""
        return 2 ** (len(self.config.ch_mult) - 1)

    def forward(self, x_t_B3HW: torch.Tensor, t_B: torch.Tensor, decoded_B3HW: torch.Tensor,
                features_BChw: torch.Tensor) -> torch.Tensor:
        H, W = x_t_B3HW.shape[-2:]
        if H % self.factor or W % self.factor:
            raise ValueError(f"refiner input {H}x{W} is not a multiple of {self.factor} px")
        temb = self.t_mlp(timestep_embedding(t_B, self.config.t_dim))
        feat = F.interpolate(self.feature_proj(features_BChw), size=(H, W), mode="nearest")
        h = self.stem(torch.cat([x_t_B3HW, decoded_B3HW, feat], dim=1))
        skips = []
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, temb)
            skips.append(h)
            h = down(h)
        h = self.mid(h, temb)
        for blocks in self.up:
            skip = skips.pop()
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = torch.cat([h, skip], dim=1)
            for block in blocks:
                h = block(h, temb)
        return self.out(F.silu(self.out_norm(h)))
