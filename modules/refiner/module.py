"""RefinerModule: the optional diffusion refiner (DESIGN.md; REFERENCE.md "Diffusion refiner").

It restores what the discrete codes lose: a conditional rectified flow in pixel space (flow.py)
on the residual between the ground truth and the tokenizer's decoded image, normalised by its
dataset scale (an RMS estimated once, on the first `scale_batches` training batches, then kept in
the checkpoint). Condition: the decoded image and the code features f̂ of the same codes
(net.py). `objective: regression` trains the same network as a deterministic residual regressor
(the control REFERENCE.md asks for: diffusion decoders trade PSNR for sharpness).

The frozen tokenizer (`tokenizer_ckpt`) is not part of the checkpoint; its file fingerprint is,
so a refiner is never applied to codes of another tokenizer (`load_refiner`). At setup the module
hands the datamodule a `CodeEncoder` (images -> codes and their condition) built on that tokenizer.
"""
from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from modules.common.checkpoints import load_checkpoint
from modules.common.errors import ConfigError
from modules.common.lr_schedule import trainer_schedule
from modules.refiner.flow import Prediction, as_velocity, flow_matching_loss, guided, sample_flow
from modules.refiner.net import RefinerConfig, RefinerNet

Objective = Literal["flow", "regression"]


def code_condition(tokenizer, indices: list, schedule=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(decoded image B×3×H×W in [-1, 1], f̂ = [hat_sem; hat_pix] on the token grid) of per-scale
    index maps through a frozen tokenizer; `schedule` defaults to the tokenizer's for the last map's grid."""
    if schedule is None:
        h, w = indices[-1].shape[-2:]
        schedule = tokenizer.schedule_for(h * tokenizer.patch, w * tokenizer.patch)
    device = next(tokenizer.parameters()).device
    hat_sem, hat_pix = tokenizer.quantizer.indices_to_features([i.to(device) for i in indices], schedule,
                                                               tokenizer.config.use_semantic)
    decoded = tokenizer.decode_features(hat_sem, hat_pix).clamp(-1, 1)
    return decoded, torch.cat([hat_sem, hat_pix], dim=1)


class CodeEncoder:
    """Images (B×3×H×W in [-1, 1]) -> {"codes": per-scale top-1 index maps (the tokenizer's schedule
    for the image size), "decoded", "features": the refiner's condition of those codes
    (`code_condition`)} with a frozen tokenizer, on CPU tensors; picklable, so dataloader workers
    can run it."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, Any]:
        device = next(self.tokenizer.parameters()).device
        codes = self.tokenizer.encode(images.to(device)).targets
        decoded, features = code_condition(self.tokenizer, codes)
        return {"codes": [c.cpu() for c in codes], "decoded": decoded.cpu(), "features": features.cpu()}


class RefinerModule(pl.LightningModule):
    def __init__(
        self,
        tokenizer_ckpt: str | None = None,
        net: RefinerConfig | None = None,
        objective: Objective = "flow",
        prediction: Prediction = "velocity",  # the flow network's output: velocity, or data (x̂1; flow.py)
        noise_scale: float = 1.0,  # std of the flow's source noise, in units of the normalised residual
        t_zero_fraction: float = 0.0,  # share of flow training samples at t = 0 (where sampling starts)
        cond_dropout: float = 0.1,  # P(condition zeroed) in flow training: enables guidance at sampling
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 20,
        lr_schedule: Literal["constant", "cosine"] = "cosine",
        scale_batches: int = 8,
        val_steps: int = 4,
        val_sampler: Literal["euler", "heun"] = "euler",
        sampling_shift: float = 1.0,  # time_grid's shift for sampling (flow.py); < 1: steps near the data end
        guidance: float = 1.0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        if objective not in ("flow", "regression"):
            raise ConfigError(f"objective {objective!r} is not one of 'flow', 'regression'")
        if prediction not in ("velocity", "data"):
            raise ConfigError(f"prediction {prediction!r} is not one of 'velocity', 'data'")
        if not noise_scale > 0:
            raise ConfigError(f"noise_scale must be > 0, got {noise_scale}")
        if not 0.0 <= t_zero_fraction < 1.0:
            raise ConfigError(f"t_zero_fraction must be in [0, 1), got {t_zero_fraction}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ConfigError(f"cond_dropout must be in [0, 1), got {cond_dropout}")
        self._aux: dict[str, Any] = {"tokenizer": None}
        self.tokenizer_fingerprint: str | None = None
        if isinstance(net, dict):  # hyper-parameters written by the CLI hold the config as a mapping
            net = RefinerConfig(**{**net, "ch_mult": tuple(net.get("ch_mult", RefinerConfig.ch_mult))})
        config = net or RefinerConfig()
        if tokenizer_ckpt:
            from modules.tokenizer import checkpoint_fingerprint, load_tokenizer

            try:
                tok = load_tokenizer(tokenizer_ckpt)
            except FileNotFoundError as err:
                raise ConfigError(str(err)) from None
            self.attach_tokenizer(tok.tokenizer, checkpoint_fingerprint(tokenizer_ckpt))
            tc = tok.tokenizer.config
            if config.cond_feature_dim != tc.sem_dim + tc.pix_dim:
                config = dataclasses.replace(config, cond_feature_dim=tc.sem_dim + tc.pix_dim)
        self.net = RefinerNet(config)
        self.register_buffer("residual_scale", torch.zeros(()))
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.psnr_decoder = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)

    # ------------------------------------------------------------------ tokenizer and condition
    def attach_tokenizer(self, tokenizer, fingerprint: str | None) -> None:
        """The frozen MultiScaleTokenizer whose codes this refiner reads (kept out of the state_dict)."""
        tokenizer.eval().requires_grad_(False)
        self._aux["tokenizer"] = tokenizer
        self.tokenizer_fingerprint = fingerprint

    @property
    def tokenizer(self):
        if self._aux["tokenizer"] is None:
            raise ConfigError("the refiner has no tokenizer: set model.init_args.tokenizer_ckpt (the tokenizer "
                              "checkpoint whose codes it refines)")
        return self._aux["tokenizer"]

    @torch.no_grad()
    def condition(self, indices: list, schedule=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoded image, f̂) of per-scale index maps (`code_condition`)."""
        return code_condition(self.tokenizer, indices, schedule)

    def batch_condition(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The condition of a batch: computed once by the datamodule's encoder (and cached there)
        when the batch carries it, else from its codes."""
        if "decoded" in batch:
            return batch["decoded"], batch["features"]
        return self.condition(batch["codes"])

    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "use_encoder"):
            datamodule.use_encoder(CodeEncoder(self.tokenizer), self.tokenizer_fingerprint)

    def on_fit_start(self) -> None:
        self.tokenizer.to(self.device)
        if float(self.residual_scale) == 0.0:
            self.residual_scale.fill_(self.estimate_residual_scale(self.trainer.datamodule.train_dataloader()))

    def on_validation_start(self) -> None:
        self.tokenizer.to(self.device)

    @torch.no_grad()
    def estimate_residual_scale(self, batches) -> float:
        """RMS of (x_gt - x_decoded) over the first `scale_batches` batches: the dataset scale the
        target residual is divided by."""
        total, count = 0.0, 0
        for i, batch in enumerate(batches):
            if i >= self.hparams.scale_batches:
                break
            x = batch["image"].to(self.device)
            decoded, _ = self.batch_condition(batch)
            decoded = decoded.to(self.device)
            total, count = total + float(((x - decoded) ** 2).sum()), count + x.numel()
        if count == 0:
            raise ConfigError("no training batch to estimate the residual scale from; check data.init_args.train_dir")
        return max((total / count) ** 0.5, 1e-4)

    # ------------------------------------------------------------------ objective
    def _velocity(self, decoded, feats):
        return as_velocity(lambda x_t, t_B: self.net(x_t, t_B, decoded, feats), self.hparams.prediction)

    def loss(self, x_B3HW: torch.Tensor, decoded: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        scale = self.residual_scale.clamp_min(1e-4)
        r = (x_B3HW - decoded) / scale
        if self.hparams.objective == "regression":
            zeros_t = torch.zeros(r.shape[0], device=r.device)
            return torch.nn.functional.mse_loss(self.net(torch.zeros_like(r), zeros_t, decoded, feats), r)
        if self.hparams.cond_dropout > 0:
            keep_B = (torch.rand(r.shape[0], device=r.device) >= self.hparams.cond_dropout).to(r.dtype)
            decoded, feats = decoded * keep_B.view(-1, 1, 1, 1), feats * keep_B.view(-1, 1, 1, 1)
        return flow_matching_loss(lambda x_t, t_B: self.net(x_t, t_B, decoded, feats), r,
                                  prediction=self.hparams.prediction, noise_scale=self.hparams.noise_scale,
                                  t_zero_fraction=self.hparams.t_zero_fraction)

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        decoded, feats = self.batch_condition(batch)
        loss = self.loss(batch["image"], decoded, feats)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def refine(self, decoded: torch.Tensor, feats: torch.Tensor, steps: int = 4,
               sampler: Literal["euler", "heun"] = "euler", guidance: float | None = None,
               seed: int | None = None, shift: float | None = None) -> torch.Tensor:
        """The refined image (shape and [-1, 1] range of `decoded`). Flow: `steps` Euler/Heun steps
        from noise drawn with `seed` (the same seed gives the same image); regression: one call."""
        if float(self.residual_scale) == 0.0:
            raise ConfigError("this refiner has no residual scale (never trained); pass a trained refiner checkpoint")
        B = decoded.shape[0]
        if self.hparams.objective == "regression":
            r = self.net(torch.zeros_like(decoded), torch.zeros(B, device=decoded.device), decoded, feats)
        else:
            g = torch.Generator().manual_seed(self.hparams.seed if seed is None else seed)
            x0 = self.hparams.noise_scale * torch.randn(decoded.shape, generator=g).to(decoded)
            w = self.hparams.guidance if guidance is None else guidance
            v = guided(self._velocity(decoded, feats),
                       self._velocity(torch.zeros_like(decoded), torch.zeros_like(feats)), w)
            r = sample_flow(v, x0, steps, sampler, self.hparams.sampling_shift if shift is None else shift)
        return (decoded + self.residual_scale * r).clamp(-1, 1)

    @torch.no_grad()
    def refine_codes(self, indices: list, schedule=None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        """(refined, decoded) images of per-scale index maps."""
        decoded, feats = self.condition(indices, schedule)
        return self.refine(decoded, feats, **kwargs), decoded

    # ------------------------------------------------------------------ validation
    def validation_step(self, batch: dict[str, Any], batch_idx: int):
        x = batch["image"]
        decoded, feats = self.batch_condition(batch)
        refined = self.refine(decoded, feats, steps=self.hparams.val_steps, sampler=self.hparams.val_sampler,
                              seed=self.hparams.seed + batch_idx)
        self.psnr.update((refined + 1) / 2, (x + 1) / 2)
        self.psnr_decoder.update((decoded + 1) / 2, (x + 1) / 2)
        self.ssim.update((refined + 1) / 2, (x + 1) / 2)
        self.log("val/loss", self.loss(x, decoded, feats), batch_size=x.shape[0])

    def on_validation_epoch_end(self):
        metrics = {"val/psnr": self.psnr.compute(), "val/psnr_decoder": self.psnr_decoder.compute(),
                   "val/ssim": self.ssim.compute()}
        for m in (self.psnr, self.psnr_decoder, self.ssim):
            m.reset()
        self.log_dict({k: float(v) for k, v in metrics.items()})

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        factor = trainer_schedule(self._trainer, self.hparams.warmup_steps, self.hparams.lr_schedule == "cosine")
        return [opt], [{"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["refiner"] = {"objective": self.hparams.objective, "tokenizer_ckpt": self.hparams.tokenizer_ckpt,
                                 "tokenizer_fingerprint": self.tokenizer_fingerprint}


def load_refiner(path: str, tokenizer=None, tokenizer_fingerprint: str | None = None,
                 map_location: str = "cpu") -> RefinerModule:
    """A trained RefinerModule (eval mode). With `tokenizer` (a MultiScaleTokenizer) and its file
    `tokenizer_fingerprint` (e.g. the AR model's tokenizer), a refiner trained on another
    tokenizer is a one-line ConfigError; without, the tokenizer it was trained with is loaded."""
    ckpt = load_checkpoint(path, "refiner", what="refiner checkpoint", map_location=map_location)
    info = ckpt["refiner"]
    trained = info.get("tokenizer_fingerprint")
    if tokenizer is not None and tokenizer_fingerprint and trained and trained != tokenizer_fingerprint:
        raise ConfigError(f"refiner checkpoint {path} was trained on tokenizer file {trained} but the codes come from "
                          f"tokenizer file {tokenizer_fingerprint}; train a refiner on that tokenizer (model.init_args."
                          f"tokenizer_ckpt) or drop --refiner")
    hp = dict(ckpt.get("hyper_parameters") or {})
    names = set(inspect.signature(RefinerModule.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in hp.items() if k in names}
    if tokenizer is not None:
        kwargs["tokenizer_ckpt"] = None
        net = kwargs.get("net") or RefinerConfig()
        net = dataclasses.asdict(net) if isinstance(net, RefinerConfig) else dict(net)
        kwargs["net"] = {**net, "cond_feature_dim": tokenizer.config.sem_dim + tokenizer.config.pix_dim}
    elif kwargs.get("tokenizer_ckpt") and not Path(kwargs["tokenizer_ckpt"]).is_file():
        raise ConfigError(f"refiner checkpoint {path} reads codes of tokenizer {kwargs['tokenizer_ckpt']}, which is "
                          "not there; pass the tokenizer (generate --tokenizer_ckpt) or restore that file")
    module = RefinerModule(**kwargs)
    if tokenizer is not None:
        module.attach_tokenizer(tokenizer, tokenizer_fingerprint or trained)
    elif trained and module.tokenizer_fingerprint and module.tokenizer_fingerprint != trained:
        raise ConfigError(f"tokenizer {kwargs['tokenizer_ckpt']} is file {module.tokenizer_fingerprint} but refiner "
                          f"checkpoint {path} was trained on file {trained}; restore the tokenizer it was trained with")
    module.load_state_dict(ckpt["state_dict"])
    return module.eval().to(map_location)
