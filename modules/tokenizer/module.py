"""TokenizerModule: Lightning glue around MultiScaleTokenizer (losses, metrics, optimisers, stages).

Stages (REFERENCE.md "NextFlow tokenizer"): "pixel" trains the pixel branch alone (index from the
pixel distance only), "joint" trains everything, "decoder" fine-tunes only the pixel decoder
(give it `tokenizer.decoder_width: 2.0`) with the rest frozen. Each stage starts from the
previous stage's checkpoint given as `init_ckpt`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from modules.common.checkpoints import load_checkpoint
from modules.common.errors import ConfigError
from modules.common.lr_schedule import trainer_schedule
from modules.tokenizer.branches import CNNDecoder, widen_decoder
from modules.tokenizer.losses import (PatchDiscriminator, PerceptualLoss, adaptive_gan_weight, edge_weighted_l2,
                                      gradient_difference, hinge_d_loss, hinge_g_loss, pixel_l2, semantic_cos)
from modules.tokenizer.metrics import SemanticFidelity, build_fid_extractor, frechet_from_features
from modules.tokenizer.quantizer import codebook_stats
from modules.tokenizer.semantic import build_teacher
from modules.tokenizer.tokenizer import MultiScaleTokenizer, TokenizerConfig

log = logging.getLogger(__name__)
Stage = Literal["pixel", "joint", "decoder"]


class TokenizerModule(pl.LightningModule):
    def __init__(
        self,
        tokenizer: TokenizerConfig | None = None,
        stage: Stage = "joint",
        init_ckpt: str | None = None,
        decoder_width: float | None = None,  # overrides tokenizer.decoder_width (stage 3: 2.0)
        teacher: Literal["labels", "open_clip", "timm", "none"] = "labels",
        teacher_name: str | None = None,
        teacher_weights: str | None = None,
        teacher_kwargs: dict | None = None,
        lr: float = 2e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        weight_decay: float = 0.0,
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        warmup_steps: int = 0,
        w_pixel: float = 1.0,
        edge_focus: float = 0.0,  # pixel L2 weighted 1 + edge_focus on the target's Sobel outlines; 0 = plain L2
        w_gradient: float = 0.0,  # gradient difference loss (sharp outlines); 0 = off
        w_vq: float = 1.0,
        w_semantic: float = 1.0,
        w_perceptual: float = 1.0,
        perceptual_path: str | None = None,  # LPIPS-like TorchScript net; off when null
        disc_start: int | None = None,  # PatchGAN from this step; null = no discriminator
        disc_weight: float = 0.5,  # λ_G (TokenFlow 0.5)
        disc_ch: int = 64,  # PatchGAN base width (pix2pix 64; 16 keeps it affordable on a CPU)
        disc_adaptive: bool = False,  # VQGAN's adaptive λ: λ_G · ||∇L_rec|| / ||∇L_G|| at the decoder's last layer
        restart_every: int = 25,  # dead-code restart period (steps); 0 = off
        restart_threshold: float = 0.03,  # dead = usage EMA below this fraction of the mean
        val_oracle: bool = True,  # semantic fidelity with shapes.oracle.OracleDetector
        rfid_extractor: Literal["randconv", "inception"] | None = "randconv",
        inception_dir: str | None = None,
        val_metric_images: int = 256,  # cap on images for rFID / oracle per validation
        # stage "decoder" only: the decoder learns to draw the clean image from codes of which this
        # fraction per scale is swapped for one of their `decoder_noise_topk` nearest (the
        # quantiser's self-correction rule), the kind of errors an AR model's sampled codes carry;
        # 0 = clean codes (TokenFlow / NF)
        decoder_code_noise: float = 0.0,
        decoder_noise_topk: int = 8,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        cfg = tokenizer or TokenizerConfig()
        if decoder_width is not None:
            cfg.decoder_width = decoder_width
        if stage == "pixel":
            cfg.use_semantic = False
        elif stage == "joint":
            cfg.use_semantic = True
        if decoder_code_noise and stage != "decoder":
            raise ValueError(f"decoder_code_noise={decoder_code_noise} trains the decoder on perturbed codes, which "
                             f"only stage 'decoder' (stage 3) does; got stage {stage!r}: set it to 0 or use stage 3")
        if not 0.0 <= decoder_code_noise <= 1.0:
            raise ValueError(f"decoder_code_noise must be a fraction in [0, 1], got {decoder_code_noise}")
        self.stage = stage
        self.tokenizer = MultiScaleTokenizer(cfg)
        # Frozen helper nets (teacher, perceptual, FID extractor) are kept out of the state_dict:
        # checkpoints hold the tokenizer only, and loading one never needs the helpers' weights.
        self._aux: dict[str, torch.nn.Module | None] = {}
        self._aux["teacher"] = build_teacher(teacher, teacher_name, teacher_weights, teacher_kwargs) if stage == "joint" else None
        if self.teacher is not None and self.teacher.dim != cfg.teacher_dim:
            raise ValueError(f"tokenizer.teacher_dim is {cfg.teacher_dim} but the {teacher!r} teacher gives "
                             f"{self.teacher.dim}-dim features; set `tokenizer.teacher_dim: {self.teacher.dim}`")
        self._aux["perceptual"] = PerceptualLoss(perceptual_path) if perceptual_path else None
        self.disc = PatchDiscriminator(disc_ch) if disc_start is not None else None
        if init_ckpt:
            self.load_init_checkpoint(init_ckpt)
        self._freeze_for_stage()
        self.register_buffer("train_steps", torch.zeros((), dtype=torch.long))
        self.scale_keep: list[bool] | None = None  # set per batch by callbacks.ScaleDropping
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self._aux["fid_extractor"] = build_fid_extractor(rfid_extractor, inception_dir)
        self.fidelity = SemanticFidelity() if val_oracle else None

    # ------------------------------------------------------------------ public API (CONTRACTS.md)
    def encode(self, images, self_correct: float = 0.0, topk: int = 8, generator=None):
        return self.tokenizer.encode(images, self_correct, topk, generator)

    def decode(self, indices, schedule):
        return self.tokenizer.decode(indices, schedule)

    def code_embeddings(self):
        return self.tokenizer.code_embeddings()

    @property
    def codebook_size(self) -> int:
        return self.tokenizer.codebook_size

    @property
    def patch(self) -> int:
        return self.tokenizer.patch

    # ------------------------------------------------------------------ setup
    @property
    def teacher(self):
        return self._aux["teacher"]

    @property
    def perceptual(self):
        return self._aux["perceptual"]

    @property
    def fid_extractor(self):
        return self._aux["fid_extractor"]

    def _aux_to_device(self) -> None:
        for net in self._aux.values():
            if net is not None:
                net.to(self.device)

    def on_fit_start(self):
        self._aux_to_device()

    def on_validation_start(self):
        self._aux_to_device()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Drop helper-net tensors that older checkpoints may hold."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith(("fid_extractor.", "teacher.", "perceptual."))]:
            del state[key]

    def load_init_checkpoint(self, path: str) -> None:
        """Weights of the previous stage. Sub-networks whose shapes changed (the 2x pixel decoder
        of stage 3) keep their fresh initialisation."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(
                f"init_ckpt {p} not found; train the previous tokenizer stage first (e.g. `python main.py fit "
                f"--config configs/experiment/tokenizer_shapes_stage1.yaml`) or fix `model.init_args.init_ckpt`")
        state = load_checkpoint(p, "tokenizer", what="init_ckpt")["state_dict"]  # weights_only, kind checked
        own = self.state_dict()
        changed = {".".join(k.split(".")[:2]) for k, v in state.items() if k in own and own[k].shape != v.shape}
        keep = {k: v for k, v in state.items() if k in own and ".".join(k.split(".")[:2]) not in changed
                and not k.startswith(("teacher.", "perceptual.", "disc."))}
        if not keep:
            raise ConfigError(f"init_ckpt {p} shares no tensor with this tokenizer (different architecture); "
                              f"pass a checkpoint of the previous stage of this tokenizer config")
        self.load_state_dict(keep, strict=False)
        widened = False
        if "tokenizer.pixel_decoder" in changed:  # stage 3: a wider decoder starts as the old one
            widened = self._widen_pixel_decoder({k[len("tokenizer.pixel_decoder."):]: v for k, v in state.items()
                                                 if k.startswith("tokenizer.pixel_decoder.")})
        log.info("loaded %d tensors from %s; shape changed: %s (pixel decoder widened from the old one: %s)",
                 len(keep), p, sorted(changed) or "none", widened)

    def _widen_pixel_decoder(self, old_state: dict) -> bool:
        cfg, new = self.tokenizer.config, self.tokenizer.pixel_decoder
        ratio = new.net[0].out_channels / old_state["net.0.weight"].shape[0]
        old = CNNDecoder(cfg.sem_dim + cfg.pix_dim, cfg.ch, cfg.ch_mult, cfg.num_res_blocks, cfg.decoder_width / ratio)
        try:
            old.load_state_dict(old_state)
        except RuntimeError:
            return False
        return widen_decoder(old, new)

    def _freeze_for_stage(self) -> None:
        t = self.tokenizer
        t.requires_grad_(True)
        if self.stage == "pixel":
            for m in (t.semantic_encoder, t.semantic_decoder, t.quantizer.phi_sem):
                m.requires_grad_(False)
            t.quantizer.sem_codes.requires_grad_(False)
        elif self.stage == "decoder":
            t.requires_grad_(False)
            t.pixel_decoder.requires_grad_(True)

    def configure_optimizers(self):
        params = [p for p in self.tokenizer.parameters() if p.requires_grad]
        opt_g = torch.optim.AdamW(params, lr=self.hparams.lr, betas=self.hparams.betas,
                                  weight_decay=self.hparams.weight_decay)
        factor = trainer_schedule(self._trainer, self.hparams.warmup_steps, self.hparams.lr_schedule == "cosine")
        sched = torch.optim.lr_scheduler.LambdaLR(opt_g, factor)
        if self.disc is None:
            return [opt_g], [sched]
        opt_d = torch.optim.AdamW(self.disc.parameters(), lr=self.hparams.lr, betas=self.hparams.betas)
        return [opt_g, opt_d], [sched]

    # ------------------------------------------------------------------ training
    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.stage == "decoder":  # frozen parts stay in eval mode
            for name, child in self.tokenizer.named_children():
                if name != "pixel_decoder":
                    child.eval()
        return self

    def decoder_inputs(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """The quantised features the pixel decoder trains on -> (hat_sem, hat_pix, QuantOut or None,
        semantic prediction or None). With `decoder_code_noise` (stage 3 only, everything but the
        decoder frozen) they are built from codes of which that fraction per scale was swapped."""
        hp = self.hparams
        if hp.decoder_code_noise > 0:
            codes = self.tokenizer.encode(x, self_correct=hp.decoder_code_noise, topk=hp.decoder_noise_topk,
                                          generator=generator)
            hat_sem, hat_pix = self.tokenizer.quantizer.indices_to_features(
                codes.inputs, codes.schedule, self.tokenizer.config.use_semantic)
            return hat_sem, hat_pix, None, None
        with torch.set_grad_enabled(self.stage != "decoder" and torch.is_grad_enabled()):
            _, q, sem_pred = self.tokenizer(x, keep=self.scale_keep, decode=False)
        return q.hat_sem, q.hat_pix, q, sem_pred

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        hp, x = self.hparams, batch["image"]
        opts = self.optimizers()
        opt_g, opt_d = (opts[0], opts[1]) if isinstance(opts, list) else (opts, None)
        hat_sem, hat_pix, q, sem_pred = self.decoder_inputs(x)
        x_rec = self.tokenizer.decode_features(hat_sem, hat_pix)
        losses = {"pixel_l2": edge_weighted_l2(x_rec, x, hp.edge_focus) if hp.edge_focus else pixel_l2(x_rec, x)}
        if hp.w_gradient:
            losses["gradient"] = gradient_difference(x_rec, x)
        if self.stage != "decoder":
            losses["vq"] = q.vq_loss
        if self.teacher is not None and sem_pred is not None:
            losses["semantic"] = semantic_cos(sem_pred, self.teacher(batch, tuple(sem_pred.shape[-2:])))
        if self.perceptual is not None:
            losses["perceptual"] = self.perceptual(x_rec, x)
        gan_on = self.disc is not None and int(self.train_steps) >= hp.disc_start
        weights = {"pixel_l2": hp.w_pixel, "gradient": hp.w_gradient, "vq": hp.w_vq,
                   "semantic": hp.w_semantic, "perceptual": hp.w_perceptual, "gan_g": hp.disc_weight}
        if gan_on:
            losses["gan_g"] = hinge_g_loss(self.disc(x_rec))
            if hp.disc_adaptive:
                rec = sum(weights[k] * losses[k] for k in ("pixel_l2", "gradient", "perceptual") if k in losses)
                weights["gan_g"] = hp.disc_weight * adaptive_gan_weight(rec, losses["gan_g"],
                                                                       self.tokenizer.pixel_decoder.last_layer)
                losses["gan_weight"] = torch.as_tensor(weights["gan_g"])
        loss = sum(weights[k] * v for k, v in losses.items() if k in weights)
        opt_g.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        opt_g.step()
        self.lr_schedulers().step()
        if gan_on:
            d_loss = hinge_d_loss(self.disc(x), self.disc(x_rec.detach()))
            opt_d.zero_grad(set_to_none=True)
            self.manual_backward(d_loss)
            opt_d.step()
            losses["gan_d"] = d_loss
        self.train_steps += 1
        if hp.restart_every and self.stage != "decoder" and int(self.train_steps) % hp.restart_every == 0:
            quantizer = self.tokenizer.quantizer
            restarted = quantizer.restart_dead_codes(hp.restart_threshold)
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                for t in (quantizer.sem_codes.data, quantizer.pix_codes.data, quantizer.usage_ema):
                    torch.distributed.broadcast(t, src=0)  # every rank keeps rank 0's restarted codebook
            losses["restarted_codes"] = torch.tensor(float(restarted))
        bs = x.shape[0]
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=bs)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=bs)
        return loss.detach()

    # ------------------------------------------------------------------ validation
    def on_validation_epoch_start(self):
        self._val_counts = torch.zeros(self.codebook_size, dtype=torch.long)
        self._val_feats: dict[str, list] = {"real": [], "fake": []}
        self._val_images = 0
        if self.fidelity is not None:
            self.fidelity.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int):
        x = batch["image"]
        x_rec, q, _ = self.tokenizer(x, keep=None)
        # metrics in fp32 under bf16-mixed autocast: SSIM's E[x²] − E[x]² cancels to garbage in bf16 convs
        with torch.autocast(x.device.type, enabled=False):
            x_rec = x_rec.float().clamp(-1, 1)
            self.psnr.update((x_rec + 1) / 2, (x + 1) / 2)
            self.ssim.update((x_rec + 1) / 2, (x + 1) / 2)
            for idx in q.indices:
                self._val_counts += torch.bincount(idx.flatten().cpu(), minlength=self.codebook_size)
            self.log("val/pixel_l2", pixel_l2(x_rec, x), batch_size=x.shape[0], sync_dist=True)
            if self._val_images < self.hparams.val_metric_images:
                if self.fid_extractor is not None:
                    self._val_feats["real"].append(self.fid_extractor(x).cpu().numpy())
                    self._val_feats["fake"].append(self.fid_extractor(x_rec).cpu().numpy())
                if self.fidelity is not None and "meta" in batch:
                    self.fidelity.update(x, x_rec, batch["meta"])
                self._val_images += x.shape[0]

    def on_validation_epoch_end(self):
        counts = self._val_counts
        if self.trainer.world_size > 1:
            counts = self.all_gather(counts.to(self.device)).sum(0).cpu()
        usage, perplexity = codebook_stats(counts)
        metrics = {"val/psnr": self.psnr.compute(), "val/ssim": self.ssim.compute(),
                   "val/codebook_usage": usage, "val/perplexity": perplexity}
        self.psnr.reset()
        self.ssim.reset()
        if self.fid_extractor is not None and len(self._val_feats["real"]) > 0:
            real, fake = np.concatenate(self._val_feats["real"]), np.concatenate(self._val_feats["fake"])
            if self.trainer.world_size > 1:  # every rank read other images: the distance is over all of them
                real, fake = (self.all_gather(torch.from_numpy(a).to(self.device)).flatten(0, 1).cpu().numpy()
                              for a in (real, fake))
            if len(real) > 2:
                metrics[f"val/rfid_{self.fid_extractor.label}"] = frechet_from_features(real, fake)
        if self.fidelity is not None:
            metrics.update({f"val/{k}": v for k, v in self.fidelity.compute().items()})
        # Every value above is already over all ranks (torchmetrics' own sync for PSNR / SSIM /
        # oracle agreement, all_gather for codebook counts and FID features), so sync_dist averages equal
        # values (it only tells Lightning they are global).
        self.log_dict({k: float(v) for k, v in metrics.items()}, prog_bar=False, sync_dist=True)
        self.last_val_metrics = {k: float(v) for k, v in metrics.items()}
