"""ScaleSchedule: the single owner of per-scale token grids.

NextFlow (NF §3, REFERENCE.md "NextFlow model") predicts an image as a sequence of token grids
of growing size. The 1:1 schedule has 18 scales, 1 … 64; a resolution uses a prefix of it
(256 px → 12 scales / 900 tokens, 512 px → 16 / 3684, 1024 px → 18 / 10084 at patch 16).
Other aspect ratios (1:4 … 4:1) keep the *area* of scale index k roughly equal to the square
schedule's k-th area: (h_k, w_k) ≈ (s_k/√r, s_k·√r) with r = W/H.

Everything that needs grids (tokenizer, AR model, sampler, loss weights, RL prefix) imports
this module; nothing else computes a grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

# NF: the 18-scale 1:1 schedule (side lengths of square grids).
NEXTFLOW_SIDES: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 20, 24, 28, 32, 48, 64)
MIN_ASPECT, MAX_ASPECT = 1 / 4, 4.0  # W/H range of the family (NF: 1:4 … 4:1)


def aspect_ratio_family(n: int = 41) -> list[float]:
    """W/H ratios, log-spaced over [1/4, 4]. NF states 40 schedules but not their members;
    an odd count keeps 1:1 in the family and the family symmetric."""
    if n < 2:
        raise ValueError(f"aspect_ratio_family needs n >= 2, got {n}")
    lo, hi = math.log(MIN_ASPECT), math.log(MAX_ASPECT)
    return [math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]


@dataclass(frozen=True)
class ScaleSchedule:
    """Token grids (h_k, w_k) from coarsest to finest. Immutable and hashable (cache key)."""

    grids: tuple[tuple[int, int], ...]

    def __post_init__(self):
        if not self.grids:
            raise ValueError("a ScaleSchedule needs at least one scale")
        for (h0, w0), (h1, w1) in zip(self.grids, self.grids[1:]):
            if h1 < h0 or w1 < w0:
                raise ValueError(f"scale grids must not shrink: {(h0, w0)} -> {(h1, w1)}")

    # ----------------------------------------------------------------- construction
    @classmethod
    def square(cls, side: int, sides: tuple[int, ...] = NEXTFLOW_SIDES) -> "ScaleSchedule":
        """The 1:1 schedule ending at a `side`×`side` grid: the prefix of `sides` up to `side`."""
        if side not in sides:
            raise ValueError(
                f"final grid side {side} is not in the 1:1 schedule {sides}; "
                "use ScaleSchedule.for_grid() for arbitrary grids"
            )
        return cls(tuple((s, s) for s in sides[: sides.index(side) + 1]))

    @classmethod
    def for_grid(cls, height: int, width: int, sides: tuple[int, ...] = NEXTFLOW_SIDES) -> "ScaleSchedule":
        """Schedule ending exactly at an `height`×`width` token grid.

        Scale k has area ≈ sides[k]² (area per scale index constant across aspect ratios);
        scales stop before the equivalent side √(h·w) and the final grid is appended."""
        if height < 1 or width < 1:
            raise ValueError(f"token grid must be at least 1x1, got {height}x{width}")
        ratio = width / height
        if not (MIN_ASPECT - 1e-9 <= ratio <= MAX_ASPECT + 1e-9):
            raise ValueError(
                f"aspect ratio W/H = {width}/{height} = {ratio:.3f} is outside the schedule family "
                f"[1:4, 4:1]; crop or pad the image to a ratio between {MIN_ASPECT} and {MAX_ASPECT}"
            )
        equivalent_side = math.sqrt(height * width)
        grids: list[tuple[int, int]] = []
        for s in sides:
            if s >= equivalent_side - 1e-9:
                break
            h = min(height, max(1, round(s / math.sqrt(ratio))))
            w = min(width, max(1, round(s * math.sqrt(ratio))))
            if grids and (h, w) == grids[-1]:
                continue
            if grids and (h < grids[-1][0] or w < grids[-1][1]):
                h, w = max(h, grids[-1][0]), max(w, grids[-1][1])
                if (h, w) == grids[-1]:
                    continue
            grids.append((h, w))
        if not grids or grids[-1] != (height, width):
            grids.append((height, width))
        return cls(tuple(grids))

    @classmethod
    def for_image(cls, height: int, width: int, patch: int, sides: tuple[int, ...] = NEXTFLOW_SIDES) -> "ScaleSchedule":
        """Schedule for an image of `height`×`width` pixels and a tokenizer with downsampling `patch`."""
        if patch < 1:
            raise ValueError(f"patch must be a positive integer, got {patch}")
        if height % patch or width % patch:
            fix_h, fix_w = (height // patch) * patch, (width // patch) * patch
            raise ValueError(
                f"image size {height}x{width} is not divisible by the tokenizer patch {patch}; "
                f"resize or crop it to a multiple of {patch} (e.g. {max(fix_h, patch)}x{max(fix_w, patch)})"
            )
        return cls.for_grid(height // patch, width // patch, sides)

    @classmethod
    def for_resolution(cls, pixels: int, patch: int = 16, aspect: float = 1.0) -> "ScaleSchedule":
        """Schedule for a nominal resolution (`pixels`² area) at W/H = `aspect`."""
        side = pixels // patch
        h = max(1, round(side / math.sqrt(aspect)))
        w = max(1, round(side * math.sqrt(aspect)))
        if aspect == 1.0 and side in NEXTFLOW_SIDES:
            return cls.square(side)
        return cls.for_grid(h, w)

    # ----------------------------------------------------------------- queries
    @property
    def num_scales(self) -> int:
        return len(self.grids)

    @property
    def final_grid(self) -> tuple[int, int]:
        return self.grids[-1]

    @cached_property
    def areas(self) -> tuple[int, ...]:
        return tuple(h * w for h, w in self.grids)

    @property
    def token_count(self) -> int:
        return sum(self.areas)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        """Start index of each scale in the flattened (scale-major, row-major) token list."""
        out, acc = [], 0
        for a in self.areas:
            out.append(acc)
            acc += a
        return tuple(out)

    def prefix(self, num_scales: int) -> "ScaleSchedule":
        if not 1 <= num_scales <= self.num_scales:
            raise ValueError(f"prefix length {num_scales} outside 1..{self.num_scales}")
        return ScaleSchedule(self.grids[:num_scales])

    def scale_index_per_token(self) -> torch.Tensor:
        """(token_count,) long tensor: the scale each flattened token belongs to."""
        return torch.repeat_interleave(torch.arange(self.num_scales), torch.tensor(self.areas))

    def loss_weights(self, alpha: float = 0.9) -> torch.Tensor:
        """Per-token weights k_s = 1/(h_s·w_s)^α (NF §4.3, scale-aware reweighting), normalised
        so that the weights sum to token_count: the total vision loss keeps its magnitude and
        α = 0 gives uniform weights of 1."""
        areas = torch.tensor(self.areas, dtype=torch.float64)
        k = areas.pow(-alpha)
        norm = self.token_count / float((k * areas).sum())
        return (k * norm).repeat_interleave(torch.tensor(self.areas)).float()

    def __str__(self) -> str:
        grids = " ".join(f"{h}x{w}" for h, w in self.grids)
        return f"ScaleSchedule({self.num_scales} scales, {self.token_count} tokens: {grids})"
