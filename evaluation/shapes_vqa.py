"""Shapes-world oracle VQA: answers DPG-style yes/no questions from oracle detections.

It reads only the image (through `OracleDetector.detect` and the detector's background model),
never scene metadata, and parses the question wording of shapes/dpg.py:
  global     "Is the background plain?" / "Does the background have a gradient?" /
             "Is the background textured?"
  entity     "Is there a circle?"
  attribute  "Is there a red circle?" / "Are there red circles?" / "Is the circle red?"
  size       "Is the red circle large?"   (small < 0.2 <= medium-sized < 0.3 <= large, box side
             over the canvas' shorter side, as captions.size_word)
  count      "Are there three red circles?"   (exact count, like GenEval's include + exclude)
  relation   "Is the red circle left of the blue star?" (GenEval's position rule, threshold 0.5)
  place      "Is the red circle in the top left?" / "... on the left?" / "... in the centre?"
Detections below `min_score` (GenEval's 0.3) are ignored. A question it cannot parse raises
ValueError naming it (on_unknown="error") or is answered "no" (on_unknown="no").
"""
from __future__ import annotations

import re
from typing import Literal

import numpy as np

from shapes.geometry import geneval_relations
from shapes.palette import COLOR_NAMES, SHAPES

NUMBERS = {w: i for i, w in enumerate(("zero", "one", "two", "three", "four", "five", "six",
                                        "seven", "eight", "nine", "ten"))}
SIZE_WORDS = ("small", "medium-sized", "medium", "large", "big")
RELATIONS = ("to the left of", "to the right of", "left of", "right of", "above", "below")
_PLURALS = {s + ("es" if s.endswith(("s", "sh", "ch", "x")) else "s"): s for s in SHAPES}


def size_class(side_fraction: float) -> str:
    """captions.size_word's thresholds on the box side / shorter canvas side."""
    return "small" if side_fraction < 0.2 else "medium-sized" if side_fraction < 0.3 else "large"


def place_of(cx: float, cy: float) -> tuple[str, str]:
    """(row, col) of a centre (fractions of the canvas) in a 3x3 grid: row top/''/bottom."""
    return ("top", "", "bottom")[min(int(cy * 3), 2)], ("left", "", "right")[min(int(cx * 3), 2)]


