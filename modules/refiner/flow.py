"""Rectified flow (Liu et al. 2022, "Flow straight and fast"; Lipman et al. 2022, conditional flow
matching) on the normalised residual r = (x_gt - x_decoded) / scale.

Convention: t = 0 is noise x0 ~ N(0, I), t = 1 is data x1 = r; x_t = (1 - t)·x0 + t·x1 and the
target velocity is v* = x1 - x0. Sampling integrates dx/dt = v(x_t, t | c) from t = 0 to 1 with
Euler or Heun (Karras et al. 2022, alg. 1) steps. Guidance (Ho & Salimans 2022, classifier-free):
v = v(∅) + w·(v(c) - v(∅)), where ∅ is the all-zero condition seen with probability
`cond_dropout` in training; w = 1 is no guidance (one network call per step).
The regression control predicts x1 directly from the condition (x_t = 0, t = 0): one call.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t_B) -> v


def flow_matching_loss(velocity: Velocity, x1: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """E_{t, x0} ||v(x_t, t) - (x1 - x0)||² with t ~ U(0, 1) per sample."""
    x0 = torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    t_B = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
    t = t_B.view(-1, *([1] * (x1.ndim - 1)))
    x_t = (1 - t) * x0 + t * x1
    return F.mse_loss(velocity(x_t, t_B), x1 - x0)


def sample_flow(velocity: Velocity, x0: torch.Tensor, steps: int,
                method: Literal["euler", "heun"] = "euler") -> torch.Tensor:
    """Integrates from x0 at t = 0 to t = 1 in `steps` uniform steps. Heun's last step is Euler's
    corrected by the slope at its end (2 calls per step)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {method!r}; use 'euler' or 'heun'")
    x, dt = x0, 1.0 / steps
    for i in range(steps):
        t_B = torch.full((x.shape[0],), i * dt, device=x.device, dtype=x.dtype)
        v = velocity(x, t_B)
        x_next = x + dt * v
        if method == "heun":
            v_next = velocity(x_next, t_B + dt)
            x_next = x + dt * 0.5 * (v + v_next)
        x = x_next
    return x


def guided(velocity_cond: Velocity, velocity_uncond: Velocity, weight: float) -> Velocity:
    """Classifier-free guidance on the condition; weight 1 returns the conditional field."""
    if weight == 1.0:
        return velocity_cond

    def v(x, t_B):
        vu = velocity_uncond(x, t_B)
        return vu + weight * (velocity_cond(x, t_B) - vu)

    return v
