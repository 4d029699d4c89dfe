"""Semantic branch: encoder backends, semantic decoder and the teachers it reconstructs.

Encoder backends (REFERENCE.md "NextFlow tokenizer": NextFlow uses siglip2-so400m-patch16-naflex):
  "cnn"        small CNN trained from scratch (default; same downsampling as the pixel branch)
  "vit"        small ViT trained from scratch (patch = tokenizer patch, 2D sin-cos positions on
               normalised coordinates, so any H x W works)
  "open_clip" / "timm"  a pretrained backbone loaded from a LOCAL weights file (never downloaded),
               fine-tuned, its feature grid resized to the token grid and projected to sem_dim.
Teachers for the 1 - cos semantic loss:
  "labels"     Shapes world: one-hot class and colour maps (from the renderer) area-pooled to the
               token grid, so tokens carry "what is where" the way SigLIP features do.
  "open_clip" / "timm"  a frozen pretrained encoder from a local path (the real setting).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.tokenizer.branches import CNNEncoder, ResBlock, norm

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """(h*w, dim) sin-cos embedding of normalised (y, x) in [0, 1]: resolution-agnostic."""
    quarter = dim // 4
    freqs = torch.exp(torch.arange(quarter, device=device) * (-math.log(1000.0) / max(1, quarter)))
    ys = (torch.arange(h, device=device) + 0.5) / h * 64
    xs = (torch.arange(w, device=device) + 0.5) / w * 64
    y_hw, x_hw = torch.meshgrid(ys, xs, indexing="ij")
    ang_y, ang_x = y_hw.reshape(-1, 1) * freqs, x_hw.reshape(-1, 1) * freqs
    emb = torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


class SmallViT(nn.Module):
    def __init__(self, out_dim: int, patch: int, dim: int = 128, depth: int = 4, heads: int = 4):
        super().__init__()
        self.patch, self.dim = patch, dim
        self.embed = nn.Conv2d(3, dim, patch, stride=patch)
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, out_dim)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        x_BDhw = self.embed(x_B3HW)
        B, D, h, w = x_BDhw.shape
        x_BLD = x_BDhw.flatten(2).transpose(1, 2) + sincos_2d(h, w, D, x_BDhw.device)
        x_BLC = self.head(self.norm(self.blocks(x_BLD)))
        return x_BLC.transpose(1, 2).reshape(B, -1, h, w)


def load_backbone(kind: str, name: str | None, weights: str | None, what: str, kwargs: dict | None = None) -> nn.Module:
    """A pretrained image backbone from a local file. Errors name the value and the fix."""
    if not name:
        raise ValueError(f"{what}: backend {kind!r} needs a model name (e.g. 'ViT-B-16' for open_clip, "
                         f"'vit_base_patch16_siglip_224' for timm); set it in the tokenizer config")
    if not weights:
        raise ValueError(f"{what}: backend {kind!r} needs a local weights path (nothing is downloaded); "
                         f"set it in the tokenizer config, or use the from-scratch backend 'cnn'")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} weights not found at {path}; copy the {kind} checkpoint for {name!r} to that path "
            f"(this machine cannot download) or switch the backend to 'cnn'/'labels'")
    if kind == "open_clip":
        import open_clip

        return open_clip.create_model(name, pretrained=str(path), **(kwargs or {})).visual
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=0, **(kwargs or {}))
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        try:
            missing, _ = model.load_state_dict(state, strict=False)  # classifier heads may be left over
        except RuntimeError as err:
            raise ValueError(f"{what} weights at {path} do not fit timm model {name!r} "
                             f"(kwargs {kwargs or {}}); check the model name/kwargs: {str(err)[:300]}") from None
        if missing:
            raise ValueError(f"{what} weights at {path} lack {len(missing)} tensors of timm model {name!r} "
                             f"(e.g. {missing[0]}); check the model name/kwargs")
        return model
    raise ValueError(f"{what}: unknown backbone kind {kind!r}; use 'open_clip' or 'timm'")


class BackboneGrid(nn.Module):
    """Runs a backbone on images in [-1, 1] and returns its last feature map (B, C, h', w')."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind
        cfg = getattr(model, "pretrained_cfg", None) or {}
        mean = cfg.get("mean") or getattr(model, "image_mean", None) or CLIP_MEAN
        std = cfg.get("std") or getattr(model, "image_std", None) or CLIP_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        size = getattr(getattr(model, "patch_embed", None), "img_size", None)  # timm ViT: the built size
        size = size or getattr(model, "image_size", None) or cfg.get("input_size") or (224, 224)  # open_clip
        size = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        self.input_hw = (int(size[0]), int(size[1]))

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        x = F.interpolate((x_B3HW + 1) / 2, size=self.input_hw, mode="bicubic", align_corners=False)
        x = (x - self.mean) / self.std
        out = self.model.forward_intermediates(x, indices=1, output_fmt="NCHW", intermediates_only=True)
        out = out["image_intermediates"] if isinstance(out, dict) else out
        return out[-1]