def parse_mention(text: str) -> dict | None:
    """'three red circles' / 'a large blue star' / 'the circle' -> {shape, color, count, size}."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)?|\d+", text.lower())
    shape_at = next((i for i, w in enumerate(words) if w in SHAPES or w in _PLURALS), None)
    if shape_at is None:
        return None
    before = words[:shape_at]
    count = next((NUMBERS.get(w, int(w) if w.isdigit() else None) for w in before
                  if w in NUMBERS or w.isdigit()), None)
    return {"shape": _PLURALS.get(words[shape_at], words[shape_at]),
            "color": next((w for w in before if w in COLOR_NAMES), None),
            "size": next((w for w in before if w in SIZE_WORDS), None),
            "count": count, "rest": words[shape_at + 1:]}


class ShapesOracleVQA:
    """`answer(image, question) -> "yes" | "no"` from the Shapes oracle detector."""

    def __init__(self, detector=None, min_score: float = 0.3, on_unknown: Literal["error", "no"] = "error"):
        if detector is None:
            from shapes.oracle import OracleDetector
            detector = OracleDetector()
        self.detector, self.min_score, self.on_unknown = detector, min_score, on_unknown
        self._cache_key: tuple | None = None
        self._cache: list[dict] = []

    # ------------------------------------------------------------------ detections
    def detections(self, image: np.ndarray) -> list[dict]:
        """Detections above min_score; cached for the last image (DPG asks many questions of one)."""
        image = np.ascontiguousarray(image)
        key = (image.shape, hash(image.tobytes()))
        if key != self._cache_key:
            self._cache = [d for d in self.detector.detect(image) if d["score"] >= self.min_score]
            self._cache_key = key
        return self._cache

    def matches(self, image: np.ndarray, mention: dict) -> list[dict]:
        h, w = image.shape[:2]
        out = []
        for d in self.detections(image):
            if d["class"] != mention["shape"] or (mention["color"] and d.get("color") != mention["color"]):
                continue
            if mention.get("size") and not self._size_ok(d, mention["size"], w, h):
                continue
            out.append(d)
        return out

    @staticmethod
    def _size_ok(d: dict, word: str, w: int, h: int) -> bool:
        x0, y0, x1, y1 = d["bbox"]
        side, want = max(x1 - x0, y1 - y0), {"medium": "medium-sized", "big": "large"}.get(word, word)
        # Pixel boxes are exact to about a pixel: a size within 1 px of a threshold counts as either.
        return any(size_class((side + e) / min(w, h)) == want for e in (-1.0, 0.0, 1.0))

    # ------------------------------------------------------------------ answering
    def answer(self, image: np.ndarray, question: str) -> str:
        verdict = self.judge(np.asarray(image), question)
        if verdict is None:
            if self.on_unknown == "error":
                raise ValueError(f"ShapesOracleVQA cannot parse question {question!r}; it knows the "
                                 f"templates of shapes/dpg.py")
            return "no"
        return "yes" if verdict else "no"

    def judge(self, image: np.ndarray, question: str) -> bool | None:
        q = question.lower().strip().rstrip("?").strip()
        if "background" in q:
            return self._background(image, q)
        for rel in RELATIONS:
            if f" {rel} " in q:
                left, right = q.split(f" {rel} ", 1)
                return self._relation(image, left, rel.replace("to the ", ""), right)
        m = re.match(r"^(?:is|are) there (.+)$", q)
        if m:
            mention = parse_mention(m.group(1))
            if mention is None:
                return None
            found = len(self.matches(image, mention))
            return found == mention["count"] if mention["count"] is not None else found >= 1
        m = re.match(r"^(?:is|are) the (.+)$", q)
        if m:
            return self._attribute(image, m.group(1))
        return None

    def _attribute(self, image: np.ndarray, text: str) -> bool | None:
        mention = parse_mention(text)
        if mention is None:
            return None
        rest = " ".join(mention["rest"])
        if rest in COLOR_NAMES:                                   # "is the circle red"
            return bool(self.matches(image, {**mention, "color": rest}))
        if rest in SIZE_WORDS:                                    # "is the red circle large"
            return bool(self.matches(image, {**mention, "size": rest}))
        place = re.match(r"^(?:in|at|on) the (.+)$", rest)        # "is the red circle in the top left"
        if place:
            return self._place(image, mention, place.group(1))
        return None

    def _place(self, image: np.ndarray, mention: dict, where: str) -> bool | None:
        h, w = image.shape[:2]
        words = where.replace("center", "centre").split()
        want_row = next((x for x in words if x in ("top", "bottom")), "")
        want_col = next((x for x in words if x in ("left", "right")), "")
        if not want_row and not want_col and words != ["centre"]:
            return None
        for d in self.matches(image, mention):
            x0, y0, x1, y1 = d["bbox"]
            row, col = place_of((x0 + x1) / 2 / w, (y0 + y1) / 2 / h)
            if words == ["centre"]:
                if not row and not col:
                    return True
            elif (not want_row or row == want_row) and (not want_col or col == want_col) \
                    and (want_row or not row) and (want_col or not col):
                return True
        return False

    def _relation(self, image: np.ndarray, left: str, rel: str, right: str) -> bool | None:
        a, b = parse_mention(left), parse_mention(right)
        if a is None or b is None:
            return None
        for da in self.matches(image, a):
            for db in self.matches(image, b):
                if da is not db and rel in geneval_relations(da["bbox"], db["bbox"], 0.5):
                    return True
        return False

    def _background(self, image: np.ndarray, q: str) -> bool | None:
        kind = "gradient" if "gradient" in q else "texture" if "textur" in q else "plain" if "plain" in q else None
        return None if kind is None else background_kind(image, self.detections(image)) == kind


def background_kind(image: np.ndarray, detections: list[dict], *, gradient_range: float = 6.0,
                    texture_std: float = 2.0) -> str:
    """plain / gradient / texture from the background pixels (outside every dilated detection):
    a linear fit's range across the canvas says gradient, the residual around it says texture."""
    from scipy import ndimage

    h, w = image.shape[:2]
    covered = np.zeros((h, w), bool)
    for d in detections:
        covered |= d["mask"]
    free = ~ndimage.binary_dilation(covered, iterations=2)
    ys, xs = np.nonzero(free)
    if len(ys) < 16:
        return "plain"
    step = max(1, len(ys) // 4096)
    ys, xs = ys[::step], xs[::step]
    pixels = image[ys, xs].astype(np.float64)
    feats = np.stack([np.ones(len(xs)), xs / w - 0.5, ys / h - 0.5], axis=1)
    coef, *_ = np.linalg.lstsq(feats, pixels, rcond=None)
    spread = float(np.abs(coef[1:]).sum(0).max())            # corner-to-corner change, worst channel
    residual = float(np.median(np.abs(pixels - feats @ coef)) * 1.4826)
    if residual > texture_std:
        return "texture"
    return "gradient" if spread > gradient_range else "plain"
