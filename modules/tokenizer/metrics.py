"""Validation metrics beyond PSNR/SSIM (which come from torchmetrics in module.py):

- rFID through clean-fid's Fréchet distance, on features of either clean-fid's Inception
  (TorchScript `inception-2015-12-05.pt` in a LOCAL directory; never downloaded) or a custom
  extractor (a fixed, seeded random conv net: comparable between runs of this project, not with
  published FIDs). The logged name says which: `rfid_inception` or `rfid_randconv`.
- Semantic fidelity: GenEval-style agreement between a scene's ground truth and what the oracle
  detector finds in the reconstruction (every object found with its class and colour at its
  place, nothing extra; detector threshold 0.3 as in GenEval).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics import Metric

from modules.common.images import to_uint8

GENEVAL_THRESHOLD = 0.3  # REFERENCE.md "GenEval protocol": detector threshold


class RandConvFeatures(nn.Module):
    """Custom FID extractor: a frozen random conv net (seeded), global-pooled to 128 dims."""

    label = "randconv"

    def __init__(self, seed: int = 0, dim: int = 128):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        chans = [3, 32, 64, dim]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, stride=2, padding=1) for a, b in zip(chans, chans[1:]))
        for conv in self.convs:
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) / (conv.weight[0].numel() ** 0.5)
            conv.bias.data.zero_()
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(x_B3HW.float(), size=(64, 64), mode="bilinear", align_corners=False)
        for conv in self.convs:
            h = F.leaky_relu(conv(h), 0.2)
        return h.mean(dim=(2, 3))


class InceptionFeatures(nn.Module):
    label = "inception"

    def __init__(self, directory: str):
        super().__init__()
        path = Path(directory).expanduser() / "inception-2015-12-05.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"clean-fid Inception weights not found at {path}; copy inception-2015-12-05.pt into "
                f"{Path(directory)} (nothing is downloaded here) or use `rfid_extractor: randconv`")
        from cleanfid.inception_torchscript import InceptionV3W

        self.net = InceptionV3W(str(path.parent), download=False, resize_inside=False).eval()
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((x_B3HW.float() + 1) * 127.5, size=(299, 299), mode="bicubic", align_corners=False)
        return self.net(x.clamp(0, 255))


def build_fid_extractor(kind: str | None, inception_dir: str | None = None) -> nn.Module | None:
    if kind in (None, "none"):
        return None
    if kind == "randconv":
        return RandConvFeatures()
    if kind == "inception":
        if not inception_dir:
            raise ValueError("rfid_extractor 'inception' needs `inception_dir` (a local directory holding "
                             "inception-2015-12-05.pt); or use rfid_extractor: randconv")
        return InceptionFeatures(inception_dir)
    raise ValueError(f"unknown rfid_extractor {kind!r}; use 'randconv', 'inception' or null")


def frechet_from_features(real_ND: np.ndarray, fake_ND: np.ndarray) -> float:
    from cleanfid.fid import frechet_distance

    mu1, mu2 = real_ND.mean(0), fake_ND.mean(0)
    s1, s2 = np.cov(real_ND, rowvar=False), np.cov(fake_ND, rowvar=False)
    return float(frechet_distance(mu1, s1, mu2, s2))


# ----------------------------------------------------------------------------- semantic fidelity
def scene_from_meta(meta: dict[str, Any]):
    """The Scene a raw sample's metadata describes (meta['scene'] or the meta itself), or None."""
    from shapes.scene import Scene

    data = meta.get("scene", meta) if isinstance(meta, dict) else None
    if not isinstance(data, dict) or "objects" not in data:
        return None
    try:
        return Scene.from_dict({"background": {}, **data})
    except (TypeError, KeyError, ValueError):
        return None


def scene_agreement(scene, detections: list[dict], height: int, width: int,
                    threshold: float = GENEVAL_THRESHOLD, match_class: bool = True) -> tuple[bool, int, int]:
    """(image correct, objects matched, objects in scene). A ground-truth object is matched by an
    unused confident detection of the same class (unless `match_class` is False) and colour whose box
    centre lies within half the object's side of its centre; the image is correct when all are
    matched and nothing is extra."""
    dets = [d for d in detections if d["score"] >= threshold]
    used = [False] * len(dets)
    matched = 0
    for obj in scene.objects:
        cx, cy = obj.center_px(width, height)
        tol = max(2.0, 0.5 * obj.side_px(width, height))
        for j, d in enumerate(dets):
            if used[j] or (match_class and d["class"] != obj.shape) or d.get("color") != obj.color:
                continue
            x0, y0, x1, y1 = d["bbox"]
            if abs((x0 + x1) / 2 - cx) <= tol and abs((y0 + y1) / 2 - cy) <= tol:
                used[j], matched = True, matched + 1
                break
    n = len(scene.objects)
    return matched == n and len(dets) == n, matched, n


class SemanticFidelity(Metric):
    """Accumulates oracle agreement on originals (the oracle's own ceiling) and reconstructions.
    A torchmetrics Metric: its counts are summed over DDP ranks when `compute` runs."""

    full_state_update = False
    COUNTS = ("images", "correct_orig", "correct_recon", "correct_recon_any_shape", "objects_orig",
              "objects_recon", "total_objects")

    def __init__(self, detector=None):
        super().__init__()
        if detector is None:
            from shapes.oracle import OracleDetector

            detector = OracleDetector()
        self.detector = detector
        for name in self.COUNTS:
            self.add_state(name, default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, x_B3HW: torch.Tensor, x_rec_B3HW: torch.Tensor, metas: list[dict]) -> None:
        H, W = x_B3HW.shape[-2:]
        for name, batch in (("orig", to_uint8(x_B3HW)), ("recon", to_uint8(x_rec_B3HW))):
            for image, meta in zip(batch, metas):
                scene = scene_from_meta(meta)
                if scene is None:
                    continue
                detections = self.detector.detect(image)
                ok, matched, n = scene_agreement(scene, detections, H, W)
                getattr(self, f"correct_{name}").add_(int(ok))
                if name == "recon":
                    self.correct_recon_any_shape.add_(int(scene_agreement(scene, detections, H, W,
                                                                          match_class=False)[0]))
                getattr(self, f"objects_{name}").add_(matched)
                if name == "orig":
                    self.images.add_(1)
                    self.total_objects.add_(n)

    def compute(self) -> dict[str, float]:
        images = int(self.images)
        if images == 0:
            return {}
        return {
            "agreement": int(self.correct_recon) / images,
            "agreement_orig": int(self.correct_orig) / images,
            "agreement_color_position": int(self.correct_recon_any_shape) / images,  # shape class ignored
            "object_recall": int(self.objects_recon) / max(1, int(self.total_objects)),
        }
