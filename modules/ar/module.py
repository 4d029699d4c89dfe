"""ARModule: Lightning glue around the unified decoder (NF §3–4).

It wires the ARDecoder, the sequence builder (modules/common/sequence.py: tokens, positions, blocks,
weights) and the scale-aware fused loss (modules/ar/loss.py); hooks, logging and optimizers
only. Batches come from `datamodules.pretokenized_dm.PretokenizedDataModule`, collated in its
dataloader workers by this model's `tasks.ItemBatcher` into index tensors
(`modules.common.sequence.IndexBatch`); the visual input features need the tokenizer's code
embeddings, which the model owns (`ARDecoder.code_emb`), so they are gathered and upsampled
here, on the device, batched. Lists of items (tests, a datamodule without the batcher) are
indexed in-process.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch

from modules.ar import tasks
from modules.ar.config import ARConfig
from modules.ar.loss import ar_loss
from modules.ar.model import ARDecoder
from modules.common.sequence import IndexBatch, SequenceBuilder, Tokens, collate
from modules.common.attention_mask import FLEX_BLOCK, flex_block_mask
from modules.common.lr_schedule import trainer_schedule
from modules.text import build_text_tokenizer


class ARModule(pl.LightningModule):
    """Args:
        preset / overrides: ARConfig.from_name(preset, **overrides).
        tokenizer_ckpt: TokenizerModule checkpoint; its code embeddings initialise the visual
            connector and head rows, its fingerprint must match the shards'. None: random
            l2-normalised codes (tests, smoke runs).
        lm_weights: local Qwen2.5 / Qwen2.5-VL safetensors folder (modules/ar/qwen_weights.py).
        alpha: scale-aware reweighting exponent (NF §4.3; 0 = off). The curriculum may change it.
        cond_dropout: caption dropout for CFG. self_correct: use the shards' self-corrected input
            variants (False: inputs = top-1 targets). pack_row_len: pack samples into rows.
        attention: "sdpa" dense mask, "flex" flex_attention BlockMask (CUDA), "auto".
        text_tokenizer / text_tokenizer_path: the model's text tokenizer (modules/text): "bytes",
            "shapes-words" (one id per Shapes-world word) or "hf" + a local tokenizer.json. It
            sets the text vocabulary, so the model owns it; the datamodule and the benchmark
            callback take it from here.
        story_loss: which parts of an interleaved story are trained (modules/ar/tasks.py):
            everything after the opening caption (default), "all", or only the later "images" /
            "texts".
    """

    def __init__(self, preset: str = "tiny", overrides: dict[str, Any] | None = None,
                 tokenizer_ckpt: str | None = None, lm_weights: str | None = None, alpha: float = 0.9,
                 cond_dropout: float = 0.1, self_correct: bool = True, pack_row_len: int | None = None,
                 attention: Literal["auto", "sdpa", "flex"] = "auto", fused_loss: bool = True,
                 loss_backend: Literal["torch", "liger"] = "torch", lr: float = 3e-4, weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_steps: int = 100,
                 lr_schedule: Literal["constant", "cosine"] = "constant", min_lr_ratio: float = 0.1, seed: int = 0,
                 text_tokenizer: Literal["bytes", "shapes-words", "hf"] = "bytes",
                 text_tokenizer_path: str | None = None,
                 story_loss: Literal["after_first_caption", "all", "images", "texts"] = "after_first_caption"):
        super().__init__()
        self.save_hyperparameters()
        overrides = dict(overrides or {})
        self.text_tokenizer = build_text_tokenizer(text_tokenizer, text_tokenizer_path,
                                                   overrides.get("text_vocab_size"))
        preset_text_vocab = ARConfig.from_name(preset).text_vocab_size
        if preset_text_vocab < self.text_tokenizer.vocab_size:
            overrides.setdefault("text_vocab_size", self.text_tokenizer.vocab_size)
        code_emb, self.tokenizer_fingerprint = None, None
        if tokenizer_ckpt is not None:
            code_emb, self.tokenizer_fingerprint = self._load_codes(tokenizer_ckpt)
            for key, val in (("codebook_size", code_emb.shape[0]), ("code_dim", code_emb.shape[1])):
                if key in overrides and overrides[key] != val:
                    raise ValueError(f"AR config {key}={overrides[key]} but tokenizer {tokenizer_ckpt} has {val}")
                overrides[key] = val
        self.config = ARConfig.from_name(preset, **overrides)
        self.model = ARDecoder(self.config)
        if lm_weights is not None:
            from modules.ar.qwen_weights import load_qwen2_weights
            load_qwen2_weights(self.model, lm_weights)
        if code_emb is None:
            g = torch.Generator().manual_seed(seed)
            code_emb = torch.nn.functional.normalize(torch.randn(self.config.codebook_size, self.config.code_dim,
                                                                 generator=g), dim=-1)
        self.model.init_visual_from_codebook(code_emb)
        self.alpha = alpha
        self._gen = torch.Generator().manual_seed(seed)
        # scale counts (images' number of scales) trained on -> images seen; saved in checkpoints so
        # generation can refuse scale counts the model never learned (modules/ar/sampler.py)
        self.trained_scale_counts: dict[int, int] = {}
        self.trained_tokenizer_fingerprint = self.tokenizer_fingerprint  # replaced by a checkpoint's
        # {"step", "epoch"} of the checkpoint these weights came from (`validate` restores the
        # weights, not the loops, so the trainer's global_step is 0 there); None: not loaded from one
        self.checkpoint_progress: dict[str, int] | None = None

    @staticmethod
    def _load_codes(path: str) -> tuple[torch.Tensor, str]:
        from pathlib import Path

        if not Path(path).is_file():
            raise FileNotFoundError(f"tokenizer checkpoint not found at {path}; train one with "
                                    "`python main.py fit --config configs/experiment/tokenizer_shapes_stage1.yaml` first")
        from modules.tokenizer import checkpoint_fingerprint, load_tokenizer

        tok = load_tokenizer(path, map_location="cpu")
        return tok.code_embeddings().detach().float().cpu(), checkpoint_fingerprint(path)

    def setup(self, stage: str) -> None:
        self._gen.manual_seed(self.hparams.seed + self.global_rank)  # condition dropout differs per rank
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(datamodule, "use_text_tokenizer"):
            datamodule.use_text_tokenizer(self.text_tokenizer, self.hparams.text_tokenizer)
        if hasattr(datamodule, "use_batcher"):
            datamodule.use_batcher(self.batcher())  # sequences are indexed in the dataloader workers

    # ------------------------------------------------------------------ sequences
    def batcher(self) -> tasks.ItemBatcher:
        """Items -> index batches (no code embeddings): handed to the datamodule at setup so it runs
        in dataloader workers; `compute_loss` uses it in-process for a list of items."""
        c = self.config
        h = self.hparams
        return tasks.ItemBatcher(c.vocab, text_vocab_size=c.text_vocab_size, codebook_size=c.codebook_size,
                                 rope_C=c.rope_C, max_scales=c.max_scales, max_len=c.block_size,
                                 cond_dropout=h.cond_dropout, self_correct=h.self_correct,
                                 fingerprint=self.tokenizer_fingerprint, tokenizer_ckpt=h.tokenizer_ckpt,
                                 pack_row_len=h.pack_row_len, pad_to_multiple=FLEX_BLOCK if self._use_flex() else 1,
                                 seed=h.seed + self.global_rank, story_loss=h.get("story_loss", "after_first_caption"))

    @property
    def builder(self) -> SequenceBuilder:
        """The per-sample builder with CPU features (the sampler's; the reference of `make_batch`)."""
        c = self.config
        return SequenceBuilder(c.vocab, self.model.code_emb.detach().float().cpu(), rope_C=c.rope_C,
                               max_scales=c.max_scales, visual_inputs=c.visual_inputs, upsample=c.upsample_mode,
                               alpha=self.alpha, cond_dropout=self.hparams.cond_dropout if self.training else 0.0,
                               max_len=c.block_size)

    def segments(self, item: dict) -> list:
        return self.batcher().segments(item)

    def make_batch(self, batch: list[dict] | IndexBatch) -> Tokens:
        """Model-ready tokens on the device: a list of items is indexed here (condition dropout
        from the module's generator while training), an `IndexBatch` comes from the datamodule's
        workers; code embeddings are gathered and upsampled on the device, batched."""
        if not isinstance(batch, IndexBatch):
            batch = self.batcher()(batch, train=self.training, generator=self._gen)
        c = self.config
        tok = batch.to(self.device).materialize(self.model.code_emb.float(), alpha=self.alpha,
                                                mode=c.visual_inputs, upsample=c.upsample_mode)
        L = tok.ids.shape[1]
        if self._use_flex() and L % FLEX_BLOCK:
            raise ValueError(f"flex attention needs rows padded to a multiple of {FLEX_BLOCK}, got {L}; the "
                             "datamodule's batcher was set up for another device (ARModule.setup)")
        return tok

    def reference_batch(self, items: list[dict]) -> Tokens:
        """The per-sample path `make_batch` replaced (features built per sample on the CPU by
        `SequenceBuilder.build`): the reference of the parity test and of `bench train_step`."""
        b = self.builder
        samples = [b.build(self.segments(it), generator=self._gen) for it in items]
        mult = FLEX_BLOCK if self._use_flex() else 1
        return collate(samples, row_len=self.hparams.pack_row_len, pad_to_multiple=mult,
                       pad_id=self.config.vocab.pad).to(self.device)

    def _use_flex(self) -> bool:
        a = self.hparams.attention
        if a == "auto" and self._trainer is not None:
            return self.trainer.strategy.root_device.type == "cuda"  # known at setup, before the move
        return a == "flex" or (a == "auto" and self.device.type == "cuda")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if isinstance(batch, IndexBatch):
            return batch.to(device)
        return batch  # a list of items stays on CPU; make_batch indexes it

    # ------------------------------------------------------------------ steps
    def compute_loss(self, batch: list[dict] | IndexBatch, *, reference: bool = False) -> dict:
        """ar_loss's dict for a batch (items or an index batch), plus "tokens" (B, L) built for it.
        reference: build it with `reference_batch` (per-sample CPU features) instead."""
        tok = self.reference_batch(batch) if reference else self.make_batch(batch)
        mask = flex_block_mask(tok.block, tok.sample) if self._use_flex() else tok.mask()
        out = ar_loss(self.model, tok, mask=mask, fused=self.hparams.fused_loss, backend=self.hparams.loss_backend,
                      normalizer=getattr(batch, "loss_norm", None))
        return {**out, "tokens": tok}

    def _step(self, batch, stage: str) -> torch.Tensor:
        out = self.compute_loss(batch)
        tok = out["tokens"]
        bs = tok.ids.shape[0]
        self.log(f"{stage}/loss", out["loss"].detach(), prog_bar=True, batch_size=bs, sync_dist=stage != "train")
        for key in ("text_loss", "vision_loss", "vision_nll"):
            if not math.isnan(float(out[key])):
                self.log(f"{stage}/{key}", out[key], batch_size=bs, sync_dist=stage != "train")
        for s, v in out["scale_loss"].items():
            self.log(f"{stage}/scale_{s:02d}_loss", v, batch_size=bs, sync_dist=stage != "train")
        if stage == "train":
            self.log("train/tokens", float((tok.sample >= 0).sum()), reduce_fx="sum", batch_size=bs)
            self.log("train/alpha", float(self.alpha), batch_size=bs)
        return out["loss"]

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def configure_optimizers(self):
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 and "wte" not in n and "table" not in n else no_decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.hparams.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr,
                                betas=tuple(self.hparams.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, trainer_schedule(
            self._trainer, self.hparams.warmup_steps, self.hparams.lr_schedule == "cosine", self.hparams.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------ checkpoints
    def on_train_batch_start(self, batch, batch_idx) -> None:
        for n, k in batch_scale_counts(batch).items():
            self.trained_scale_counts[n] = self.trained_scale_counts.get(n, 0) + k

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        c = self.config
        checkpoint["ar_vocab"] = {"text_vocab_size": c.text_vocab_size, "codebook_size": c.codebook_size,
                                  "vocab_size": c.vocab_size}
        checkpoint["ar_alpha"] = self.alpha
        checkpoint["ar_rope_layout"] = c.rope_layout
        checkpoint["ar_trained_scale_counts"] = {int(n): int(k) for n, k in sorted(self.trained_scale_counts.items())}
        checkpoint["ar_tokenizer_fingerprint"] = self.tokenizer_fingerprint

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        c, saved = self.config, checkpoint.get("ar_vocab")
        if saved:
            for key in ("text_vocab_size", "codebook_size", "vocab_size"):
                if saved[key] != getattr(c, key):
                    raise ValueError(f"checkpoint has {key}={saved[key]} but the AR config has {getattr(c, key)}; "
                                     "use the config the checkpoint was trained with")
        self.alpha = checkpoint.get("ar_alpha", self.alpha)
        # checkpoints written before the layout was recorded were trained with the sectioned layout
        # (the only one then), unless their config named one
        explicit = (self.hparams.get("overrides") or {}).get("rope_layout")
        layout = checkpoint.get("ar_rope_layout") or explicit or "sectioned"
        if layout != c.rope_layout:
            from modules.common.rope import rope_axes

            c.rope_layout = layout
            self.model.rope.axis = rope_axes(c.rope_sections, layout).to(self.model.rope.axis.device)
        self.trained_scale_counts = {int(n): int(k) for n, k in
                                     (checkpoint.get("ar_trained_scale_counts") or {}).items()}
        self.trained_tokenizer_fingerprint = checkpoint.get("ar_tokenizer_fingerprint")
        self.checkpoint_progress = {"step": int(checkpoint.get("global_step", 0)),
                                    "epoch": int(checkpoint.get("epoch", 0))}


def batch_scale_counts(batch) -> dict[int, int]:
    """{number of scales: images} of the images a training batch generates (has loss on): from
    items ({"task", "schedule"}, the datamodule's lists) or from built tokens (`nscales` and
    `weight` per token, one row per sample or packed with `sample` ids; there a sample holding
    several images of one count counts once)."""
    out: dict[int, int] = {}
    if isinstance(batch, IndexBatch):  # the datamodule's worker-collated batches
        for g in batch.images:
            n, k = g.schedule.num_scales, int((g.loss > 0).sum())
            if k:
                out[n] = out.get(n, 0) + k
        return out
    if isinstance(batch, (list, tuple)) and all(isinstance(it, dict) for it in batch):
        for it in batch:
            sch = it.get("schedule")
            if sch is not None and it.get("task", "t2i") not in ("i2t", "understand"):
                out[sch.num_scales] = out.get(sch.num_scales, 0) + 1
        return out
    get = batch.get if isinstance(batch, dict) else lambda k: getattr(batch, k, None)
    nscales, weight, sample = get("nscales"), get("weight"), get("sample")
    if not isinstance(nscales, torch.Tensor) or nscales.numel() == 0:
        return out
    nscales = nscales.reshape(-1, nscales.shape[-1])  # (rows, L)
    trained = nscales > 0
    if isinstance(weight, torch.Tensor) and weight.numel() == nscales.numel():
        trained &= weight.reshape(nscales.shape) > 0
    sample = sample.reshape(nscales.shape) if isinstance(sample, torch.Tensor) else torch.zeros_like(nscales)
    row = torch.arange(nscales.shape[0])[:, None].expand_as(nscales)
    images = torch.unique(torch.stack([row, sample, nscales], -1)[trained], dim=0)  # one per (row, sample)
    for n, k in zip(*torch.unique(images[:, 2], return_counts=True)):
        out[int(n)] = int(k)
    return out
