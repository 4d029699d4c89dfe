"""Short Shapes-world videos: frames (scenes) in which objects move, appear, disappear and change
colour, with an event log and a per-frame caption of what just happened.

Objects keep an id for the whole video (`object_ids[t][k]` is the id of `frames[t].objects[k]`),
so the log can name them even when others appear or vanish. The log is exhaustive: between two
frames an object changes position only with a "move" event and colour only with a "recolor"
event, and the set of ids changes only with "appear"/"disappear". Moves keep the layout's gap
(an object that would bump into another waits), so every frame is a valid scene.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .captions import noun_phrase, place_phrase, short_caption
from .palette import COLOR_NAMES, SHAPES
from .scene import Scene, ShapeObject, _boxes_clear, gap_px, make_object, place_object, sample_scene


@dataclass
class Video:
    frames: list[Scene]
    object_ids: list[list[int]]
    events: list[dict[str, Any]]   # {frame, event, object, shape, color, ...}; frame >= 1
    captions: list[str]            # frame 0: the scene; frame t: what happened since frame t-1

    def to_dict(self) -> dict[str, Any]:
        return {"frames": [f.to_dict() for f in self.frames], "object_ids": self.object_ids,
                "events": self.events, "captions": self.captions}


def _direction(dx: float, dy: float) -> str:
    horizontal = "right" if dx > 0 else "left"
    vertical = "down" if dy > 0 else "up"
    if abs(dx) > 2 * abs(dy):
        return horizontal
    if abs(dy) > 2 * abs(dx):
        return vertical
    return f"{vertical} and to the {horizontal}"


def _sentence(event: dict[str, Any], name: str) -> str:
    kind = event["event"]
    if kind == "move":
        return f"{name} moves {_direction(event['to'][0] - event['from'][0], event['to'][1] - event['from'][1])}"
    if kind == "appear":
        return f"{name} appears {event['where']}"
    if kind == "disappear":
        return f"{name} disappears"
    return f"{name} turns {event['to']}"


def _try_move(obj: ShapeObject, velocity: np.ndarray, others: list[ShapeObject], width: int,
              height: int) -> tuple[ShapeObject | None, np.ndarray]:
    """Step by velocity (pixels), bouncing off the canvas border; None if it would collide."""
    x, y = obj.center_px(width, height)
    half = obj.side_px(width, height) / 2 + 1.0
    nx, ny = x + velocity[0], y + velocity[1]
    if not half <= nx <= width - half:
        velocity = velocity * np.array([-1, 1])
        nx = x + velocity[0]
    if not half <= ny <= height - half:
        velocity = velocity * np.array([1, -1])
        ny = y + velocity[1]
    moved = dataclasses.replace(make_object(obj.shape, obj.color, nx, ny, obj.side_px(width, height), width, height),
                                size=obj.size)
    boxes = [o.layout_box_px(width, height) for o in others]
    inside = half <= nx <= width - half and half <= ny <= height - half
    if not inside or not _boxes_clear(moved.layout_box_px(width, height), boxes, gap_px(width, height)):
        return None, velocity
    return moved, velocity


def make_video(rng: np.random.Generator, num_frames: int = 8, width: int = 64, height: int = 64, *,
               max_objects: int = 5, p_appear: float = 0.15, p_disappear: float = 0.1,
               p_recolor: float = 0.15) -> Video:
    """A random video of num_frames scenes with its exhaustive event log."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    scene = sample_scene(rng, width, height, max_groups=2, max_count=3, max_objects=min(max_objects, 4))
    objects = list(scene.objects)
    ids = list(range(len(objects)))
    next_id = len(objects)
    speed = 0.06 * min(width, height)
    velocities = {i: rng.uniform(-speed, speed, size=2) * (rng.random() < 0.7) for i in ids}
    frames, object_ids, events = [scene], [list(ids)], []
    captions = [short_caption(scene, rng)]
    for t in range(1, num_frames):
        frame_events: list[dict[str, Any]] = []
        names: list[str] = []

        def log(event: dict[str, Any], obj: ShapeObject) -> None:
            frame_events.append({"frame": t, **event, "shape": obj.shape, "color": obj.color})
            names.append(noun_phrase(1, obj.color, obj.shape))

        for k in range(len(objects)):
            if not velocities[ids[k]].any():
                continue
            others = objects[:k] + objects[k + 1:]
            moved, velocities[ids[k]] = _try_move(objects[k], velocities[ids[k]], others, width, height)
            if moved is not None and (moved.cx, moved.cy) != (objects[k].cx, objects[k].cy):
                log({"event": "move", "object": ids[k], "from": [objects[k].cx, objects[k].cy],
                     "to": [moved.cx, moved.cy]}, objects[k])
                objects[k] = moved
        if objects and rng.random() < p_recolor:
            k = int(rng.integers(len(objects)))
            color = str(rng.choice([c for c in COLOR_NAMES if c != objects[k].color]))
            log({"event": "recolor", "object": ids[k], "from": objects[k].color, "to": color}, objects[k])
            objects[k] = dataclasses.replace(objects[k], color=color)
        if len(objects) > 1 and rng.random() < p_disappear:
            k = int(rng.integers(len(objects)))
            log({"event": "disappear", "object": ids[k]}, objects[k])
            del objects[k], ids[k]
        if len(objects) < max_objects and rng.random() < p_appear:
            new = place_object(rng, str(rng.choice(SHAPES)), str(rng.choice(COLOR_NAMES)), width, height, objects)
            if new is not None:
                objects.append(new)
                ids.append(next_id)
                velocities[next_id] = rng.uniform(-speed, speed, size=2) * (rng.random() < 0.7)
                log({"event": "appear", "object": next_id, "at": [new.cx, new.cy], "where": place_phrase(new)}, new)
                next_id += 1
        scene = scene.replace(objects=tuple(objects))
        frames.append(scene)
        object_ids.append(list(ids))
        events += frame_events
        sentences = [_sentence(e, n) for e, n in zip(frame_events, names)]
        captions.append(". ".join(s[0].upper() + s[1:] for s in sentences) + "." if sentences else "Nothing changes.")
    return Video(frames, object_ids, events, captions)


