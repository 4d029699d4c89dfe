"""Rectified flow (Liu et al. 2022, "Flow straight and fast"; Lipman et al. 2022, conditional flow
matching) on the normalised residual r = (x_gt - x_decoded) / scale.

Convention: t = 0 is noise x0 ~ N(0, I), t = 1 is data x1 = r; x_t = (1 - t)·x0 + t·x1 and the
target velocity is v* = x1 - x0. Sampling integrates dx/dt = v(x_t, t | c) from t = 0 to 1 with
Euler or Heun (Karras et al. 2022, alg. 1) steps. Guidance (Ho & Salimans 2022, classifier-free):
v = v(∅) + w·(v(c) - v(∅)), where ∅ is the all-zero condition seen with probability
`cond_dropout` in training; w = 1 is no guidance (one network call per step).

Two parameterisations of the network's output (Li & He 2025, "Back to basics: let denoising
generative models denoise"):
- `velocity`: the network is v directly. Near t = 0 it must reproduce -x0 pixel by pixel to cancel
  the noise, and what it misses stays in the sample as speckle.
- `data`: the network predicts x̂1 and v = (x̂1 - x_t) / (1 - t). Near t = 0 the optimum ignores
  the noise and is E[x1 | c], so one Euler step from t = 0 is the regression mean, and the last
  Euler step returns the network's x̂1 itself. The loss is ||x̂1 - x1||²: the velocity loss
  weighted by (1 - t)², which keeps every t's weight bounded (velocity space, as in that paper,
  weighs t near 1 by up to 1 / MIN_ONE_MINUS_T², and a few such samples then dominate a batch).
The regression control predicts x1 directly from the condition (x_t = 0, t = 0): one call.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t_B) -> v
Prediction = Literal["velocity", "data"]
MIN_ONE_MINUS_T = 0.05  # 1 - t floor in the data parameterisation's division


def _bcast(t_B: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t_B.view(-1, *([1] * (like.ndim - 1)))


def as_velocity(network: Velocity, prediction: Prediction = "velocity") -> Velocity:
    """The velocity field of a network with the given output parameterisation."""
    if prediction == "velocity":
        return network
    if prediction != "data":
        raise ValueError(f"unknown prediction {prediction!r}; use 'velocity' or 'data'")

    def v(x_t, t_B):
        return (network(x_t, t_B) - x_t) / (1 - _bcast(t_B, x_t)).clamp_min(MIN_ONE_MINUS_T)

    return v


def flow_matching_loss(network: Velocity, x1: torch.Tensor, generator: torch.Generator | None = None,
                       prediction: Prediction = "velocity", noise_scale: float = 1.0,
                       t_zero_fraction: float = 0.0) -> torch.Tensor:
    """With x0 ~ N(0, noise_scale² I) and per sample t = 0 with probability `t_zero_fraction`, else
    t ~ U(0, 1): E_{t, x0} ||v(x_t, t) - (x1 - x0)||² for `velocity`, E_{t, x0} ||x̂1(x_t, t) - x1||²
    for `data`. Every sample's first step starts at t = 0, where a uniform t trains almost nothing;
    for `data` the t = 0 term is the regression loss, so the one-step sample is the trained mean."""
    x0 = noise_scale * torch.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
    t_B = torch.rand(x1.shape[0], generator=generator, device=x1.device, dtype=x1.dtype)
    if t_zero_fraction > 0:
        zero_B = torch.rand(x1.shape[0], generator=generator, device=x1.device) < t_zero_fraction
        t_B = torch.where(zero_B, torch.zeros_like(t_B), t_B)
    t = _bcast(t_B, x1)
    x_t = (1 - t) * x0 + t * x1
    if prediction == "data":
        return F.mse_loss(network(x_t, t_B), x1)
    return F.mse_loss(as_velocity(network, prediction)(x_t, t_B), x1 - x0)


def time_grid(steps: int, shift: float = 1.0) -> list[float]:
    """steps + 1 times from 0 to 1. shift s rescales the noise level σ = 1 - t of a uniform grid as
    σ' = s·σ / (1 + (s - 1)·σ) (SD3, Esser et al. 2024, §5.3.2): s = 1 is uniform, s < 1 spends
    the steps near the data end (a long first step to the estimate, then small corrections)."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    sigmas = [1 - i / steps for i in range(steps + 1)]
    return [1 - shift * sg / (1 + (shift - 1) * sg) for sg in sigmas]


def sample_flow(velocity: Velocity, x0: torch.Tensor, steps: int,
                method: Literal["euler", "heun"] = "euler", shift: float = 1.0) -> torch.Tensor:
    """Integrates from x0 at t = 0 to t = 1 in `steps` steps on `time_grid(steps, shift)`. Heun's
    last step is Euler's corrected by the slope at its end (2 calls per step)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler {method!r}; use 'euler' or 'heun'")
    x, grid = x0, time_grid(steps, shift)
    for t, t_next in zip(grid[:-1], grid[1:]):
        t_B = torch.full((x.shape[0],), t, device=x.device, dtype=x.dtype)
        dt = t_next - t
        v = velocity(x, t_B)
        x_next = x + dt * v
        if method == "heun":
            v_next = velocity(x_next, torch.full_like(t_B, t_next))
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
