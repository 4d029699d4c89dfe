"""Image grids for previews, per-prompt sample sheets and reports (PIL; optional captions)."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(
    images: Sequence[np.ndarray],
    ncols: int | None = None,
    captions: Sequence[str] | None = None,
    cell: int | None = None,
    pad: int = 4,
    caption_lines: int = 3,
) -> Image.Image:
    """Tile H×W×3 uint8 images (any sizes) into one picture; each cell is `cell` px on its
    longer side (default: the largest image side) with the caption wrapped underneath."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    ncols = ncols or int(np.ceil(np.sqrt(len(images))))
    nrows = int(np.ceil(len(images) / ncols))
    cell = cell or max(max(im.shape[:2]) for im in images)
    font = ImageFont.load_default()
    chars = max(8, cell // 6)
    text_h = (caption_lines * 11 + 2) if captions else 0
    sheet = Image.new("RGB", (ncols * (cell + pad) + pad, nrows * (cell + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for k, array in enumerate(images):
        row, col = divmod(k, ncols)
        x0, y0 = pad + col * (cell + pad), pad + row * (cell + text_h + pad)
        tile = Image.fromarray(np.asarray(array, dtype=np.uint8))
        scale = cell / max(tile.size)
        tile = tile.resize((max(1, round(tile.width * scale)), max(1, round(tile.height * scale))), Image.NEAREST)
        sheet.paste(tile, (x0 + (cell - tile.width) // 2, y0 + (cell - tile.height) // 2))
        if captions:
            lines = textwrap.wrap(captions[k], chars)[:caption_lines]
            draw.multiline_text((x0, y0 + cell + 1), "\n".join(lines), fill=(0, 0, 0), font=font, spacing=1)
    return sheet


def write_caption_grid(shard_dir: str | Path, out_png: str | Path, num: int = 16) -> Path:
    """Preview of a raw shard directory: the first `num` images with their short captions."""
    import json

    import webdataset as wds

    from datamodules.shards import decode_png, shard_urls

    images, captions = [], []
    for sample in wds.WebDataset(shard_urls(shard_dir), shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"]) if "json" in sample else {}
        images.append(decode_png(sample["png"]))
        captions.append((meta.get("captions") or {}).get("short") or meta.get("prompt", ""))
        if len(images) == num:
            break
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, captions=captions, cell=128).save(out)
    return out
