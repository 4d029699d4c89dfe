"""Shapes-world videos -> interleaved stories: `caption <img> transition <img> ...`.

The keyframes come from `keyframes.select_keyframes` on the rendered frames (the same rule a real
video gets); the first text is the first keyframe's scene caption, each later text says what
changed since the previous keyframe, written from the world's exact event log
(`shapes.video.transition_caption`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from datamodules.interleaved.keyframes import KeyframeConfig, select_keyframes
from shapes.captions import short_caption
from shapes.scene import Scene
from shapes.video import transition_caption


def shapes_story(video: dict[str, Any], frames: Sequence[np.ndarray],
                 cfg: KeyframeConfig = KeyframeConfig()) -> dict[str, Any]:
    """{"keyframes": [frame indices], "texts": [caption, transition, ...]} (one text per keyframe)
    for a world video (its json: frames, object_ids, events, captions) and its rendered frames."""
    if len(frames) != len(video["frames"]):
        raise ValueError(f"video has {len(frames)} rendered frames but its json describes {len(video['frames'])}")
    keys = select_keyframes(frames, cfg)
    if not keys:
        raise ValueError("no keyframe selected; keep the first frame or lower the threshold")
    first = keys[0]
    if first == 0 and video.get("captions"):
        caption = video["captions"][0]
    else:
        caption = short_caption(Scene.from_dict(video["frames"][first]), np.random.default_rng(first))
    texts = [caption] + [transition_caption(video, a, b) for a, b in zip(keys, keys[1:])]
    return {"keyframes": keys, "texts": texts}
