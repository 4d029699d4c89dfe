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


# ----------------------------------------------------------------------------- comparison sheets
PASS, FAIL = (0, 150, 60), (210, 30, 30)


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in scalable font at `size` px (no system fonts needed)."""
    return ImageFont.load_default(size=size)


def _mark(draw: ImageDraw.ImageDraw, x0: int, y0: int, cell: int, ok: bool, border: int = 4) -> None:
    """A coloured frame just outside the image at (x0, y0) and a badge on its top-left corner: a
    tick (pass) or a cross (fail), so the verdict does not rest on colour alone."""
    colour = PASS if ok else FAIL
    draw.rectangle([x0 - border, y0 - border, x0 + cell + border - 1, y0 + cell + border - 1], outline=colour,
                   width=border)
    b, x, y = 16, x0 - border, y0 - border
    draw.rectangle([x, y, x + b, y + b], fill=colour)
    if ok:
        draw.line([(x + 3, y + 9), (x + 7, y + 13), (x + 13, y + 4)], fill="white", width=2)
    else:
        draw.line([(x + 4, y + 4), (x + 12, y + 12)], fill="white", width=2)
        draw.line([(x + 4, y + 12), (x + 12, y + 4)], fill="white", width=2)


def comparison_sheet(
    rows: Sequence[tuple[str, Sequence[Sequence[tuple[Path | np.ndarray | None, bool | None]]]]],
    columns: Sequence[str],
    cell: int = 128,
    per_line: int | None = None,
    pad: int = 6,
    text_px: int = 15,
) -> Image.Image:
    """Prompts as rows, models as column blocks: each row starts with its full prompt (wrapped over
    the sheet's width), then per column (model) its images at `cell` px (nearest-neighbour upscaling,
    so pixels stay visible), `per_line` to a line (default: 4 with ≤ 2 columns, else 2). An image's
    verdict (True / False / None) draws a green tick or red cross frame round it (outside its pixels);
    None draws no mark; a missing image (None path) leaves a grey cell."""
    if not rows or not columns:
        raise ValueError("comparison_sheet needs at least one row and one column")
    per_line = per_line or (4 if len(columns) <= 2 else 2)
    n_images = max(len(cells) for _, blocks in rows for cells in blocks) or 1
    lines_per_block = -(-n_images // per_line)
    gap = 10   # between images: room for the verdict frames, which stay off the pixels
    block_w = min(per_line, n_images) * (cell + gap)
    width = pad + len(columns) * (block_w + 3 * pad)
    head_font, text_font = font(text_px + 2), font(text_px)
    chars = max(20, int(width / (text_px * 0.55)))
    line_h = text_px + 4
    wrapped = [textwrap.wrap(prompt, chars) or [""] for prompt, _ in rows]
    header_h = text_px + 2 + 2 * pad
    block_h = lines_per_block * (cell + gap)
    height = header_h + sum(len(w) * line_h + 2 * pad + block_h + 2 * pad for w in wrapped)
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for c, name in enumerate(columns):
        draw.text((pad + c * (block_w + 3 * pad), pad), name, fill="black", font=head_font)
    y = header_h
    for (prompt, blocks), text in zip(rows, wrapped):
        draw.line([(0, y), (width, y)], fill=(200, 200, 200), width=1)
        draw.multiline_text((pad, y + pad), "\n".join(text), fill=(20, 20, 20), font=text_font, spacing=4)
        y += len(text) * line_h + 2 * pad
        for c, cells in enumerate(blocks):
            bx = pad + c * (block_w + 3 * pad)
            for k, (image, verdict) in enumerate(cells):
                line, col = divmod(k, per_line)
                x0, y0 = bx + col * (cell + gap) + gap // 2, y + line * (cell + gap) + gap // 2
                if image is None:
                    draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=(235, 235, 235))
                    continue
                tile = Image.open(image).convert("RGB") if isinstance(image, (str, Path)) \
                    else Image.fromarray(np.asarray(image, dtype=np.uint8))
                sheet.paste(tile.resize((cell, cell), Image.NEAREST), (x0, y0))
                if verdict is not None:
                    _mark(draw, x0, y0, cell, bool(verdict))
        y += block_h + 2 * pad
    return sheet
