"""`python main.py ingest`: your own captioned images -> the project's raw shards.

Input, either
  * a folder (searched recursively) of images (.jpg/.jpeg/.png/.webp) with a caption side file
    of the same stem: `name.txt` (the caption) or `name.json` ({"caption"|"text"|"prompt": ...});
  * webdataset shards in img2dataset's layout (`key.jpg` + `key.txt` and/or `key.json` in .tar
    files): a folder of .tar files, one .tar, or a brace pattern (`shards/{00000..00009}.tar`).
Each image is converted to RGB, resized to cover its aspect-ratio bucket and centre-cropped to
it (the bucket of the nearest W/H ratio in log space; buckets are canvases of about side² pixels
whose sides are multiples of the tokenizer patch, as `main.py world` draws them), and written as a
raw shard sample {"png", "json": {width, height, caption, source, bucket}} that
`RawShardDataModule` and `pretokenize` read unchanged. Unreadable or truncated files ("corrupt"),
images below `min_side` ("tiny") and images without a caption ("no_caption") are skipped with a
warning and counted; the summary reports the counts.
"""
from __future__ import annotations

import io
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from commands import UsageError

log = logging.getLogger(__name__)

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
CAPTION_KEYS = ("caption", "text", "prompt")


def _caption_from_json(data: bytes | str) -> str | None:
    try:
        meta = json.loads(data)
    except ValueError:
        return None
    if not isinstance(meta, dict):
        return None
    for key in CAPTION_KEYS:
        if isinstance(meta.get(key), str) and meta[key].strip():
            return meta[key].strip()
    return None


def _caption_from_text(data: bytes | str) -> str | None:
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return text.strip() or None


