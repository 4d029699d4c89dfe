"""Helpers for the tokenizer tests: tiny Shapes-world images, raw shards and tokenizer configs."""
from __future__ import annotations

import numpy as np
import torch

from shapes.render import render
from shapes.scene import sample_scene
from modules.tokenizer import TokenizerConfig


def tiny_config(**overrides) -> TokenizerConfig:
    """32 px images, patch 4 -> 8x8 grid, schedule 1..8: the smallest useful tokenizer."""
    base = dict(codebook_size=256, ch=8, ch_mult=(1, 2, 4), num_res_blocks=1, semantic_encoder="cnn",
                semantic_ch=8, semantic_decoder_ch=16, num_phi=2)
    base.update(overrides)
    return TokenizerConfig(**base)


def scene_batch(n: int, width: int = 32, height: int = 32, seed: int = 0) -> dict:
    """A batch like RawShardDataModule's: image in [-1, 1], class/colour maps, meta with the scene."""
    images, cls, col, metas = [], [], [], []
    for i in range(n):
        scene = sample_scene(np.random.default_rng([seed, i]), width, height, max_objects=3)
        r = render(scene, width, height)
        images.append(torch.from_numpy(r.image.copy()).permute(2, 0, 1).float() / 127.5 - 1)
        cls.append(torch.from_numpy(r.class_map.astype(np.int64)))
        col.append(torch.from_numpy(r.color_map.astype(np.int64)))
        metas.append({"scene": scene.to_dict()})
    return {"image": torch.stack(images), "class_map": torch.stack(cls), "color_map": torch.stack(col),
            "text": [""] * n, "meta": metas}


def write_raw_shards(out_dir, sizes: list[tuple[int, int]], seed: int = 0, corrupt: tuple[int, ...] = (),
                     samples_per_shard: int = 8):
    """Raw shards in the world's format; samples whose index is in `corrupt` get broken PNG bytes."""
    from datamodules.shards import write_shards

    def make(i: int):
        w, h = sizes[i]
        scene = sample_scene(np.random.default_rng([seed, i]), w, h, max_objects=3)
        r = render(scene, w, h)
        return {"png": b"not a png" if i in corrupt else r.image, "cls.png": r.class_map, "col.png": r.color_map,
                "json": {"kind": "scenes", "width": w, "height": h, "scene": scene.to_dict(), "caption": f"scene {i}"}}

    return write_shards(make, len(sizes), out_dir, samples_per_shard=samples_per_shard)
