"""Scenes of the Shapes world: objects, backgrounds, layout with a minimum gap, random sampling.

A scene is resolution independent (positions are fractions of the canvas, sizes fractions of its
shorter side) but it is *laid out* for one canvas so that the guarantees below hold there:
- every object's bounding box is at least MIN_OBJECT_PX pixels on a side (10 px: at that size a
  6-point star, a cross and a diamond are still told apart by geometry after anti-aliasing);
- bounding boxes (the full size x size square) stay `gap_px` apart, so the objects are separate
  connected components for an instance detector, and the whole box lies inside the canvas.
Rendering a scene larger than its layout canvas keeps the guarantees; much smaller does not.
All randomness comes from a numpy Generator passed in, so a seed fixes the scene.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .geometry import tight_box_px
from .palette import BACKGROUND_KINDS, BACKGROUND_TONES, COLOR_NAMES, SHAPES, check_color, check_shape

MIN_OBJECT_PX = 10           # smallest bbox side on the layout canvas (see module docstring)
MAX_SIZE_FRACTION = 0.4      # largest bbox side as a fraction of the canvas' shorter side
MIN_CANVAS_SIDE = 2 * MIN_OBJECT_PX
MIN_ASPECT, MAX_ASPECT = 0.25, 4.0   # width / height, NextFlow's 1:4 .. 4:1 family


def gap_px(width: int, height: int) -> float:
    """Minimum empty space between two objects' boxes: 3 px, or 4% of the shorter side."""
    return max(3.0, 0.04 * min(width, height))


def check_canvas(width: int, height: int) -> None:
    """Raise ValueError naming the value if a scene cannot be laid out on width x height."""
    if width < MIN_CANVAS_SIDE or height < MIN_CANVAS_SIDE:
        raise ValueError(f"canvas {width}x{height} px is too small: both sides must be >= {MIN_CANVAS_SIDE} px")
    aspect = width / height
    if not MIN_ASPECT - 1e-9 <= aspect <= MAX_ASPECT + 1e-9:
        raise ValueError(f"canvas {width}x{height} has aspect ratio {aspect:.3g}; it must be in [1/4, 4]")


@dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    cx: float    # centre, fraction of the canvas width
    cy: float    # centre, fraction of the canvas height
    size: float  # bbox side, fraction of min(width, height)

    def __post_init__(self) -> None:
        check_shape(self.shape)
        check_color(self.color)

    def side_px(self, width: int, height: int) -> float:
        return self.size * min(width, height)

    def center_px(self, width: int, height: int) -> tuple[float, float]:
        return self.cx * width, self.cy * height

    def box_px(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Tight xyxy box of the drawn shape (what a detector would report)."""
        return tight_box_px(self.shape, *self.center_px(width, height), self.side_px(width, height))

    def layout_box_px(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The full size x size square; the layout keeps these apart."""
        (x, y), half = self.center_px(width, height), self.side_px(width, height) / 2
        return x - half, y - half, x + half, y + half

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class Background:
    kind: str = "plain"              # plain | gradient | texture
    tone: str = "slate"              # BACKGROUND_TONES key
    tone2: str | None = None         # gradient end tone
    seed: int = 0                    # gradient direction / texture pattern

    def __post_init__(self) -> None:
        if self.kind not in BACKGROUND_KINDS:
            raise ValueError(f"unknown background kind {self.kind!r}; choose one of {', '.join(BACKGROUND_KINDS)}")
        for tone in (self.tone, self.tone2):
            if tone is not None and tone not in BACKGROUND_TONES:
                raise ValueError(f"unknown background tone {tone!r}; choose one of {', '.join(BACKGROUND_TONES)}")

    def describe(self) -> str:
        if self.kind == "gradient":
            return f"a {self.tone} to {self.tone2} gradient background"
        if self.kind == "texture":
            return f"a lightly textured {self.tone} background"
        return f"a plain {self.tone} background"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...] = ()
    background: Background = field(default_factory=Background)

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))   # lists from callers become tuples

    def to_dict(self) -> dict[str, Any]:
        return {"objects": [dataclasses.asdict(o) for o in self.objects],
                "background": dataclasses.asdict(self.background)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Scene":
        return cls(tuple(ShapeObject(**o) for o in data["objects"]), Background(**data["background"]))

    def replace(self, **changes: Any) -> "Scene":
        return dataclasses.replace(self, **changes)

    def counts(self) -> dict[tuple[str, str], int]:
        """(colour, shape) -> number of objects, in first-appearance order."""
        out: dict[tuple[str, str], int] = {}
        for o in self.objects:
            out[(o.color, o.shape)] = out.get((o.color, o.shape), 0) + 1
        return out


# ----------------------------------------------------------------------------- layout
def _boxes_clear(box, others, gap: float) -> bool:
    x0, y0, x1, y1 = box
    return all(x0 >= b[2] + gap or b[0] >= x1 + gap or y0 >= b[3] + gap or b[1] >= y1 + gap for b in others)


def size_range_px(width: int, height: int, num_objects: int,
                  min_object_px: float = MIN_OBJECT_PX) -> tuple[float, float]:
    """Box sides to sample from: large when alone, shrinking as the canvas gets crowded, never
    below `min_object_px` (MIN_OBJECT_PX by default; raise it for data whose consumer needs
    larger objects, e.g. a tokenizer whose tokens are 8 px wide)."""
    short = min(width, height)
    crowded = np.sqrt(width * height / (4.0 * max(num_objects, 1)))
    hi = max(min_object_px, min(MAX_SIZE_FRACTION * short, crowded))
    lo = max(min_object_px, min(0.15 * short, 0.6 * hi))
    return float(lo), float(hi)


def place_object(rng: np.random.Generator, shape: str, color: str, width: int, height: int,
                 placed: Sequence[ShapeObject], *, side_px: float | tuple[float, float] | None = None,
                 region: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0),
                 like: ShapeObject | None = None, tries: int = 200) -> ShapeObject | None:
    """One object at a random free spot, or None if none was found.

    side_px: fixed box side, a (lo, hi) range, or None for the default range. region: allowed
    area for the centre as fractions (x0, y0, x1, y1) of the canvas. like: an object whose
    sub-pixel position to copy, so a moved/re-used object renders with identical pixels.
    """
    gap = gap_px(width, height)
    others = [o.layout_box_px(width, height) for o in placed]
    if side_px is None:
        side_px = size_range_px(width, height, len(placed) + 1)
    lo, hi = (side_px, side_px) if np.isscalar(side_px) else side_px
    for attempt in range(tries):
        # Shrink towards the smallest size in the second half of the attempts: crowded canvases.
        cap = hi if attempt < tries // 2 else lo + (hi - lo) * (1 - 2 * (attempt - tries // 2) / tries)
        side = float(rng.uniform(lo, max(lo, cap)))
        half = side / 2 + 1.0   # 1 px inside the border so anti-aliasing is not clipped
        x_lo, x_hi = max(half, region[0] * width), min(width - half, region[2] * width)
        y_lo, y_hi = max(half, region[1] * height), min(height - half, region[3] * height)
        if x_lo > x_hi or y_lo > y_hi:
            continue
        x, y = rng.uniform(x_lo, x_hi), rng.uniform(y_lo, y_hi)
        if like is None:
            obj = make_object(shape, color, x, y, side, width, height)
        else:   # `like` shifted by whole pixels (not re-rounded): the same anti-aliasing pattern
            lx, ly = like.center_px(width, height)
            kx, ky = round(x - lx), round(y - ly)
            if not (half <= lx + kx <= width - half and half <= ly + ky <= height - half):
                continue
            obj = ShapeObject(shape, color, like.cx + kx / width, like.cy + ky / height, like.size)
        if _boxes_clear(obj.layout_box_px(width, height), others, gap):
            return obj
    return None


