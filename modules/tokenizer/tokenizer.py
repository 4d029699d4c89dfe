"""MultiScaleTokenizer: pixel branch + semantic branch + dual codebook, as one nn.Module.

encode(images) -> MultiScaleCodes (per-scale target indices and, optionally, self-corrected
input indices); decode(indices, schedule) -> images; code_embeddings(); semantic_features().
The pixel decoder reads both quantised feature maps concatenated (TokenFlow); the semantic
decoder reads the semantic one and is trained against a teacher (semantic.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn

from modules.common.scale_schedule import ScaleSchedule
from modules.tokenizer.branches import CNNDecoder, CNNEncoder
from modules.tokenizer.quantizer import DualCodebookQuantizer, QuantOut
from modules.tokenizer.semantic import SemanticDecoder, build_semantic_encoder


@dataclass
class TokenizerConfig:
    """Network shape. Defaults are TokenFlow-like (REFERENCE.md); Shapes configs shrink them."""

    codebook_size: int = 16384  # NF ablations: 16,384; TokenFlow releases: 32,768
    sem_dim: int = 32  # TokenFlow semantic code dim
    pix_dim: int = 8  # TokenFlow pixel code dim
    pixel_weight: float = 1.0  # w in argmin(d_sem + w·d_pix)
    beta: float = 0.25  # commitment
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)  # patch = 2**(len-1) = 16
    num_res_blocks: int = 2
    decoder_width: float = 1.0  # stage 3: 2.0 (2x pixel decoder capacity)
    num_phi: int = 4  # VAR: 4 partially shared φ
    phi_ratio: float = 0.5  # VAR quant_resi
    semantic_encoder: Literal["cnn", "vit", "open_clip", "timm"] = "cnn"
    semantic_ch: int = 32  # from-scratch CNN semantic encoder width
    vit: dict = field(default_factory=lambda: {"dim": 128, "depth": 4, "heads": 4})
    backbone_name: str | None = None  # open_clip/timm model name for the semantic encoder
    backbone_weights: str | None = None  # LOCAL weights file (never downloaded)
    backbone_kwargs: dict = field(default_factory=dict)
    teacher_dim: int = 18  # semantic decoder output dim (labels teacher: 7 classes + 11 colours)
    semantic_decoder_ch: int = 64
    use_semantic: bool = True  # False in stage 1: index from the pixel distance alone

    @property
    def patch(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


@dataclass
class MultiScaleCodes:
    schedule: ScaleSchedule
    targets: list  # per scale (B, h_k, w_k) long: top-1 indices
    inputs: list  # per scale (B, h_k, w_k) long: self-corrected inputs (== targets without SC)

    def flat(self, which: str = "targets") -> torch.Tensor:
        """(B, token_count): scales concatenated scale-major, row-major (CONTRACTS.md)."""
        maps = getattr(self, which)
        return torch.cat([m.flatten(1) for m in maps], dim=1)


class MultiScaleTokenizer(nn.Module):
    def __init__(self, config: TokenizerConfig | None = None):
        super().__init__()
        self.config = cfg = config or TokenizerConfig()
        if cfg.codebook_size < 2:
            raise ValueError(f"codebook_size must be >= 2, got {cfg.codebook_size}")
        self.patch = cfg.patch
        self.pixel_encoder = CNNEncoder(cfg.pix_dim, cfg.ch, cfg.ch_mult, cfg.num_res_blocks)
        self.semantic_encoder = build_semantic_encoder(
            cfg.semantic_encoder, cfg.sem_dim, cfg.patch, ch=cfg.semantic_ch, ch_mult=cfg.ch_mult,
            num_res_blocks=1, vit=cfg.vit, name=cfg.backbone_name, weights=cfg.backbone_weights,
            kwargs=cfg.backbone_kwargs)
        self.quantizer = DualCodebookQuantizer(cfg.codebook_size, cfg.sem_dim, cfg.pix_dim, cfg.pixel_weight,
                                               cfg.beta, cfg.num_phi, cfg.phi_ratio)
        self.pixel_decoder = CNNDecoder(cfg.sem_dim + cfg.pix_dim, cfg.ch, cfg.ch_mult, cfg.num_res_blocks,
                                        cfg.decoder_width)
        self.semantic_decoder = SemanticDecoder(cfg.sem_dim, cfg.teacher_dim, cfg.semantic_decoder_ch)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def schedule_for(self, height: int, width: int) -> ScaleSchedule:
        return ScaleSchedule.for_image(height, width, self.patch)

    def _check_images(self, x_B3HW: torch.Tensor) -> ScaleSchedule:
        if x_B3HW.ndim != 4 or x_B3HW.shape[1] != 3:
            raise ValueError(f"expected images B x 3 x H x W in [-1, 1], got shape {tuple(x_B3HW.shape)}")
        return self.schedule_for(*x_B3HW.shape[-2:])

    def features(self, x_B3HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unquantised (semantic, pixel) feature maps on the final token grid."""
        f_pix = self.pixel_encoder(x_B3HW)
        if self.config.use_semantic:
            f_sem = self.semantic_encoder(x_B3HW)
        else:
            f_sem = f_pix.new_zeros(f_pix.shape[0], self.config.sem_dim, *f_pix.shape[-2:])
        return f_sem, f_pix

    def forward(self, x_B3HW: torch.Tensor, keep: list[bool] | None = None, decode: bool = True):
        """Training path -> (reconstruction or None, QuantOut, semantic decoder prediction or None).
        `keep[k] = False` skips scale k (scale dropping)."""
        schedule = self._check_images(x_B3HW)
        f_sem, f_pix = self.features(x_B3HW)
        q: QuantOut = self.quantizer(f_sem, f_pix, schedule, keep, self.config.use_semantic)
        x_rec = self.decode_features(q.hat_sem, q.hat_pix) if decode else None
        sem_pred = self.semantic_decoder(q.hat_sem) if self.config.use_semantic else None
        return x_rec, q, sem_pred

    def decode_features(self, hat_sem_BCHW: torch.Tensor, hat_pix_BCHW: torch.Tensor) -> torch.Tensor:
        """Pixel decoder on the concatenated quantised features (TokenFlow)."""
        return self.pixel_decoder(torch.cat([hat_sem_BCHW, hat_pix_BCHW], dim=1))

    # ------------------------------------------------------------------ public API (CONTRACTS.md)
    @torch.no_grad()
    def encode(self, images: torch.Tensor, self_correct: float = 0.0, topk: int = 8,
               generator: torch.Generator | None = None) -> MultiScaleCodes:
        return self.encode_variants(images, 1, self_correct, topk, generator)[0]

    @torch.no_grad()
    def encode_variants(self, images: torch.Tensor, variants: int = 1, self_correct: float = 0.0, topk: int = 8,
                        generator: torch.Generator | None = None) -> list[MultiScaleCodes]:
        """Runs the encoders once and quantises `variants` times (pretokenise)."""
        schedule = self._check_images(images)
        f_sem, f_pix = self.features(images)
        out = []
        for _ in range(variants):
            t, i = self.quantizer.quantize_codes(f_sem, f_pix, schedule, self_correct, topk, generator,
                                                 self.config.use_semantic)
            out.append(MultiScaleCodes(schedule, t, i))
        return out

    @torch.no_grad()
    def decode(self, indices: list, schedule: ScaleSchedule) -> torch.Tensor:
        """Index maps (all scales, or a prefix) -> images (B, 3, H, W), clamped to [-1, 1]."""
        hat_sem, hat_pix = self.quantizer.indices_to_features(indices, schedule, self.config.use_semantic)
        return self.decode_features(hat_sem, hat_pix).clamp(-1, 1)

    @torch.no_grad()
    def semantic_features(self, indices: list, schedule: ScaleSchedule) -> torch.Tensor:
        """Semantic-decoder features of index maps (the refiner's condition, REFERENCE.md)."""
        hat_sem, _ = self.quantizer.indices_to_features(indices, schedule, True)
        return self.semantic_decoder(hat_sem)

    def code_embeddings(self) -> torch.Tensor:
        return self.quantizer.code_embeddings()
