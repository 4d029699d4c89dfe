"""The Shapes world's fixed vocabulary: colours, shape classes, backgrounds.

Colours are GenEval's ten (REFERENCE.md, "GenEval protocol"); their RGB values are spread
out so that a colour survives blur, noise and JPEG (the oracle detector classifies by the
nearest palette entry in a perceptual space). Backgrounds are deliberately *not* palette
colours: desaturated mid-tones that no palette entry is nearest to.
"""
from __future__ import annotations

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 35),
    "orange": (250, 140, 10),
    "yellow": (245, 220, 25),
    "green": (40, 165, 60),
    "blue": (35, 80, 220),
    "purple": (135, 50, 180),
    "pink": (250, 135, 200),
    "brown": (125, 75, 35),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

# Axis-aligned, never rotated, so geometry alone separates them (square vs diamond, etc.).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "cross")

# Background tones: low-saturation mid greys/tints (luma ~120-190), far from every palette entry.
BACKGROUND_TONES: dict[str, tuple[int, int, int]] = {
    "slate": (150, 158, 166),
    "sand": (176, 168, 150),
    "sage": (150, 166, 150),
    "stone": (168, 162, 160),
    "mist": (160, 166, 176),
    "ash": (140, 140, 140),
}
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "gradient", "texture")

# Label-map conventions shared by the renderer (ground truth) and the tokenizer's semantic
# teacher: 0 is background, k+1 is SHAPES[k] / COLOR_NAMES[k].
NUM_CLASS_LABELS = len(SHAPES) + 1
NUM_COLOR_LABELS = len(COLOR_NAMES) + 1


def check_color(name: str) -> str:
    if name not in COLORS:
        raise ValueError(f"unknown colour {name!r}; choose one of {', '.join(COLOR_NAMES)}")
    return name


def check_shape(name: str) -> str:
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; choose one of {', '.join(SHAPES)}")
    return name