class BackboneEncoder(nn.Module):
    def __init__(self, backbone: BackboneGrid, out_dim: int, patch: int):
        super().__init__()
        self.backbone, self.patch = backbone, patch
        with torch.no_grad():
            c = backbone(torch.zeros(1, 3, *backbone.input_hw)).shape[1]
        self.proj = nn.Conv2d(c, out_dim, 1)

    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:
        h, w = x_B3HW.shape[-2] // self.patch, x_B3HW.shape[-1] // self.patch
        f = F.interpolate(self.backbone(x_B3HW), size=(h, w), mode="bilinear", align_corners=False)
        return self.proj(f)


def build_semantic_encoder(kind: str, out_dim: int, patch: int, *, ch: int, ch_mult: tuple[int, ...],
                           num_res_blocks: int, vit: dict | None = None, name: str | None = None,
                           weights: str | None = None, kwargs: dict | None = None) -> nn.Module:
    if kind == "cnn":
        return CNNEncoder(out_dim, ch, ch_mult, num_res_blocks)
    if kind == "vit":
        return SmallViT(out_dim, patch, **(vit or {}))
    if kind in ("open_clip", "timm"):
        model = load_backbone(kind, name, weights, "semantic encoder", kwargs)
        return BackboneEncoder(BackboneGrid(model, kind), out_dim, patch)
    raise ValueError(f"unknown semantic encoder {kind!r}; use 'cnn', 'vit', 'open_clip' or 'timm'")


class SemanticDecoder(nn.Module):
    """Quantised semantic features (B, sem_dim, h, w) -> teacher feature space (B, teacher_dim, h, w)."""

    def __init__(self, in_dim: int, out_dim: int, ch: int = 64, depth: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_dim, ch, 3, padding=1), *[ResBlock(ch, ch) for _ in range(depth)],
                                 norm(ch), nn.SiLU(), nn.Conv2d(ch, out_dim, 1))

    def forward(self, z_BChw: torch.Tensor) -> torch.Tensor:
        return self.net(z_BChw)


class LabelMapTeacher(nn.Module):
    """Shapes world teacher: [one-hot class | one-hot colour] per pixel, area-pooled to the grid."""

    def __init__(self):
        super().__init__()
        from shapes.palette import NUM_CLASS_LABELS, NUM_COLOR_LABELS

        self.num_class, self.num_color = NUM_CLASS_LABELS, NUM_COLOR_LABELS
        self.dim = NUM_CLASS_LABELS + NUM_COLOR_LABELS

    @torch.no_grad()
    def forward(self, batch: dict[str, Any], grid: tuple[int, int]) -> torch.Tensor:
        if "class_map" not in batch or "color_map" not in batch:
            raise KeyError("the 'labels' semantic teacher needs batch['class_map'] and batch['color_map'] "
                           "(Shapes world shards); use teacher 'open_clip'/'timm' for other data")
        one_hot = torch.cat([F.one_hot(batch["class_map"].long().clamp(0, self.num_class - 1), self.num_class),
                             F.one_hot(batch["color_map"].long().clamp(0, self.num_color - 1), self.num_color)], -1)
        return F.adaptive_avg_pool2d(one_hot.permute(0, 3, 1, 2).float(), grid)


class BackboneTeacher(nn.Module):
    """Frozen pretrained encoder from a local path; features resized to the token grid."""

    def __init__(self, kind: str, name: str | None, weights: str | None, kwargs: dict | None = None):
        super().__init__()
        self.backbone = BackboneGrid(load_backbone(kind, name, weights, "semantic teacher", kwargs), kind)
        self.backbone.requires_grad_(False).eval()
        with torch.no_grad():
            self.dim = self.backbone(torch.zeros(1, 3, *self.backbone.input_hw)).shape[1]

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # always frozen
        return self

    @torch.no_grad()
    def forward(self, batch: dict[str, Any], grid: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(self.backbone(batch["image"]), size=grid, mode="bilinear", align_corners=False)


def build_teacher(kind: str, name: str | None = None, weights: str | None = None, kwargs: dict | None = None):
    if kind == "labels":
        return LabelMapTeacher()
    if kind in ("open_clip", "timm"):
        return BackboneTeacher(kind, name, weights, kwargs)
    if kind == "none":
        return None
    raise ValueError(f"unknown semantic teacher {kind!r}; use 'labels', 'open_clip', 'timm' or 'none'")
