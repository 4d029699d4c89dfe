"""Shape classification for the oracle detector: fit each class's outline to an object's pixels.

A trained detector knows what each class looks like; here that knowledge is the Shapes world's own
outline definitions (shapes/geometry.py), never a scene's metadata. Shapes are
axis-aligned and never rotated, so a class hypothesis is placed by a box alone. For each class the
box (and an extra blur) is solved from the object's soft-coverage moments (mass, centroid, variance:
a Gaussian blur keeps the first two and adds to the third, so blurred and resampled objects get the
right box), the outline is rasterised there with the renderer's one-pixel anti-aliasing ramp plus
that blur, and compared with the coverage by soft IoU. The best class wins; its IoU and its margin
over the runner-up become the detector's confidence (shapes/oracle.py: confidence).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from shapes.geometry import UNIT_POLYGONS, polygon_sdf
from shapes.palette import SHAPES


def _normalised_outline(shape: str) -> np.ndarray:
    """Outline with its tight box mapped to [0, 1] x [0, 1]."""
    poly = UNIT_POLYGONS[shape]
    lo, hi = poly.min(0), poly.max(0)
    return (poly - lo) / (hi - lo)


# The circle (an ellipse once stretched to a non-square box) is analytic, see template_coverage.
OUTLINES: dict[str, np.ndarray] = {shape: _normalised_outline(shape) for shape in UNIT_POLYGONS}


def template_coverage(shape: str, box: tuple[float, float, float, float],
                      xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of pixels (centres xs (1, w), ys (h, 1)) by `shape` filling `box`.

    Same anti-aliasing ramp as the renderer: clip(0.5 - signed distance, 0, 1). The distance is
    measured to the stretched outline, so it is exact for square boxes and close otherwise.
    """
    x0, y0, x1, y1 = box
    if shape == "circle":   # ellipse: first-order distance (k - 1) / |grad k|, k = normalised radius
        a, b = max((x1 - x0) / 2, 1e-3), max((y1 - y0) / 2, 1e-3)
        u, v = (xs - (x0 + x1) / 2) / a, (ys - (y0 + y1) / 2) / b
        k = np.sqrt(u * u + v * v) + 1e-9
        grad = np.sqrt((u / a) ** 2 + (v / b) ** 2) / k + 1e-9
        return np.clip(0.5 - (k - 1) / grad, 0.0, 1.0)
    poly = OUTLINES[shape] * np.array([x1 - x0, y1 - y0]) + np.array([x0, y0])
    return np.clip(0.5 - polygon_sdf(poly, xs, ys), 0.0, 1.0)


def soft_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.maximum(a, b).sum()
    return float(np.minimum(a, b).sum() / union) if union > 0 else 0.0


def _unit_moments(shape: str, n: int = 256) -> tuple[float, np.ndarray, np.ndarray]:
    """(area, centroid (x, y), variance (x, y)) of the class filling the unit box, on an n x n grid."""
    t = (np.arange(n) + 0.5) / n
    unit = template_coverage(shape, (0.0, 0.0, float(n), float(n)), (t * n)[None, :], (t * n)[:, None])
    area = unit.sum()
    mean = np.array([(unit * t[None, :]).sum(), (unit * t[:, None]).sum()]) / area
    var = np.array([(unit * (t[None, :] - mean[0]) ** 2).sum(),
                    (unit * (t[:, None] - mean[1]) ** 2).sum()]) / area
    return float(area / n / n), mean, var


def moment_box(shape: str, mass: float, mean: np.ndarray, var: np.ndarray) -> tuple[tuple, float]:
    """Box and extra blur variance that make `shape` reproduce an object's soft-coverage moments.

    A Gaussian blur keeps mass and centroid and adds its variance to both axes, so with the class's
    unit-box moments (area a, variance s2) a box w x h blurred by v satisfies
    var = s2 * (w, h)^2 + v and mass = a * w * h; v is found by bisection (mass falls as v grows).
    """
    area, unit_mean, unit_var = UNIT_MOMENTS[shape]

    def size(v: float) -> np.ndarray:
        return np.sqrt(np.maximum(var - v, 1e-6) / unit_var)

    lo, hi = 0.0, float(max(min(var) - 1e-6, 0.0))
    if area * np.prod(size(0.0)) > mass:   # the spread implies more mass than seen: part is blur
        for _ in range(30):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if area * np.prod(size(mid)) > mass else (lo, mid)
    w, h = size(lo)
    x0, y0 = mean[0] - unit_mean[0] * w, mean[1] - unit_mean[1] * h
    return (float(x0), float(y0), float(x0 + w), float(y0 + h)), lo


MAX_FIT_SIDE = 40      # coverage crops are area-averaged down to this many pixels (speed only)
RAMP_VAR = 1.0 / 12    # variance of the renderer's one-pixel anti-aliasing ramp (uniform on 1 px)
UNIT_MOMENTS = {shape: _unit_moments(shape) for shape in SHAPES}


def _shrink(coverage: np.ndarray, factor: int) -> np.ndarray:
    """Area-average by an integer factor (the anti-aliasing ramp stays about one pixel wide)."""
    if factor <= 1:
        return coverage
    h, w = coverage.shape
    padded = np.zeros((-(-h // factor) * factor, -(-w // factor) * factor), coverage.dtype)
    padded[:h, :w] = coverage
    return padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean((1, 3))


def classify_shape(coverage: np.ndarray) -> tuple[str, float, float, tuple]:
    """(best class, its soft IoU, runner-up class's soft IoU, best class's box) for one object.

    `coverage`: the object's soft coverage (0 outside it) on a crop with a margin of a few px.
    Each class gets the box and blur that reproduce the coverage's moments (moment_box); its
    score is the soft IoU of that blurred template with the coverage. The box is in crop pixels.
    """
    factor = max(1, int(np.ceil(max(coverage.shape) / MAX_FIT_SIDE)))
    small = _shrink(coverage, factor)
    h, w = small.shape
    xs = (np.arange(w, dtype=np.float64) + 0.5)[None, :]
    ys = (np.arange(h, dtype=np.float64) + 0.5)[:, None]
    mass = small.sum()
    mean = np.array([(small * xs).sum(), (small * ys).sum()]) / mass
    var = np.array([(small * (xs - mean[0]) ** 2).sum(), (small * (ys - mean[1]) ** 2).sum()]) / mass
    scores, boxes = {}, {}
    for shape in SHAPES:
        box, blur_var = moment_box(shape, mass, mean, var)
        template = template_coverage(shape, box, xs, ys)
        if blur_var > RAMP_VAR:   # the 1 px anti-aliasing ramp is already in the template
            template = ndimage.gaussian_filter(template, np.sqrt(blur_var - RAMP_VAR))
        scores[shape], boxes[shape] = soft_iou(small, template), tuple(factor * c for c in box)
    ranked = sorted(scores, key=scores.get, reverse=True)
    return ranked[0], scores[ranked[0]], scores[ranked[1]], boxes[ranked[0]]
