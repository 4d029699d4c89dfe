"""RawShardDataModule: images (+ Shapes label maps and captions) from raw shards, in
resolution / aspect-ratio buckets. Used to train the tokenizer and by `pretokenize`."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from datamodules.base import ShardDataModule
from datamodules.shards import BadSample, decode_json, decode_png
from modules.common.errors import ConfigError, require_positive


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def _caption(meta: dict[str, Any]) -> str | None:
    captions = meta.get("captions") if isinstance(meta.get("captions"), dict) else {}
    text = meta.get("caption") or captions.get("short") or meta.get("prompt")
    return text if isinstance(text, str) and text.strip() else None


def _decode_label_map(data: bytes, key: str, h: int, w: int) -> torch.Tensor:
    try:
        label = decode_png(data)
    except Exception as err:  # noqa: BLE001 - unreadable PNG bytes
        raise BadSample("bad_image", f"{key}: not a readable PNG ({err})") from None
    if label.shape != (h, w) or label.dtype.kind not in "ui":
        raise BadSample("label_shape", f"{key} is {label.dtype} {label.shape}; expected integer labels of the image's "
                                       f"size {(h, w)}")
    return torch.from_numpy(label.astype(np.int64))


def decode_raw_sample(sample: dict[str, Any], resize_to: int | None = None, multiple_of: int = 1) -> dict[str, Any]:
    """One raw shard sample -> tensors. `resize_to` (optional) rescales to about `resize_to`²
    pixels keeping the aspect ratio, each side a multiple of `multiple_of` (the tokenizer patch).

    Validated (a failure raises `BadSample`: the sample is skipped and counted by reason): the
    "png" and "json" entries exist; the image is an 8-bit RGB PNG of the json's width x height;
    label maps (cls.png, col.png) are integer maps of the image's size; there is a caption;
    without `resize_to`, each side is a multiple of `multiple_of` (never silently resized)."""
    for key in ("png", "json"):
        if key not in sample:
            raise BadSample("missing_key", f"no {key!r} entry (has {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        image = decode_png(sample["png"])
    except Exception as err:  # noqa: BLE001 - unreadable PNG bytes
        raise BadSample("bad_image", f"png: not a readable PNG ({err})") from None
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise BadSample("bad_image", f"expected an 8-bit RGB image, got {image.dtype} array of shape {image.shape}")
    try:
        meta = decode_json(sample["json"])
    except Exception as err:  # noqa: BLE001 - malformed JSON
        raise BadSample("bad_meta", f"json: not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise BadSample("bad_meta", f"json: expected an object, got {type(meta).__name__}")
    h, w = image.shape[:2]
    if (meta.get("height", h), meta.get("width", w)) != (h, w):
        raise BadSample("shape", f"image is {h}x{w} but its json says {meta.get('height')}x{meta.get('width')}")
    text = _caption(meta)
    if text is None:
        raise BadSample("missing_caption", "json has no caption (caption, captions.short or prompt)")
    if resize_to is None and (h % multiple_of or w % multiple_of):
        raise BadSample("image_size", f"image {h}x{w} is not a multiple of {multiple_of} px (the tokenizer patch); "
                                      "set resize_to or rewrite the shards")
    image_CHW = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div(127.5).sub(1.0)
    maps = {}
    for key, name in (("cls.png", "class_map"), ("col.png", "color_map")):
        maps[name] = _decode_label_map(sample[key], key, h, w) if key in sample else torch.zeros(h, w, dtype=torch.long)
    if resize_to is not None:
        scale = (resize_to * resize_to / (h * w)) ** 0.5
        new_h, new_w = _round_to(h * scale, multiple_of), _round_to(w * scale, multiple_of)
        if (new_h, new_w) != (h, w):
            image_CHW = F.interpolate(image_CHW[None], size=(new_h, new_w), mode="bicubic",
                                      align_corners=False, antialias=True)[0].clamp(-1, 1)
            for name, label_HW in maps.items():
                maps[name] = F.interpolate(label_HW[None, None].float(), size=(new_h, new_w), mode="nearest")[0, 0].long()
    return {"image": image_CHW, **maps, "text": text, "meta": meta, "key": sample.get("__key__")}


def random_crop(item: dict[str, Any], size: int, multiple_of: int, rng: np.random.Generator) -> dict[str, Any]:
    """A random window of at most size x size (sides multiples of `multiple_of`) of a decoded
    sample, label maps alike (VQGAN trains its tokenizer on random crops). The scene metadata no
    longer describes the window, so it is replaced by the crop box: oracle metrics skip it."""
    h, w = item["image"].shape[1:]
    ch, cw = min(h, size) // multiple_of * multiple_of, min(w, size) // multiple_of * multiple_of
    if (ch, cw) == (h, w):
        return item
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    window = (slice(top, top + ch), slice(left, left + cw))
    out = {**item, "image": item["image"][(slice(None), *window)],
           "meta": {"crop": [top, left, ch, cw], "source_size": [int(h), int(w)]}}
    for name in ("class_map", "color_map"):
        out[name] = item[name][window]
    return out


def collate_raw(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "image": torch.stack([it["image"] for it in items]),
        "class_map": torch.stack([it["class_map"] for it in items]),
        "color_map": torch.stack([it["color_map"] for it in items]),
        "text": [it["text"] for it in items],
        "meta": [it["meta"] for it in items],
        "key": [it["key"] for it in items],
    }


class RawShardDataModule(ShardDataModule):
    """Batches {"image": B×3×H×W in [-1, 1], "class_map"/"color_map": B×H×W long, "text",
    "meta", "key"}; every batch holds one (H, W) bucket.

    Args:
        train_dir / val_dir: shard directories written by `python main.py world`.
        resize_to: optional nominal side: images are rescaled to about resize_to² pixels.
        multiple_of: each side is rounded to a multiple of this (the tokenizer's patch).
        train_crop: optional side of random training windows (validation is never cropped).
        max_skipped_fraction: more than this fraction of corrupt samples stops the run.
    """

    def __init__(
        self,
        train_dir: str | list[str] | None = None,
        val_dir: str | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        resize_to: int | None = None,
        multiple_of: int = 1,
        seed: int = 0,
        shuffle_buffer: int = 256,
        train_crop: int | None = None,
        max_skipped_fraction: float = 0.1,
    ):
        super().__init__(train_dir, val_dir, batch_size, val_batch_size, num_workers, seed, shuffle_buffer,
                         max_skipped_fraction)
        require_positive(resize_to=resize_to, multiple_of=multiple_of, train_crop=train_crop)
        if train_crop is not None and train_crop < multiple_of:
            raise ConfigError(f"train_crop {train_crop} is below multiple_of {multiple_of}; use a crop side of at "
                             f"least one token ({multiple_of} px) or null for no cropping")
        self.resize_to, self.multiple_of, self.train_crop = resize_to, multiple_of, train_crop
        self._crop_rng = np.random.default_rng(seed)

    def decode(self, sample):
        return decode_raw_sample(sample, self.resize_to, self.multiple_of)

    def decode_train(self, sample):
        item = self.decode(sample)
        return item if self.train_crop is None else random_crop(item, self.train_crop, self.multiple_of,
                                                                self._crop_rng)

    def bucket_key(self, item):
        return tuple(item["image"].shape[1:])

    def collate(self, items):
        return collate_raw(items)