def folder_sources(root: Path) -> list[dict[str, Any]]:
    """Images under `root` with their caption side files: [{"source", "image": path, "caption"}]."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
        caption = None
        txt, js = path.with_suffix(".txt"), path.with_suffix(".json")
        if txt.is_file():
            caption = _caption_from_text(txt.read_bytes())
        if caption is None and js.is_file():
            caption = _caption_from_json(js.read_bytes())
        out.append({"source": str(path), "image": path, "caption": caption})
    return out


def shard_sources(urls: list[str]) -> list[dict[str, Any]]:
    """Samples of img2dataset-layout tars: [{"source", "image": bytes, "caption"}]. Samples with
    no image entry are kept (image None) so that they are counted as corrupt."""
    import webdataset as wds

    out = []
    dataset = wds.WebDataset(urls, shardshuffle=False, empty_check=False, handler=wds.warn_and_continue)
    for sample in dataset:
        image = next((sample[e[1:]] for e in IMAGE_EXTS if e[1:] in sample), None)
        caption = _caption_from_text(sample["txt"]) if "txt" in sample else None
        if caption is None and "json" in sample:
            caption = _caption_from_json(sample["json"])
        out.append({"source": f"{sample.get('__url__')}:{sample.get('__key__')}", "image": image, "caption": caption})
    return out


def buckets(side: int, multiple_of: int, aspect_ratios: list[float]) -> list[tuple[int, int]]:
    """(width, height) canvases of about side² pixels, one per W/H ratio, sides multiples of
    `multiple_of` (commands/world.canvas_for_aspect)."""
    from commands.world import canvas_for_aspect

    return sorted({canvas_for_aspect(side, side, a, multiple_of) for a in aspect_ratios}, key=lambda c: c[0] / c[1])


def nearest_bucket(width: int, height: int, canvases: list[tuple[int, int]]) -> tuple[int, int]:
    """The canvas whose W/H is nearest in log space (the crop that loses the least)."""
    r = math.log(width / height)
    return min(canvases, key=lambda c: abs(math.log(c[0] / c[1]) - r))


def load_image(image, min_side: int) -> tuple[Any | None, str | None]:
    """(RGB PIL image, None) or (None, reason): "corrupt" (unreadable, truncated, missing) or
    "tiny" (a side below min_side)."""
    from PIL import Image

    if image is None:
        return None, "corrupt"
    try:
        with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as im:
            im.load()  # decodes all pixels: a truncated file raises here
            rgb = im.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises several types for bad bytes
        log.warning("skipping unreadable image: %s", err)
        return None, "corrupt"
    if min(rgb.size) < min_side:
        return None, "tiny"
    return rgb, None


def run(
    src: str = "",
    out: str = "data/ingest/train",
    side: int = 256,
    multiple_of: int = 16,
    aspect_ratios: list[float] | None = None,
    min_side: int = 64,
    samples_per_shard: int = 1000,
) -> dict[str, Any]:
    """Ingest a folder of captioned images (or img2dataset webdataset shards) into raw shards in aspect-ratio buckets.

    Args:
        src: a folder of images with .txt/.json caption side files, a folder of img2dataset
            .tar shards, one .tar, or a brace pattern of .tar files.
        out: output directory for the raw shards (`pretokenize --raw OUT`, `RawShardDataModule`).
        side: nominal side of the buckets: each is about side² pixels.
        multiple_of: bucket sides are multiples of this (the tokenizer's patch).
        aspect_ratios: W/H of the buckets (within [1/4, 4]); default 1/2, 3/4, 1, 4/3, 2.
        min_side: images with a side below this many pixels are skipped as "tiny".
        samples_per_shard: samples per output shard.
    """
    from datamodules.shards import write_shards
    from modules.common.scale_schedule import MAX_ASPECT, MIN_ASPECT

    ratios = list(aspect_ratios) if aspect_ratios else [1 / 2, 3 / 4, 1.0, 4 / 3, 2.0]
    if side < 1 or multiple_of < 1 or min_side < 1 or samples_per_shard < 1:
        raise UsageError(f"--side ({side}), --multiple_of ({multiple_of}), --min_side ({min_side}) and "
                         f"--samples_per_shard ({samples_per_shard}) must be >= 1")
    bad = [a for a in ratios if not MIN_ASPECT <= a <= MAX_ASPECT]
    if bad:
        raise UsageError(f"--aspect_ratios {bad} are outside [{MIN_ASPECT}, {MAX_ASPECT}] (the schedule family); "
                         "use W/H ratios between 1/4 and 4")
    if not src:
        raise UsageError("ingest needs --src: a folder of captioned images or of img2dataset .tar shards")
    path = Path(src).expanduser()
    if "{" in src and src.endswith(".tar"):
        import braceexpand

        urls = list(braceexpand.braceexpand(src))
        missing = [u for u in urls if not Path(u).is_file()]
        if missing:
            raise UsageError(f"--src {src}: {len(missing)} of its {len(urls)} shards do not exist (first {missing[0]})")
        sources = shard_sources(urls)
    elif path.is_file() and path.suffix == ".tar":
        sources = shard_sources([str(path)])
    elif path.is_dir():
        sources = folder_sources(path)
        tars = sorted(str(p) for p in path.rglob("*.tar"))
        if not sources and tars:
            sources = shard_sources(tars)
    else:
        raise UsageError(f"--src {src} does not exist (or is not a folder or .tar); pass a folder of images with "
                         ".txt/.json captions or img2dataset .tar shards")
    if not sources:
        raise UsageError(f"--src {src} holds no images ({'/'.join(e[1:] for e in IMAGE_EXTS)}) and no .tar shards; "
                         "point it at a folder of captioned images")
    canvases = buckets(side, multiple_of, ratios)
    skipped: Counter = Counter()
    per_bucket: Counter = Counter()

    def make_sample(i: int) -> dict[str, Any] | None:
        from PIL import Image, ImageOps

        s = sources[i]
        if s["caption"] is None:
            log.warning("skipping %s: no caption (.txt or .json with %s)", s["source"], "/".join(CAPTION_KEYS))
            skipped["no_caption"] += 1
            return None
        image, reason = load_image(s["image"], min_side)
        if image is None:
            log.warning("skipping %s: %s image", s["source"], reason)
            skipped[reason] += 1
            return None
        w, h = nearest_bucket(*image.size, canvases)
        fitted = ImageOps.fit(image, (w, h), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
        per_bucket[f"{w}x{h}"] += 1
        return {"png": np.asarray(fitted, dtype=np.uint8),
                "json": {"width": w, "height": h, "caption": s["caption"], "source": s["source"],
                         "source_size": list(image.size), "bucket": [w, h]}}

    stats = write_shards(make_sample, len(sources), out, prefix="raw", samples_per_shard=samples_per_shard,
                         description=f"ingesting {src}",
                         metadata={"source": src, "side": side, "multiple_of": multiple_of,
                                   "aspect_ratios": ratios, "min_side": min_side})
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) or "none"
    print(f"ingest: {len(sources)} inputs -> {stats.samples_written} samples in {stats.shards_written} shards at {out} "
          f"({stats.shards_skipped} reused); skipped {sum(skipped.values())} ({reasons}); buckets "
          + ", ".join(f"{k}: {v}" for k, v in sorted(per_bucket.items())))
    return {"out": str(out), "inputs": len(sources), "samples_written": stats.samples_written,
            "shards_written": stats.shards_written, "skipped": dict(skipped), "buckets": dict(per_bucket)}
