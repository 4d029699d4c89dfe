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
