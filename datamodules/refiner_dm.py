"""RefinerDataModule: (image, codes, condition) batches for the diffusion refiner, from raw shards
through the frozen tokenizer, in the tokenizer's resolution / aspect-ratio buckets
(RawShardDataModule).

Codes and their condition (the decoded image and f̂) are computed in `collate` (so in the
dataloader workers when there are any) by the encoder the model hands over at setup
(`RefinerModule.setup` -> `use_encoder`, with its tokenizer fingerprint), once per scene: with
`cache: true` (the default) each scene's result is kept in memory, keyed by the sample key and
the image's size and pixel sum, so every later epoch skips the tokenizer (its encoder and decoder
are a large share of a small refiner's training step). The cache lives as long as the datamodule, so
it cannot outlive the tokenizer it was computed with, and it is off when `train_crop` is set
(random windows make every epoch's pixels, and so their codes, new). A scene costs about
60 KB at 64 px. `tokenizer_fingerprint` here (optional) pins the tokenizer file this data config
was made for.

Batches: RawShardDataModule's {"image", "class_map", "color_map", "text", "meta", "key"} plus
"codes" (list of B×h_k×w_k long, scale by scale: the tokenizer's schedule for the bucket's size),
"decoded" (B×3×H×W in [-1, 1]) and "features" (f̂, B×C×h×w).
"""
from __future__ import annotations

from typing import Any

import torch

from datamodules.raw import RawShardDataModule
from modules.common.errors import ConfigError


class RefinerDataModule(RawShardDataModule):
    def __init__(self, *args, tokenizer_fingerprint: str | None = None, cache: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.encoder = None
        self.cache = cache and self.train_crop is None
        self._cached: dict[tuple, dict[str, Any]] = {}

    def use_encoder(self, encoder, fingerprint: str | None) -> None:
        """Called by the refiner at setup: `encoder(images) -> index maps`."""
        if self.tokenizer_fingerprint and fingerprint and fingerprint != self.tokenizer_fingerprint:
            raise ConfigError(f"data.init_args.tokenizer_fingerprint is {self.tokenizer_fingerprint} but the refiner's "
                              f"tokenizer file is {fingerprint}; point model.init_args.tokenizer_ckpt at the tokenizer "
                              "this data was made for, or drop tokenizer_fingerprint")
        self.encoder = encoder
        self._cached.clear()

    def collate(self, items):
        batch = super().collate(items)
        if self.encoder is None:
            raise ConfigError("RefinerDataModule has no tokenizer encoder; it is handed one by RefinerModule at setup "
                              "(use it with model.class_path: modules.refiner.RefinerModule)")
        if not self.cache:
            batch.update(self.encoder(batch["image"]))
            return batch
        images = batch["image"]
        keys = [(key, *image.shape[-2:], float(image.sum())) for key, image in zip(batch["key"], images)]
        missing = [i for i, k in enumerate(keys) if k not in self._cached]
        if missing:
            fresh = self.encoder(images[missing])
            for j, i in enumerate(missing):
                self._cached[keys[i]] = {"codes": [c[j] for c in fresh["codes"]], "decoded": fresh["decoded"][j],
                                         "features": fresh["features"][j]}
        entries = [self._cached[k] for k in keys]
        batch["codes"] = [torch.stack(maps) for maps in zip(*(e["codes"] for e in entries))]
        batch["decoded"] = torch.stack([e["decoded"] for e in entries])
        batch["features"] = torch.stack([e["features"] for e in entries])
        return batch
