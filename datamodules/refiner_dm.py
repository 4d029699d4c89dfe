"""RefinerDataModule: (image, codes) batches for the diffusion refiner, from raw shards through the
frozen tokenizer, in the tokenizer's resolution / aspect-ratio buckets (RawShardDataModule).

Codes are encoded on the fly, per batch, in `collate` (so in the dataloader workers when there
are any), not cached: the tokenizer is frozen and its encoder costs a fraction of a refiner
training step at these sizes, random training crops (`train_crop`) would make cached codes
describe other pixels, and a cache could outlive the tokenizer it was written with. The encoder
(images -> per-scale index maps) is handed over by the model at setup
(`RefinerModule.setup` -> `use_encoder`), with its tokenizer fingerprint; `tokenizer_fingerprint`
here (optional) pins the tokenizer file this data config was made for.

Batches: RawShardDataModule's {"image", "class_map", "color_map", "text", "meta", "key"} plus
"codes" (list of B×h_k×w_k long, scale by scale: the tokenizer's schedule for the bucket's size).
"""
from __future__ import annotations

from datamodules.raw import RawShardDataModule
from modules.common.errors import ConfigError


class RefinerDataModule(RawShardDataModule):
    def __init__(self, *args, tokenizer_fingerprint: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tokenizer_fingerprint = tokenizer_fingerprint
        self.encoder = None

    def use_encoder(self, encoder, fingerprint: str | None) -> None:
        """Called by the refiner at setup: `encoder(images) -> index maps`."""
        if self.tokenizer_fingerprint and fingerprint and fingerprint != self.tokenizer_fingerprint:
            raise ConfigError(f"data.init_args.tokenizer_fingerprint is {self.tokenizer_fingerprint} but the refiner's "
                              f"tokenizer file is {fingerprint}; point model.init_args.tokenizer_ckpt at the tokenizer "
                              "this data was made for, or drop tokenizer_fingerprint")
        self.encoder = encoder

    def collate(self, items):
        batch = super().collate(items)
        if self.encoder is None:
            raise ConfigError("RefinerDataModule has no tokenizer encoder; it is handed one by RefinerModule at setup "
                              "(use it with model.class_path: modules.refiner.RefinerModule)")
        batch["codes"] = self.encoder(batch["image"])
        return batch
