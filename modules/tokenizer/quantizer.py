"""Dual codebook with one shared index + multi-scale residual quantisation.

TokenFlow / NextFlow (REFERENCE.md "NextFlow tokenizer"): two codebooks of K entries (semantic
dim 32, pixel dim 8), both l2-normalised; one index per position,
    idx = argmin_i  d_sem,i + w * d_pix,i      (squared L2 between unit vectors, w = 1.0).
VAR-style multi-scale residual VQ over a ScaleSchedule: area-downsample the residual to the
scale grid, quantise, upsample (bicubic) to the final grid, refine with a φ conv (VAR quant.py
`Phi`: h·(1-r) + conv(h)·r), subtract. Quantisation always runs in fp32.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.common.scale_schedule import ScaleSchedule


class Phi(nn.Module):
    """VAR's refinement conv after upsampling: h·(1 - r) + conv3x3(h)·r."""

    def __init__(self, dim: int, ratio: float):
        super().__init__()
        self.conv, self.ratio = nn.Conv2d(dim, dim, 3, padding=1), ratio

    def forward(self, h_BCHW: torch.Tensor) -> torch.Tensor:
        return h_BCHW * (1 - self.ratio) + self.conv(h_BCHW) * self.ratio


class PhiShared(nn.Module):
    """n φ convs shared over scales by relative depth k/(K-1) (VAR `PhiPartiallyShared`), so any
    schedule length (aspect ratio, resolution) maps onto the same φ's."""

    def __init__(self, dim: int, n: int = 4, ratio: float = 0.5):
        super().__init__()
        self.phis = nn.ModuleList(Phi(dim, ratio) for _ in range(n))
        self.register_buffer("ticks", torch.linspace(1 / 3 / n, 1 - 1 / 3 / n, n), persistent=False)

    def forward(self, h_BCHW: torch.Tensor, k: int, num_scales: int) -> torch.Tensor:
        at = k / max(1, num_scales - 1)
        return self.phis[int((self.ticks - at).abs().argmin())](h_BCHW)


@dataclass
class QuantOut:
    hat_sem: torch.Tensor  # (B, sem_dim, H, W) straight-through quantised features
    hat_pix: torch.Tensor  # (B, pix_dim, H, W)
    vq_loss: torch.Tensor  # codebook + β·commitment, summed over both codebooks
    indices: list  # per scale (B, h_k, w_k) long, None for dropped scales


def codebook_stats(counts_K: torch.Tensor) -> tuple[float, float]:
    """(usage = fraction of codes used at least once, perplexity = exp(entropy of code frequency))."""
    total = counts_K.sum().clamp_min(1)
    p = counts_K.double() / total
    entropy = -(p * p.clamp_min(1e-30).log()).sum()
    return float((counts_K > 0).double().mean()), float(entropy.exp())


