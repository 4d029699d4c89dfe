"""Multiscale 3D RoPE and the image-token scale embeddings (NF §3.2).

Every token has a 3D position (t, row, col):
  text token at sequence position t  -> (t, t, t)
  image token (i, j) on an H×W grid  -> (offset + s, C/√(HW)·(i + 0.5), C/√(HW)·(j + 0.5))
so every grid maps onto the same spatial range [0, C] (no extrapolation when the resolution
grows) and the scale axis continues the sequence position (<boi> at p, scale blocks at p+1 ...).

The head dimension's frequency pairs are shared between the three axes. Each pair keeps its 1-D
frequency θ^(-2f/d), so a text-only sequence (t, t, t) is exactly ordinary 1-D RoPE whatever the
assignment. Pairs are taken in triples k = (3k, 3k+1, 3k+2), highest frequencies first.
Assignments (`layout`):
  "alternating" (default): like "interleaved", but row and col swap slots in every odd triple
      ((t, row, col), (t, col, row), (t, row, col), ...), so the two spatial axes get frequency
      sets of the same spread and neither is always the lower one: the model resolves columns as
      finely as rows (tests/test_rope.py measures both axes);
  "interleaved" (Qwen3-VL's rule): pair f reads row if f % 3 == 1 and f < 3·s_row, col if
      f % 3 == 2 and f < 3·s_col, t otherwise. Every col frequency is the row frequency one pair
      earlier times θ^(-2/d), which at small head sizes makes columns markedly coarser;
  "sectioned" (Qwen2.5-VL mrope): pairs [0, s_t) read t, the next s_row row, the last s_col col.
      With θ = 1e6 the last section's frequencies are tiny (col angles stay below ~0.01 rad over
      [0, C] at head size 32), so a generator, which has no vision encoder to carry position,
      cannot tell left from right. Kept for checkpoints and weights trained with it.
In the interleaved layouts a spatial slot of triple k serves its axis only while k < s_row
(resp. s_col), otherwise t (Qwen3-VL's cap).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def text_positions(n: int, start: int = 0, device=None) -> torch.Tensor:
    """(n, 3) float: (t, t, t) for t = start .. start+n-1."""
    t = torch.arange(start, start + n, device=device, dtype=torch.float32)
    return t[:, None].expand(n, 3).contiguous()


def image_positions(h: int, w: int, t: float, C: float, device=None) -> torch.Tensor:
    """(h·w, 3) float, row-major: (t, C/√(hw)·(i+0.5), C/√(hw)·(j+0.5))  # NF §3.2"""
    step = C / math.sqrt(h * w)
    i = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * step
    j = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * step
    rows, cols = torch.meshgrid(i, j, indexing="ij")
    return torch.stack([torch.full_like(rows, float(t)), rows, cols], -1).reshape(h * w, 3)


def rope_inv_freq(head_size: int, theta: float) -> torch.Tensor:
    return 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float32) / head_size)


def apply_rope(x_BHLd: torch.Tensor, cos_BLd: torch.Tensor, sin_BLd: torch.Tensor) -> torch.Tensor:
    """Rotate-half convention (GPT-NeoX / HF Qwen2): pairs are (x[f], x[f + d/2])."""
    d2 = x_BHLd.shape[-1] // 2
    rot = torch.cat([-x_BHLd[..., d2:], x_BHLd[..., :d2]], -1)
    cos, sin = cos_BLd[:, None].to(x_BHLd.dtype), sin_BLd[:, None].to(x_BHLd.dtype)
    return x_BHLd * cos + rot * sin


ROPE_LAYOUTS = ("alternating", "interleaved", "sectioned")


def rope_axes(sections: tuple[int, int, int], layout: str = "alternating") -> torch.Tensor:
    """(d/2,) long: the axis (0 = t, 1 = row, 2 = col) each frequency pair rotates with."""
    s_t, s_row, s_col = sections
    pairs = s_t + s_row + s_col
    if layout == "sectioned":
        return torch.repeat_interleave(torch.arange(3), torch.tensor(sections))
    if layout not in ROPE_LAYOUTS:
        raise ValueError(f"rope layout {layout!r} is not one of {', '.join(map(repr, ROPE_LAYOUTS))}")
    f = torch.arange(pairs)
    k, slot = f // 3, f % 3  # triple, slot within it (slot 0 is always t)
    swap = (k % 2 == 1) if layout == "alternating" else torch.zeros_like(k, dtype=torch.bool)
    row_slot = torch.where(swap, 2, 1)
    axis = torch.zeros(pairs, dtype=torch.long)
    axis[(slot == row_slot) & (k < s_row)] = 1
    axis[(slot == 3 - row_slot) & (k < s_col)] = 2
    return axis


class MultiScaleRoPE(nn.Module):
    """pos_BL3 (t, row, col) -> (cos_BLd, sin_BLd) for `apply_rope`."""

    def __init__(self, head_size: int, sections: tuple[int, int, int], theta: float,
                 layout: str = "alternating"):
        super().__init__()
        if sum(sections) != head_size // 2:
            raise ValueError(f"rope sections {sections} must sum to head_size/2 = {head_size // 2}")
        self.sections = tuple(sections)
        self.register_buffer("inv_freq", rope_inv_freq(head_size, theta), persistent=False)
        self.register_buffer("axis", rope_axes(sections, layout), persistent=False)  # (d/2,) axis per pair

    def forward(self, pos_BL3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pos_BLf = pos_BL3.float()[..., self.axis]  # (B, L, d/2): each pair's own axis
        ang = pos_BLf * self.inv_freq
        ang = torch.cat([ang, ang], -1)
        return ang.cos(), ang.sin()


def sinusoidal(x: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer sinusoidal features of a (...,) tensor -> (..., dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = x.float()[..., None] * freqs
    out = torch.cat([ang.cos(), ang.sin()], -1)
    return nn.functional.pad(out, (0, dim - 2 * half))


class ScaleEmbedding(nn.Module):
    """Learnable per-scale embedding added to image tokens (NF §3.2; VAR's level embedding).

    Index s = the scale a block predicts (0 = the <boi> block), max_scales = the closing block
    that carries the finest scale's own indices; index -1 (text) adds nothing. Zero-initialised
    so a loaded LLM starts unchanged."""

    def __init__(self, max_scales: int, dim: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(max_scales + 1, dim))

    def forward(self, scale_BL: torch.Tensor) -> torch.Tensor:
        emb = self.table[scale_BL.clamp(min=0)]
        return emb * (scale_BL >= 0)[..., None].to(emb.dtype)


class NumScalesEmbedding(nn.Module):
    """Sinusoidal embedding of the image's number of scales (tells the model the target
    resolution, NF §3.2) through a zero-initialised linear layer; 0 (text) adds nothing."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, nscales_BL: torch.Tensor) -> torch.Tensor:
        feat = sinusoidal(nscales_BL, self.dim).to(self.proj.weight.dtype)
        return self.proj(feat) * (nscales_BL > 0)[..., None].to(feat.dtype)