def make_object(shape: str, color: str, x_px: float, y_px: float, side_px: float,
                width: int, height: int) -> ShapeObject:
    """Object from pixel geometry; fractions rounded to 5 decimals so JSON stays short and exact."""
    return ShapeObject(shape, color, round(float(x_px) / width, 5),
                       round(float(y_px) / height, 5), round(float(side_px) / min(width, height), 5))


def sample_background(rng: np.random.Generator, kinds: Sequence[str] = BACKGROUND_KINDS) -> Background:
    kind = str(rng.choice(list(kinds)))
    tones = list(BACKGROUND_TONES)
    tone, tone2 = (str(t) for t in rng.choice(tones, size=2, replace=False))
    return Background(kind, tone, tone2 if kind == "gradient" else None, int(rng.integers(0, 2**31 - 1)))


def sample_counts(rng: np.random.Generator, max_count: int) -> int:
    """1..max_count, small counts more likely (p ~ 1/k) like real captions, 6 still common enough."""
    ks = np.arange(1, max_count + 1)
    p = 1.0 / ks
    return int(rng.choice(ks, p=p / p.sum()))


def sample_scene(rng: np.random.Generator, width: int = 64, height: int = 64, *,
                 colors: Sequence[str] = COLOR_NAMES, shapes: Sequence[str] = SHAPES,
                 max_count: int = 6, max_groups: int = 3, max_objects: int = 8,
                 background_kinds: Sequence[str] = BACKGROUND_KINDS,
                 min_object_px: float = MIN_OBJECT_PX,
                 allowed_group: Callable[[tuple[str, str], list[tuple[str, str]]], bool] | None = None) -> Scene:
    """A random scene: 1..max_groups (colour, shape) groups of 1..max_count objects each.

    At most max_count objects per shape class and max_objects in all; objects that do not fit
    are dropped (captions are made from the scene, so they stay true). Never empty.
    min_object_px: smallest bbox side (>= MIN_OBJECT_PX, at most half the shorter canvas side);
    larger values give fewer, bigger objects on crowded canvases.
    allowed_group(group, chosen): whether a (colour, shape) group may join the groups chosen so
    far (shapes/split.py keeps held-out combinations out this way); None: any group.
    """
    check_canvas(width, height)
    if max_count < 1:
        raise ValueError(f"max_count must be >= 1, got {max_count}")
    if not MIN_OBJECT_PX <= min_object_px <= min(width, height) / 2:
        raise ValueError(f"min_object_px must be in [{MIN_OBJECT_PX}, {min(width, height) / 2:g}] on a "
                         f"{width}x{height} canvas, got {min_object_px}")
    num_groups = int(rng.integers(1, max_groups + 1))
    pairs = [(c, s) for s in shapes for c in colors]
    if allowed_group is None:
        chosen = [pairs[i] for i in rng.choice(len(pairs), size=min(num_groups, len(pairs)), replace=False)]
    else:   # one group at a time among those still allowed
        chosen = []
        for _ in range(num_groups):
            options = [p for p in pairs if p not in chosen and allowed_group(p, chosen)]
            if not options:
                break
            chosen.append(options[int(rng.integers(len(options)))])
    wanted: list[tuple[str, str]] = []
    per_class: dict[str, int] = {}
    for color, shape in chosen:
        n = min(sample_counts(rng, max_count), max_count - per_class.get(shape, 0), max_objects - len(wanted))
        per_class[shape] = per_class.get(shape, 0) + max(n, 0)
        wanted += [(color, shape)] * max(n, 0)
    sizes = size_range_px(width, height, len(wanted), min_object_px)
    placed: list[ShapeObject] = []
    for color, shape in wanted:
        obj = place_object(rng, shape, color, width, height, placed, side_px=sizes)
        if obj is not None:
            placed.append(obj)
    if not placed:  # cannot happen on a valid canvas (the first object always fits); be explicit
        raise RuntimeError(f"could not place any object on {width}x{height}")
    return Scene(tuple(placed), sample_background(rng, background_kinds))
