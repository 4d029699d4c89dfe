"""Reference-based image quality for refiners and decoders: images B×3×H×W in [-1, 1].

PSNR and SSIM are torchmetrics' (data range 1 on [0, 1] images). Two high-frequency measures,
since a diffusion refiner may trade PSNR for sharpness (REFERENCE.md "Diffusion refiner"):
- Laplacian-band PSNR: PSNR between the 3x3 Laplacian responses (the finest band of a Laplacian
  pyramid, Burt & Adelson 1983) of the two images on [0, 1], peak 1: errors on outlines and
  texture, blind to smooth colour offsets;
- radial power-spectrum distance: mean over radial frequency bins (DC excluded) of
  |ln P_x(r) - ln P_y(r)|, P the per-image power spectrum averaged over channels, images and
  the ring of radius r (as in spectral analyses of generated images, Durall et al. 2020); 0 when
  the two sets have the same spectra, ln 4 when one set is the other times 2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def _unit(x_B3HW: torch.Tensor) -> torch.Tensor:
    return (x_B3HW.float().clamp(-1, 1) + 1) / 2


def psnr(x_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> float:
    return float(peak_signal_noise_ratio(_unit(x_B3HW), _unit(ref_B3HW), data_range=1.0))


def ssim(x_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> float:
    return float(structural_similarity_index_measure(_unit(x_B3HW), _unit(ref_B3HW), data_range=1.0))


def laplacian(x_BCHW: torch.Tensor) -> torch.Tensor:
    """3x3 Laplacian per channel, zero padding."""
    C = x_BCHW.shape[1]
    kernel = _LAPLACIAN.to(x_BCHW).view(1, 1, 3, 3).repeat(C, 1, 1, 1)
    return F.conv2d(x_BCHW, kernel, padding=1, groups=C)


def laplacian_mse(x_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(laplacian(_unit(x_B3HW)), laplacian(_unit(ref_B3HW)))


def laplacian_psnr(x_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> float:
    """PSNR (dB, peak 1) of the Laplacian band; higher is better."""
    return float(10 * torch.log10(1.0 / laplacian_mse(x_B3HW, ref_B3HW).clamp_min(1e-12)))


def radial_power_spectrum(x_B3HW: torch.Tensor) -> torch.Tensor:
    """Mean power per integer radius 1 .. min(H, W) // 2 of the centred 2-D spectrum (mean removed)."""
    x = _unit(x_B3HW)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    H, W = x.shape[-2:]
    power_HW = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(-2, -1)).mean(dim=(0, 1)) / (H * W)
    yy, xx = torch.meshgrid(torch.arange(H) - H // 2, torch.arange(W) - W // 2, indexing="ij")
    radius = torch.sqrt(yy.float() ** 2 + xx.float() ** 2).round().long()
    bins = min(H, W) // 2
    sums = torch.zeros(bins + 1).index_add_(0, radius.clamp(max=bins).flatten(), power_HW.flatten().cpu())
    counts = torch.zeros(bins + 1).index_add_(0, radius.clamp(max=bins).flatten(), torch.ones(H * W))
    return (sums / counts.clamp_min(1))[1:]


def spectral_distance(x_B3HW: torch.Tensor, ref_B3HW: torch.Tensor) -> float:
    """Mean |ln P_x(r) - ln P_ref(r)| over radii; lower is better."""
    px, pr = radial_power_spectrum(x_B3HW), radial_power_spectrum(ref_B3HW)
    return float((px.clamp_min(1e-12).log() - pr.clamp_min(1e-12).log()).abs().mean())
