"""Learning-rate multipliers for `torch.optim.lr_scheduler.LambdaLR` (stepped once per optimiser step)."""
from __future__ import annotations

import math
from typing import Callable


def warmup_cosine(warmup_steps: int, total_steps: int, cosine: bool = True,
                  min_ratio: float = 0.1) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then constant, or a half cosine from 1 to `min_ratio`
    at `total_steps` (Loshchilov & Hutter 2017, SGDR without restarts)."""
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    warm = max(1, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor
