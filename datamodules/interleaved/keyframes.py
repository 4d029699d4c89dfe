"""Keyframe selection for video -> interleaved data (REFERENCE.md "Video -> interleaved data").

Public pipelines keep a frame when it differs enough from the last kept one (ShareGPT4Video:
CLIP similarity < 0.93 to the last keyframe, first and last frames always kept; Panda-70M /
PySceneDetect: a content-change threshold with a minimum scene length). Here the change score
is the mean absolute pixel difference (in [0, 1]) between a frame and the last kept keyframe, or
a feature distance when a feature function is given; every rule is a field of `KeyframeConfig`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class KeyframeConfig:
    """threshold: smallest change score (vs the last kept keyframe) that keeps a frame.
    min_gap: fewest frames between two keyframes (the last frame is kept regardless, replacing
    a keyframe closer than min_gap to it). max_keyframes: at most this many (first and last
    included); extra candidates are dropped lowest-score first. keep_first / keep_last: always
    keep the video's first / last frame (ShareGPT4Video does both)."""

    threshold: float = 0.02
    min_gap: int = 1
    max_keyframes: int = 4
    keep_first: bool = True
    keep_last: bool = True

    def __post_init__(self):
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"keyframe threshold {self.threshold} must be in [0, 1] (a mean pixel difference)")
        if self.min_gap < 1 or self.max_keyframes < 1:
            raise ValueError(f"min_gap ({self.min_gap}) and max_keyframes ({self.max_keyframes}) must be >= 1")
        if self.max_keyframes < int(self.keep_first) + int(self.keep_last):
            raise ValueError(f"max_keyframes={self.max_keyframes} cannot hold both the first and last frames")


def pixel_change(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two uint8 frames, in [0, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"frames of different shapes {a.shape} and {b.shape}")
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean() / 255.0)


def select_keyframes(frames: Sequence[np.ndarray], cfg: KeyframeConfig = KeyframeConfig(),
                     score: Callable[[np.ndarray, np.ndarray], float] = pixel_change) -> list[int]:
    """Indices of the keyframes of `frames` (uint8 H×W×3), increasing. A frame is a candidate
    when score(last kept, frame) >= threshold and it lies >= min_gap frames after the last kept
    one; the first / last frames are kept when configured; beyond max_keyframes the candidates
    with the lowest scores are dropped."""
    n = len(frames)
    if n == 0:
        return []
    kept: list[int] = [0] if cfg.keep_first else []
    scores: dict[int, float] = {}
    last = 0
    for t in range(1, n):  # `last`: the last kept keyframe (frame 0 is the reference even when not kept)
        s = score(frames[last], frames[t])
        if t - last < cfg.min_gap or s < cfg.threshold:
            continue
        kept.append(t)
        scores[t] = s
        last = t
    if cfg.keep_last and n - 1 not in kept:
        while kept and kept[-1] != 0 and n - 1 - kept[-1] < cfg.min_gap:
            scores.pop(kept.pop(), None)  # too close to the last frame: the last frame wins
        kept.append(n - 1)
    fixed = {i for i in kept if (i == 0 and cfg.keep_first) or (i == n - 1 and cfg.keep_last)}
    extra = len(kept) - cfg.max_keyframes
    if extra > 0:
        optional = sorted((i for i in kept if i not in fixed), key=lambda i: (scores.get(i, 0.0), -i))
        drop = set(optional[:extra])
        kept = [i for i in kept if i not in drop]
    return kept
