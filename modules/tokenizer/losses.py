"""Tokenizer losses (REFERENCE.md "NextFlow tokenizer"): pixel L2 (optionally weighted up on
the target's Sobel outlines, `edge_focus`), a pluggable perceptual loss
(LPIPS-like network from a local TorchScript file; off when no path is given), PatchGAN hinge
adversarial loss (λ_G 0.5, from a configurable start step), semantic 1 - cos to the teacher.
The codebook + commitment loss (β 0.25) lives in the quantiser (quantizer.py)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


def pixel_l2(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(x_rec.float(), x.float())


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


def sobel_edges(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Per-channel Sobel gradients (B, 2C, H, W), replicate-padded; kernels scaled by 1/8."""
    C = x_BCHW.shape[1]
    kx = _SOBEL_X.to(x_BCHW.device, x_BCHW.dtype)
    k = torch.stack([kx, kx.T])[:, None].repeat(C, 1, 1, 1)  # (2C, 1, 3, 3)
    return F.conv2d(F.pad(x_BCHW, (1, 1, 1, 1), mode="replicate"), k, groups=C)


def edge_weighted_l2(x_rec: torch.Tensor, x: torch.Tensor, focus: float, scale: float = 0.25) -> torch.Tensor:
    """Pixel L2 with weights 1 + focus * min(1, |Sobel(x)| / scale) from the TARGET's edges,
    normalised by the mean weight (so the loss stays on the L2 scale). Objects that cover a few
    per cent of the image get their outlines (where rounding a corner costs) weighted up, while
    the loss stays a mean-seeking L2: unlike L1, an uncertain small object is not traded for
    the background median. scale 0.25 = a step of half the [-1, 1] range saturates the weight."""
    with torch.no_grad():
        g = sobel_edges(x.float())
        B, C2, H, W = g.shape
        mag = g.view(B, C2 // 2, 2, H, W).pow(2).sum(dim=(1, 2)).sqrt()  # (B, H, W)
        w = 1.0 + focus * (mag / scale).clamp(max=1.0)
    err = (x_rec.float() - x.float()).pow(2).mean(dim=1)
    return (w * err).sum() / w.sum()


def gradient_difference(x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient difference loss (Mathieu et al. 2016, "beyond mean square error"): mean |∇x̂ - ∇x|
    over Sobel gradients. A blurred outline has flatter gradients than the target's step, so unlike
    a pixel L2 this term charges blur directly (a 16-px star rounded into a blob)."""
    return (sobel_edges(x_rec.float()) - sobel_edges(x.float())).abs().mean()


def semantic_cos(pred_BChw: torch.Tensor, teacher_BChw: torch.Tensor) -> torch.Tensor:
    """Mean over positions of 1 - cos(pred, teacher) along channels (TokenFlow semantic loss)."""
    return (1 - F.cosine_similarity(pred_BChw.float(), teacher_BChw.float(), dim=1, eps=1e-6)).mean()


class PerceptualLoss(nn.Module):
    """A frozen perceptual distance net loaded with torch.jit.load(path): it must map two image
    batches in [-1, 1] to a per-sample (or scalar) distance, e.g. a scripted LPIPS. Never downloaded."""

    def __init__(self, path: str):
        super().__init__()
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"perceptual network not found at {p}; save a TorchScript LPIPS-like model there "
                f"(torch.jit.save) or set `model.init_args.perceptual_path: null` to turn the loss off")
        self.net = torch.jit.load(str(p), map_location="cpu").eval()
        for param in self.net.parameters():
            param.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.net.eval()
        return self

    def forward(self, x_rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.net(x_rec, x).mean()


class PatchDiscriminator(nn.Module):
    """PatchGAN (pix2pix NLayerDiscriminator layout): conv stride 2 stack -> 1-channel logits map."""

    def __init__(self, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        c = ch
        for i in range(1, n_layers + 1):
            c_next = ch * min(2 ** i, 8)
            layers += [nn.Conv2d(c, c_next, 4, 2 if i < n_layers else 1, 1), nn.GroupNorm(1, c_next),
                       nn.LeakyReLU(0.2, True)]
            c = c_next
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        return self.net(x_B3HW)


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """VQGAN hinge: ½(E[relu(1 - D(x))] + E[relu(1 + D(x̂))])."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def hinge_g_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.mean()


def adaptive_gan_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                        max_weight: float = 1e4) -> float:
    """VQGAN's balance (Esser et al. 2021, eq. 7): λ = ||∇_L rec|| / (||∇_L gan|| + 1e-4), with L the
    decoder's last layer, so the adversarial gradient there matches the reconstruction's whatever the
    two losses' scales (an L2 of ~0.01 next to a hinge of ~1 otherwise leaves only the GAN)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return float((g_rec.norm() / (g_gan.norm() + 1e-4)).clamp(0.0, max_weight))