class DualCodebookQuantizer(nn.Module):
    def __init__(self, codebook_size: int = 4096, sem_dim: int = 32, pix_dim: int = 8,
                 pixel_weight: float = 1.0, beta: float = 0.25, num_phi: int = 4, phi_ratio: float = 0.5,
                 usage_decay: float = 0.99):
        super().__init__()
        self.codebook_size, self.sem_dim, self.pix_dim = codebook_size, sem_dim, pix_dim
        self.pixel_weight, self.beta, self.usage_decay = pixel_weight, beta, usage_decay
        self.sem_codes = nn.Parameter(F.normalize(torch.randn(codebook_size, sem_dim), dim=1))
        self.pix_codes = nn.Parameter(F.normalize(torch.randn(codebook_size, pix_dim), dim=1))
        self.phi_sem = PhiShared(sem_dim, num_phi, phi_ratio)
        self.phi_pix = PhiShared(pix_dim, num_phi, phi_ratio)
        self.register_buffer("usage_ema", torch.zeros(codebook_size))  # tokens per step, EMA
        self._stash: tuple[torch.Tensor, torch.Tensor] | None = None  # recent residuals, for restarts

    # ------------------------------------------------------------------ codebook primitives
    def codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """l2-normalised (K, sem_dim), (K, pix_dim) code vectors in fp32."""
        return F.normalize(self.sem_codes.float(), dim=1), F.normalize(self.pix_codes.float(), dim=1)

    def distances(self, z_sem_NC: torch.Tensor | None, z_pix_NC: torch.Tensor) -> torch.Tensor:
        """d_NK = ||ẑ_sem - ê_sem||² + w·||ẑ_pix - ê_pix||² on unit vectors = (2 - 2cos) terms
        (TokenFlow shared index). `z_sem_NC=None` uses the pixel term alone (stage 1)."""
        e_sem, e_pix = self.codes()
        d_NK = self.pixel_weight * (2 - 2 * F.normalize(z_pix_NC.float(), dim=1) @ e_pix.T)
        if z_sem_NC is not None:
            d_NK = d_NK + (2 - 2 * F.normalize(z_sem_NC.float(), dim=1) @ e_sem.T)
        return d_NK

    def embed(self, idx_Bhw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Index map -> unit code vectors (B, sem_dim, h, w), (B, pix_dim, h, w)."""
        e_sem, e_pix = self.codes()
        return (e_sem[idx_Bhw].permute(0, 3, 1, 2), e_pix[idx_Bhw].permute(0, 3, 1, 2))

    def code_embeddings(self) -> torch.Tensor:
        """(K, sem_dim + pix_dim): concatenated l2-normalised code vectors (AR connector input)."""
        return torch.cat(self.codes(), dim=1)

    def _refine(self, idx_Bhw, k: int, schedule: ScaleSchedule, use_semantic: bool):
        H, W = schedule.final_grid
        q_sem, q_pix = self.embed(idx_Bhw)
        up = (lambda q: q) if tuple(idx_Bhw.shape[1:]) == (H, W) else (
            lambda q: F.interpolate(q, size=(H, W), mode="bicubic", align_corners=False))
        h_pix = self.phi_pix(up(q_pix), k, schedule.num_scales)
        h_sem = self.phi_sem(up(q_sem), k, schedule.num_scales) if use_semantic else None
        return h_sem, h_pix

    @staticmethod
    def _down(rest_BCHW: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return rest_BCHW if tuple(rest_BCHW.shape[-2:]) == hw else F.interpolate(rest_BCHW, size=hw, mode="area")

    @staticmethod
    def _flat(x_BChw: torch.Tensor) -> torch.Tensor:
        return x_BChw.permute(0, 2, 3, 1).reshape(-1, x_BChw.shape[1])

    def _check(self, f_pix_BCHW: torch.Tensor, schedule: ScaleSchedule):
        if tuple(f_pix_BCHW.shape[-2:]) != schedule.final_grid:
            raise ValueError(f"feature grid {tuple(f_pix_BCHW.shape[-2:])} does not match the schedule's "
                             f"final grid {schedule.final_grid}; build it with ScaleSchedule.for_image(H, W, patch)")

    # ------------------------------------------------------------------ training forward
    def forward(self, f_sem_BCHW: torch.Tensor, f_pix_BCHW: torch.Tensor, schedule: ScaleSchedule,
                keep: list[bool] | None = None, use_semantic: bool = True) -> QuantOut:
        self._check(f_pix_BCHW, schedule)
        with torch.autocast(f_pix_BCHW.device.type, enabled=False):
            f_sem, f_pix = f_sem_BCHW.float(), f_pix_BCHW.float()
            rest_sem, rest_pix = f_sem.detach().clone(), f_pix.detach().clone()
            hat_sem, hat_pix = torch.zeros_like(f_sem), torch.zeros_like(f_pix)
            indices, counts = [], torch.zeros(self.codebook_size, device=f_pix.device)
            for k, hw in enumerate(schedule.grids):
                if keep is not None and not keep[k]:
                    indices.append(None)
                    continue
                r_pix, r_sem = self._down(rest_pix, hw), self._down(rest_sem, hw) if use_semantic else None
                z_pix, z_sem = self._flat(r_pix), self._flat(r_sem) if use_semantic else None
                with torch.no_grad():
                    idx_N = self.distances(z_sem, z_pix).argmin(dim=1)
                idx_Bhw = idx_N.view(f_pix.shape[0], *hw)
                indices.append(idx_Bhw)
                counts += torch.bincount(idx_N, minlength=self.codebook_size).float()
                h_sem, h_pix = self._refine(idx_Bhw, k, schedule, use_semantic)
                hat_pix, rest_pix = hat_pix + h_pix, rest_pix - h_pix.detach()
                if use_semantic:
                    hat_sem, rest_sem = hat_sem + h_sem, rest_sem - h_sem.detach()
                if self.training:
                    self._stash = (F.normalize(z_sem if z_sem is not None else self._flat(self._down(rest_sem, hw)), dim=1).detach(),
                                   F.normalize(z_pix, dim=1).detach())
            # VAR quant.py: codebook loss ||f̂ - sg(f)||² + β·||sg(f̂) - f||², straight-through f̂
            vq_loss = F.mse_loss(hat_pix, f_pix.detach()) + self.beta * F.mse_loss(hat_pix.detach(), f_pix)
            hat_pix_st = hat_pix.detach() - f_pix.detach() + f_pix
            if use_semantic:
                vq_loss = vq_loss + F.mse_loss(hat_sem, f_sem.detach()) + self.beta * F.mse_loss(hat_sem.detach(), f_sem)
                hat_sem_st = hat_sem.detach() - f_sem.detach() + f_sem
            else:
                hat_sem_st = torch.zeros_like(f_sem)
            if self.training and keep is not None and not all(keep):
                # A dropped scale (ScaleDropping) can leave a φ conv out of the graph; DDP then stops
                # ("parameters that were not used in producing the loss"). A zero-weighted use keeps
                # every φ in the graph (exact zero gradients), so the default DDP strategy works
                # unchanged: `find_unused_parameters=True` would instead walk the autograd graph
                # after every backward on every step, and FSDP has no such switch. In one process
                # too, so that a run on N processes follows the 1-process run exactly (an exact
                # zero gradient lets Adam keep moving the skipped φ by momentum; no gradient at
                # all would not).
                phis = [*self.phi_pix.parameters(), *(self.phi_sem.parameters() if use_semantic else ())]
                vq_loss = vq_loss + 0.0 * sum(p.sum() for p in phis)
            if self.training:
                with torch.no_grad():
                    self.usage_ema.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        return QuantOut(hat_sem_st, hat_pix_st, vq_loss, indices)

    @torch.no_grad()
    def restart_dead_codes(self, threshold: float = 0.03, generator: torch.Generator | None = None) -> int:
        """Dead-code restart: entries whose usage EMA is below `threshold`·mean are re-seeded with
        recent (normalised) encoder residuals; returns how many were restarted."""
        if self._stash is None or float(self.usage_ema.sum()) == 0.0:
            return 0
        dead = (self.usage_ema < threshold * self.usage_ema.mean()).nonzero().squeeze(1)
        if dead.numel() == 0:
            return 0
        z_sem, z_pix = self._stash
        pick = torch.randint(z_pix.shape[0], (dead.numel(),), generator=generator).to(z_pix.device)
        noise = lambda z: F.normalize(z + 0.01 * torch.randn_like(z), dim=1)  # noqa: E731
        self.sem_codes.data[dead] = noise(z_sem[pick]).to(self.sem_codes.dtype)
        self.pix_codes.data[dead] = noise(z_pix[pick]).to(self.pix_codes.dtype)
        self.usage_ema[dead] = self.usage_ema.mean()
        return int(dead.numel())

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def quantize_codes(self, f_sem_BCHW: torch.Tensor, f_pix_BCHW: torch.Tensor, schedule: ScaleSchedule,
                       self_correct: float = 0.0, topk: int = 8, generator: torch.Generator | None = None,
                       use_semantic: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(targets, inputs) index maps per scale. Self-correction (NF, REFERENCE.md): at a fraction
        `self_correct` of positions per scale the input code is sampled uniformly among the top-k
        nearest; the residual follows the corrupted input, so the next scale's top-1 target
        corrects it. self_correct = 0 gives inputs == targets."""
        self._check(f_pix_BCHW, schedule)
        if not 0.0 <= self_correct <= 1.0:
            raise ValueError(f"self_correct must be a fraction in [0, 1], got {self_correct}")
        B, dev = f_pix_BCHW.shape[0], f_pix_BCHW.device
        with torch.autocast(dev.type, enabled=False):
            rest_sem, rest_pix = f_sem_BCHW.float().clone(), f_pix_BCHW.float().clone()
            targets, inputs = [], []
            for k, (h, w) in enumerate(schedule.grids):
                r_pix, r_sem = self._down(rest_pix, (h, w)), self._down(rest_sem, (h, w))
                d_NK = self.distances(self._flat(r_sem) if use_semantic else None, self._flat(r_pix))
                top1_N = d_NK.argmin(dim=1)
                chosen_N = top1_N
                m = int(round(self_correct * h * w))
                if m > 0 and topk > 1:
                    cand_Nk = d_NK.topk(min(topk, self.codebook_size), dim=1, largest=False).indices
                    pick_N = torch.randint(cand_Nk.shape[1], (B * h * w,), generator=generator).to(dev)
                    corrupt_N = cand_Nk.gather(1, pick_N[:, None]).squeeze(1)
                    rank_Bl = torch.rand(B, h * w, generator=generator).argsort(dim=1).argsort(dim=1)
                    mask_N = (rank_Bl < m).reshape(-1).to(dev)  # exactly m positions per image
                    chosen_N = torch.where(mask_N, corrupt_N, top1_N)
                targets.append(top1_N.view(B, h, w))
                inputs.append(chosen_N.view(B, h, w))
                h_sem, h_pix = self._refine(inputs[-1], k, schedule, True)
                rest_pix, rest_sem = rest_pix - h_pix, rest_sem - h_sem
        return targets, inputs

    @torch.no_grad()
    def indices_to_features(self, indices: list, schedule: ScaleSchedule, use_semantic: bool = True):
        """Σ_k φ_k(up(e[idx_k])) over the given scales (a prefix of the schedule may be given;
        None entries are skipped) -> (hat_sem, hat_pix) on the final grid."""
        if len(indices) > schedule.num_scales:
            raise ValueError(f"{len(indices)} index maps for a schedule of {schedule.num_scales} scales")
        hat_sem = hat_pix = None
        for k, idx_Bhw in enumerate(indices):
            if idx_Bhw is None:
                continue
            if tuple(idx_Bhw.shape[1:]) != schedule.grids[k]:
                raise ValueError(f"index map {k} has grid {tuple(idx_Bhw.shape[1:])}, schedule expects {schedule.grids[k]}")
            h_sem, h_pix = self._refine(idx_Bhw.long(), k, schedule, True)
            hat_sem = h_sem if hat_sem is None else hat_sem + h_sem
            hat_pix = h_pix if hat_pix is None else hat_pix + h_pix
        if hat_pix is None:
            raise ValueError("no index maps to decode")
        return (hat_sem if use_semantic else torch.zeros_like(hat_sem)), hat_pix
