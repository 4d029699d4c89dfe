"""Conversions between model images (float, B×3×H×W in [-1, 1]) and files (uint8, H×W×3)."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(x_B3HW: torch.Tensor) -> np.ndarray:
    """[-1, 1] images -> (B, H, W, 3) uint8."""
    return ((x_B3HW.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def from_uint8(images, device=None) -> torch.Tensor:
    """(B, H, W, 3) uint8 (array or list of arrays) -> [-1, 1] float B×3×H×W."""
    array = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
