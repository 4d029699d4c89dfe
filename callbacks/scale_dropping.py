"""ScaleDropping: while training the tokenizer, skip a random subset of scales per batch.

NextFlow randomly drops 50% of the scales while training its tokenizer (TokenFlow: one scale
w.p. 0.1) (REFERENCE.md "NextFlow tokenizer"), so that the residual quantiser works for any
subset/prefix of a schedule. Each scale except the last (configurable) is dropped independently
with probability `drop_prob`; at least `min_scales` stay. The mask is drawn from the callback's
own generator seeded with (seed, global step), so every DDP rank draws the same mask.
"""
from __future__ import annotations

import lightning.pytorch as pl
import torch


class ScaleDropping(pl.Callback):
    def __init__(self, drop_prob: float = 0.5, keep_last: bool = True, min_scales: int = 1, seed: int = 0):
        if not 0.0 <= drop_prob < 1.0:
            raise ValueError(f"drop_prob must be in [0, 1), got {drop_prob}")
        self.drop_prob, self.keep_last, self.min_scales, self.seed = drop_prob, keep_last, min_scales, seed

    def sample_keep(self, num_scales: int, step: int) -> list[bool]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        keep = (torch.rand(num_scales, generator=g) >= self.drop_prob).tolist()
        if self.keep_last:
            keep[-1] = True
        missing = self.min_scales - sum(keep)
        if missing > 0:
            dropped = [k for k, kept in enumerate(keep) if not kept]
            for k in torch.randperm(len(dropped), generator=g)[:missing].tolist():
                keep[dropped[k]] = True
        return keep

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        H, W = batch["image"].shape[-2:]
        schedule = pl_module.tokenizer.schedule_for(H, W)
        pl_module.scale_keep = self.sample_keep(schedule.num_scales, trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        pl_module.scale_keep = None
