"""Prefix-tuning GRPO math on per-token tensors (REFERENCE.md, "Prefix-tuning GRPO").

Tokens are the image tokens of a batch of sampled sequences, flattened to N: each carries its
sample index, its scale (0-based) and the log-probability of its sampled code under the policy
(sampling distribution), the pre-update policy and the frozen reference. Plain functions, tested
without Lightning (tests/test_rl.py); modules/rl/module.py is the glue.
"""
from __future__ import annotations

from typing import Literal

import torch


def group_advantages(rewards_PG: torch.Tensor, eps: float = 1e-4,
                     zero_var_tol: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages A_i = (r_i − mean_g)/(std_g + eps) over the G rollouts of each of P
    prompts (GRPO, DeepSeekMath; std over the group, population form as Flow-GRPO's np.std).
    Returns (advantages (P, G), valid (P,)): a group whose rewards all agree (std ≤ zero_var_tol)
    carries no signal; it is marked invalid and its advantages are 0 (the caller drops it)."""
    r = rewards_PG.float()
    mean, std = r.mean(1, keepdim=True), r.std(1, unbiased=False, keepdim=True)
    valid = std[:, 0] > zero_var_tol
    adv = torch.where(valid[:, None], (r - mean) / (std + eps), torch.zeros_like(r))
    return adv, valid


def sampling_logprobs(logits_NV: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0,
                      keep_N: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities (N, V) of the distribution the sampler draws from: logits / temperature,
    then top-k, then top-p (VAR's order), renormalised over the kept codes; the same masks as
    `modules.ar.sampler.sample_step` (its top-p keeps the smallest sorted prefix whose mass reaches
    top_p). `keep_N`: codes kept whatever the truncation says (the sampled ones), so a code that
    a last-bit difference between the KV-cached and the teacher-forced pass pushes over the
    top-k/top-p edge keeps a finite log-probability. The masks are built without gradient; the
    gradient flows through the renormalised log-softmax."""
    if temperature <= 0 or top_k == 1:
        raise ValueError(f"RL needs a stochastic sampler; temperature={temperature}, top_k={top_k} is greedy "
                         "(set temperature > 0 and top_k 0 or > 1)")
    x = logits_NV.float() / temperature
    V = x.shape[-1]
    with torch.no_grad():
        drop = torch.zeros_like(x, dtype=torch.bool)
        if 0 < top_k < V:
            kth = x.topk(top_k, dim=-1).values[..., -1:]
            drop |= x < kth
        if top_p < 1.0:
            xm = x.masked_fill(drop, float("-inf"))
            srt, order = xm.sort(-1, descending=True)
            p = srt.softmax(-1)
            d = (p.cumsum(-1) - p) > top_p
            drop |= d.scatter(-1, order, d)
        if keep_N is not None:
            drop.scatter_(-1, keep_N.view(-1, 1), False)
    return x.masked_fill(drop, float("-inf")).log_softmax(-1)


def k3_kl(logp_N: torch.Tensor, ref_logp_N: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref) on samples from π_θ (Schulman, "Approximating KL
    divergence"; as in DeepSeekMath GRPO): r − log r − 1 with r = π_ref/π_θ. Non-negative."""
    log_r = ref_logp_N - logp_N
    return torch.exp(log_r) - log_r - 1.0


def masked_norm(x_N: torch.Tensor, mask_N: torch.Tensor, sample_N: torch.Tensor, scale_N: torch.Tensor,
                mode: Literal["scale", "token"], num_scales: int) -> torch.Tensor:
    """Reduce per-token terms to one number over the masked tokens.
    "token": Σ x / number of tokens. "scale" ("VAR RL Done Right", per-scale normalisation): per
    (sample, scale) Σ x / its token count, then the mean over those cells (every sample has the
    same schedule, so this is the mean over samples of the mean over scales). 0 with no tokens
    (still part of the graph, so DDP ranks stay in step)."""
    m = mask_N.to(x_N.dtype)
    if mode == "token":
        return (x_N * m).sum() / m.sum().clamp_min(1.0)
    if mode != "scale":
        raise ValueError(f"loss_norm must be 'scale' or 'token', got {mode!r}")
    cell = sample_N * num_scales + scale_N
    n_cells = int(cell.max()) + 1 if cell.numel() else 1
    sums = torch.zeros(n_cells, dtype=x_N.dtype, device=x_N.device).index_add(0, cell, x_N * m)
    counts = torch.zeros(n_cells, dtype=x_N.dtype, device=x_N.device).index_add(0, cell, m)
    used = counts > 0
    return (sums[used] / counts[used]).sum() / used.sum().clamp_min(1).to(x_N.dtype)


def grpo_loss(logp_N: torch.Tensor, old_logp_N: torch.Tensor, kl_logp_N: torch.Tensor,
              ref_kl_logp_N: torch.Tensor, adv_N: torch.Tensor, sample_N: torch.Tensor, scale_N: torch.Tensor,
              valid_N: torch.Tensor, *, prefix_scales: int | None, kl_scales: Literal["prefix", "all"] = "all",
              beta: float = 0.04, clip_range: float = 0.2, loss_norm: Literal["scale", "token"] = "scale",
              num_scales: int) -> dict[str, torch.Tensor]:
    """PPO-clip policy loss on scales 1..m plus β·k3 KL, per-token terms reduced by `masked_norm`.

    PG (PPO / GRPO): −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A), ρ = π_θ/π_old, on tokens of scales < m
    (`prefix_scales` m; None = all scales). NextFlow optimises only the coarse prefix; the finer
    scales are sampled but carry no PG term, so their tokens send no gradient through it.
    KL: k3 on the prefix scales or on all of them (`kl_scales`), since shared weights let the
    unoptimised fine scales drift. `valid_N` drops tokens of zero-variance groups from both.
    Returns {"loss", "pg", "kl", "ratio", "clip_frac"} (the last three detached diagnostics)."""
    m = num_scales if prefix_scales is None else min(int(prefix_scales), num_scales)
    if m < 1:
        raise ValueError(f"prefix_scales must be >= 1 (or None for all scales), got {prefix_scales}")
    in_prefix = scale_N < m
    pg_mask = in_prefix & valid_N
    if kl_scales not in ("prefix", "all"):
        raise ValueError(f"kl_scales must be 'prefix' or 'all', got {kl_scales!r}")
    kl_mask = (in_prefix if kl_scales == "prefix" else torch.ones_like(in_prefix)) & valid_N
    ratio = torch.exp(logp_N - old_logp_N)
    clipped = ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    pg_tok = -torch.minimum(ratio * adv_N, clipped * adv_N)
    kl_tok = k3_kl(kl_logp_N, ref_kl_logp_N)
    pg = masked_norm(pg_tok, pg_mask, sample_N, scale_N, loss_norm, num_scales)
    kl = masked_norm(kl_tok, kl_mask, sample_N, scale_N, loss_norm, num_scales)
    with torch.no_grad():
        n = pg_mask.sum().clamp_min(1)
        ratio_mean = (ratio * pg_mask).sum() / n
        clip_frac = (((ratio - 1.0).abs() > clip_range) & pg_mask).sum() / n
    return {"loss": pg + beta * kl, "pg": pg.detach(), "kl": kl.detach(), "ratio": ratio_mean,
            "clip_frac": clip_frac.float()}
