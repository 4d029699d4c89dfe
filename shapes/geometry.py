"""Shape outlines in a unit frame and their signed distance, shared by layout and renderer.

Every shape is axis-aligned and fits a unit box: its larger extent is exactly 1 (= the object's
`size`), centred on the origin, y pointing down like image rows. Keeping one definition here means
the renderer, the layout's overlap test and GenEval-style boxes can never disagree.
"""
from __future__ import annotations

import math

import numpy as np


def _star(points: int = 5, inner_ratio: float = 0.45) -> np.ndarray:
    # A fat star (inner/outer 0.45 rather than the classic 0.38) keeps its arms 2+ px wide at the
    # 10 px minimum size, so it is still a star and not a blob after anti-aliasing.
    angles = -math.pi / 2 + np.arange(2 * points) * math.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross(arm: float = 0.36) -> np.ndarray:
    a, h = arm / 2, 0.5
    return np.array([(-a, -h), (a, -h), (a, -a), (h, -a), (h, a), (a, a),
                     (a, h), (-a, h), (-a, a), (-h, a), (-h, -a), (-a, -a)])


def _fit_unit_box(poly: np.ndarray) -> np.ndarray:
    """Scale so the larger extent is 1 and centre the bounding box on the origin."""
    lo, hi = poly.min(0), poly.max(0)
    return (poly - (lo + hi) / 2) / (hi - lo).max()


UNIT_POLYGONS: dict[str, np.ndarray] = {
    "square": _fit_unit_box(np.array([(-1, -1), (1, -1), (1, 1), (-1, 1)], float)),
    "triangle": _fit_unit_box(np.array([(0, -1), (1, 1), (-1, 1)], float)),
    "diamond": _fit_unit_box(np.array([(0, -1), (1, 0), (0, 1), (-1, 0)], float)),
    "star": _fit_unit_box(_star()),
    "cross": _fit_unit_box(_cross()),
}


def unit_half_extent(shape: str) -> tuple[float, float]:
    """(half width, half height) of the shape's tight box in units of its size."""
    if shape == "circle":
        return 0.5, 0.5
    poly = UNIT_POLYGONS[shape]
    half = (poly.max(0) - poly.min(0)) / 2
    return float(half[0]), float(half[1])


def tight_box_px(shape: str, cx: float, cy: float, side: float) -> tuple[float, float, float, float]:
    """xyxy box (pixels) of a shape of bbox side `side` px centred at (cx, cy) px."""
    hw, hh = unit_half_extent(shape)
    return cx - hw * side, cy - hh * side, cx + hw * side, cy + hh * side


def signed_distance(shape: str, xs: np.ndarray, ys: np.ndarray, cx: float, cy: float,
                    side: float) -> np.ndarray:
    """Signed distance in pixels (negative inside) from points (xs, ys) to the shape outline.

    xs is (1, w) and ys (h, 1) so the result broadcasts to (h, w) without building a mesh.
    """
    if shape == "circle":
        return np.hypot(xs - cx, ys - cy) - side / 2
    poly = UNIT_POLYGONS[shape] * side + np.array([cx, cy])
    return polygon_sdf(poly, xs, ys)


def polygon_sdf(poly: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon: nearest edge distance, sign by even-odd rule."""
    px, py = np.broadcast_arrays(xs, ys)
    dist2 = np.full(px.shape, np.inf)
    inside = np.zeros(px.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, np.roll(poly, -1, axis=0)):
        ex, ey = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * ex + (py - y0) * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        dx, dy = px - (x0 + t * ex), py - (y0 + t * ey)
        np.minimum(dist2, dx * dx + dy * dy, out=dist2)
        # Ray casting towards +x: toggles on edges that straddle the point's row.
        straddles = (y0 > py) != (y1 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_cross = x0 + (py - y0) * ex / (ey if ey != 0 else np.inf)
        inside ^= straddles & (px < x_cross)
    dist = np.sqrt(dist2)
    return np.where(inside, -dist, dist)


RELATIONS = ("left of", "right of", "above", "below")


def geneval_relations(box_a, box_b, threshold: float = 0.5, margin: float = 0.1) -> set[str]:
    """Relations that hold for "A <relation> B" under GenEval's rule (REFERENCE.md, GenEval
    protocol): offset = centre_A - centre_B, shrunk by margin * (dim_A + dim_B) per axis, divided by
    the unshrunk offset's norm; "left of" if dx < -threshold etc. (y points down). GenEval uses
    threshold 0.5; a larger threshold asks for the relation to hold *clearly*."""
    a, b = np.asarray(box_a[:4], float), np.asarray(box_b[:4], float)
    offset = (a[:2] + a[2:]) / 2 - (b[:2] + b[2:]) / 2
    dims = np.abs(a[2:] - a[:2]) + np.abs(b[2:] - b[:2])
    revised = np.maximum(np.abs(offset) - margin * dims, 0) * np.sign(offset)
    norm = np.linalg.norm(offset)
    if np.all(np.abs(revised) < 1e-3) or norm == 0:
        return set()
    dx, dy = revised / norm
    held = set()
    if dx < -threshold:
        held.add("left of")
    if dx > threshold:
        held.add("right of")
    if dy < -threshold:
        held.add("above")
    if dy > threshold:
        held.add("below")
    return held