def transition_caption(video: dict[str, Any], a: int, b: int) -> str:
    """What changed between frames a < b of a video (its `to_dict()`), from the exact event log:
    per object, in the order of its first event in (a, b], the net change — "moves <direction>"
    (net displacement a -> b), "turns <colour>" (colour at b), "appears <where>" (its place at b),
    "disappears" (present at a, gone at b); an object that appears and disappears inside the
    interval is never seen and not named. Same sentence forms as the per-frame captions."""
    if not 0 <= a < b < len(video["frames"]):
        raise ValueError(f"transition ({a}, {b}) is not an increasing pair of frames of a {len(video['frames'])}-frame video")
    scenes = [Scene.from_dict(video["frames"][t]) for t in (a, b)]
    at = [dict(zip(video["object_ids"][t], s.objects)) for t, s in zip((a, b), scenes)]
    order: list[int] = []
    kinds: dict[int, set[str]] = {}
    for e in video["events"]:
        if a < e["frame"] <= b:
            if e["object"] not in kinds:
                order.append(e["object"])
                kinds[e["object"]] = set()
            kinds[e["object"]].add(e["event"])
    sentences = []
    for oid in order:
        before, after = at[0].get(oid), at[1].get(oid)
        if before is None and after is None:
            continue
        if before is None:
            sentences.append(f"{noun_phrase(1, after.color, after.shape)} appears {place_phrase(after)}")
            continue
        name = noun_phrase(1, before.color, before.shape)
        if after is None:
            sentences.append(f"{name} disappears")
            continue
        if "move" in kinds[oid] and (after.cx, after.cy) != (before.cx, before.cy):
            sentences.append(f"{name} moves {_direction(after.cx - before.cx, after.cy - before.cy)}")
        if "recolor" in kinds[oid] and after.color != before.color:
            sentences.append(f"{name} turns {after.color}")
    return ". ".join(s[0].upper() + s[1:] for s in sentences) + "." if sentences else "Nothing changes."
