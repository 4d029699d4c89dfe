"""Interleaved (story) evaluation on held-out Shapes-world videos, scored by the oracle.

A model is given a video's opening caption and first frame and continues the story: a
transition text, then the next frame. Two scores per item (the evaluator never sees a model:
`score_interleaved(items, continue_fn)` takes a function (captions, frames, seed) -> [(text,
frame or None)]):

  event accuracy      the events the generated text states ("The red circle moves left", "A blue
                      square appears ...", "... disappears", "... turns green"; the world's
                      sentence forms, shapes/video.py) hold in the generated frame, read by the
                      oracle detector against the first frame (its exact scene for the counts): a
                      move shifts the detected centre of an object of that name in the stated
                      direction (its nearest namesake; both frames read by the detector); appear / disappear raise /
                      lower its (colour, shape) count; "turns c" lowers the old count and raises
                      the new. A sentence that is none of these counts as a wrong event; a text
                      stating "Nothing changes." has no events (it enters persistence only).
  object persistence  of the first frame's objects that the text does not say disappear or change
                      colour, the fraction found in the generated frame with their shape and
                      colour (matched by (colour, shape) counts).

The videos come from a seed stream disjoint from the world's training samples
(numpy Generator([seed, 99991, k]) vs the world's [seed, i]).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from shapes.palette import COLOR_NAMES, SHAPES
from shapes.render import render
from shapes.scene import Scene
from shapes.video import make_video

ContinueFn = Callable[[list[str], list[np.ndarray], int], list[tuple[str, np.ndarray | None]]]
_NAME = rf"(?:an?|the) ({'|'.join(COLOR_NAMES)}) ({'|'.join(SHAPES)})"
_PATTERNS = {
    "move": re.compile(rf"^{_NAME} moves (.+)$"),
    "appear": re.compile(rf"^{_NAME} appears\b.*$"),
    "disappear": re.compile(rf"^{_NAME} disappears$"),
    "recolor": re.compile(rf"^{_NAME} turns ({'|'.join(COLOR_NAMES)})$"),
}
MIN_SHIFT_PX = 1.0  # a stated move must shift the detected centre by more than this along its axis
MIN_SCORE = 0.3  # detections below this confidence are ignored (GenEval's threshold)


def interleaved_items(num_videos: int = 8, seed: int = 0, width: int = 64, height: int = 64,
                      num_frames: int = 4) -> list[dict[str, Any]]:
    """Held-out world videos: {"caption", "image" (first frame, uint8), "scene" (its dict), "video"}."""
    out = []
    for k in range(num_videos):
        video = make_video(np.random.default_rng([seed, 99991, k]), num_frames, width, height)
        out.append({"caption": video.captions[0], "image": render(video.frames[0], width, height).image,
                    "scene": video.frames[0].to_dict(), "video": video.to_dict(), "width": width, "height": height})
    return out


def parse_events(text: str) -> list[dict[str, Any]]:
    """The world's transition sentences -> events ({"event": "unparsed", "sentence"} otherwise)."""
    events = []
    for sentence in (s.strip().rstrip(".").strip() for s in text.split(". ") if s.strip()):
        low = sentence.lower()
        if low in ("", "nothing changes"):
            continue
        for kind, pattern in _PATTERNS.items():
            m = pattern.match(low)
            if m:
                ev = {"event": kind, "color": m.group(1), "shape": m.group(2)}
                if kind == "move":
                    ev["direction"] = m.group(3)
                if kind == "recolor":
                    ev["to"] = m.group(3)
                events.append(ev)
                break
        else:
            events.append({"event": "unparsed", "sentence": sentence})
    return events


def _detections(image: np.ndarray, detector) -> list[dict]:
    return [d for d in detector.detect(image) if d["score"] >= MIN_SCORE]


def _centre(box) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def _move_holds(direction: str, dx: float, dy: float) -> bool:
    words = set(re.findall(r"left|right|up|down", direction))
    if not words:
        return False
    ok = True
    ok &= dx < -MIN_SHIFT_PX if "left" in words else True
    ok &= dx > MIN_SHIFT_PX if "right" in words else True
    ok &= dy < -MIN_SHIFT_PX if "up" in words else True
    ok &= dy > MIN_SHIFT_PX if "down" in words else True
    return bool(ok)


def score_item(item: dict[str, Any], text: str, image: np.ndarray | None, detector) -> dict[str, Any]:
    """Event accuracy and object persistence of one continuation (see the module doc)."""
    w, h = item["width"], item["height"]
    scene = Scene.from_dict(item["scene"])
    before = Counter((o.color, o.shape) for o in scene.objects)
    events = parse_events(text)
    if image is None:
        return {"events": events, "event_hits": 0, "persistence_hits": 0,
                "persistence_total": sum(before.values()), "no_image": True}
    dets = _detections(image, detector)
    first = _detections(item["image"], detector)  # centres read the same way in both frames
    after = Counter((d["color"], d["class"]) for d in dets)
    hits = 0
    changed: Counter = Counter()
    for ev in events:
        key = (ev.get("color"), ev.get("shape"))
        if ev["event"] == "appear":
            ok = after[key] > before[key]
        elif ev["event"] == "disappear":
            ok = before[key] > 0 and after[key] < before[key]
            changed[key] += 1
        elif ev["event"] == "recolor":
            new = (ev["to"], ev["shape"])
            ok = before[key] > 0 and after[key] < before[key] and after[new] > before[new]
            changed[key] += 1
        elif ev["event"] == "move":  # some object of that name: its nearest namesake moved that way
            olds = [_centre(d["bbox"]) for d in first if (d["color"], d["class"]) == key]
            news = [_centre(d["bbox"]) for d in dets if (d["color"], d["class"]) == key]
            ok = False
            for x0, y0 in olds if news else ():
                x1, y1 = min(news, key=lambda c: (c[0] - x0) ** 2 + (c[1] - y0) ** 2)
                ok = ok or _move_holds(ev["direction"], x1 - x0, y1 - y0)
        else:
            ok = False
        ev["holds"] = bool(ok)
        hits += int(ok)
    expected = before - changed
    persistence = sum(min(after[k], n) for k, n in expected.items())
    return {"events": events, "event_hits": hits, "persistence_hits": persistence,
            "persistence_total": sum(expected.values()), "detections": sorted(f"{c} {s}" for c, s in after.elements())}


def score_interleaved(items: Sequence[dict], continue_fn: ContinueFn, detector=None, seed: int = 0) -> dict[str, Any]:
    """{"event_accuracy", "object_persistence", "events_stated", "items", "records"}; event
    accuracy is over all stated events (None when no text stated one)."""
    if detector is None:
        from evaluation.detectors import load_detector

        detector = load_detector("oracle")
    outs = continue_fn([it["caption"] for it in items], [it["image"] for it in items], seed)
    if len(outs) != len(items):
        raise ValueError(f"continue_fn returned {len(outs)} continuations for {len(items)} stories")
    records = []
    for it, (text, image) in zip(items, outs):
        records.append({"caption": it["caption"], "text": text, **score_item(it, text, image, detector)})
    n_events = sum(len(r["events"]) for r in records)
    total = sum(r["persistence_total"] for r in records)
    return {"event_accuracy": (sum(r["event_hits"] for r in records) / n_events) if n_events else None,
            "object_persistence": sum(r["persistence_hits"] for r in records) / total if total else None,
            "events_stated": n_events, "items": len(records), "records": records}
