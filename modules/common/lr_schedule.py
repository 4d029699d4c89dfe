"""Learning-rate multipliers for `torch.optim.lr_scheduler.LambdaLR` (stepped once per optimiser step).

A schedule that decays over `max_steps` never decays in a run that a wall-clock limit stops first
(Lightning's `max_time`, the quickstart's budget on a slow CPU): it trains at nearly its peak rate to
the end. `trainer_schedule` therefore keys the decay to the larger of the two fractions used, steps
and time, so a run stopped by either limit ends at the bottom of its schedule (the budget-aware
schedule of Li et al. 2020, "Budgeted training", with a cosine shape). Where the clock binds, the
rates depend on how fast the machine ran, so such runs repeat only as far as their stopping step does.
"""
from __future__ import annotations

import math
from typing import Callable

from lightning.pytorch.callbacks import Timer


def warmup_cosine(warmup_steps: int, total_steps: int, cosine: bool = True, min_ratio: float = 0.1,
                  time_fraction: Callable[[], float] | None = None) -> Callable[[int], float]:
    """Linear warm-up over `warmup_steps`, then constant, or a half cosine from 1 to `min_ratio`
    (Loshchilov & Hutter 2017, SGDR without restarts) over the larger of the step fraction
    (step - warm-up) / (total_steps - warm-up) and `time_fraction()` (0 -> 1, the wall-clock used)."""
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio}")
    warm = max(1, int(warmup_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if not cosine:
            return 1.0
        t = (step - warm) / max(1, total_steps - warm)
        if time_fraction is not None:
            t = max(t, time_fraction())
        t = min(1.0, t)
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))

    return factor


def timer_fraction(trainer) -> Callable[[], float] | None:
    """The fraction of the trainer's `max_time` spent training (Lightning's Timer, which also does the
    stopping and keeps its elapsed time across a resume), or None when no time limit is set."""
    timers = [c for c in (trainer.callbacks if trainer is not None else []) if isinstance(c, Timer)]
    if not timers:
        return None
    timer = timers[0]

    def fraction() -> float:
        remaining = timer.time_remaining("train")
        if remaining is None:
            return 0.0
        elapsed = timer.time_elapsed("train")
        return min(1.0, elapsed / max(1e-9, elapsed + max(0.0, remaining)))

    return fraction


def trainer_schedule(trainer, warmup_steps: int, cosine: bool, min_ratio: float = 0.1) -> Callable[[int], float]:
    """`warmup_cosine` over the trainer's limits: its step budget (`estimated_stepping_batches`) and,
    where `max_time` is set, its clock; whichever runs out first ends the decay."""
    total = max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1
    return warmup_cosine(warmup_steps, total, cosine, min_ratio, timer_fraction(trainer))
