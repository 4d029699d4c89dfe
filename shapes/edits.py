"""EditCanvas-style edit pairs (source scene, instruction, target scene) and subject-driven pairs.

Each edit changes exactly one thing and names it in `meta` so a judge or a test can check that
nothing else moved. An edited object is always one whose (colour, shape) is unique in the source,
so "the red circle" in the instruction refers to exactly one object, before and after the edit.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .captions import join_list, noun_phrase, place_phrase
from .palette import BACKGROUND_KINDS, COLOR_NAMES, SHAPES
from .scene import Scene, ShapeObject, place_object, sample_background, sample_scene

EDIT_KINDS = ("add", "remove", "recolor", "replace", "move", "background")

# 3x3 cells by name, as (x0, y0, x1, y1) fractions; their names match captions.place_phrase.
CELLS = {f"{row} {col}".strip() or "centre": (c / 3, r / 3, (c + 1) / 3, (r + 1) / 3)
         for r, row in enumerate(("top", "", "bottom")) for c, col in enumerate(("left", "", "right"))}


@dataclass
class EditPair:
    source: Scene
    instruction: str
    target: Scene
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)   # edited object: index, before/after

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source.to_dict(), "instruction": self.instruction,
                "target": self.target.to_dict(), "kind": self.kind, "meta": self.meta}


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _unique_indices(scene: Scene) -> list[int]:
    counts = scene.counts()
    return [i for i, o in enumerate(scene.objects) if counts[(o.color, o.shape)] == 1]


def _with_object(scene: Scene, index: int, obj: ShapeObject | None) -> Scene:
    objects = list(scene.objects)
    if obj is None:
        del objects[index]
    else:
        objects[index] = obj
    return scene.replace(objects=tuple(objects))


def _destination(obj: ShapeObject) -> str:
    """'to the top left', 'to the centre': place_phrase turned into a destination."""
    return "to " + place_phrase(obj).split(" ", 1)[1]


def make_edit(scene: Scene, kind: str, rng: np.random.Generator, width: int, height: int) -> EditPair | None:
    """One edit of `kind` on `scene`, or None when the scene does not allow it (e.g. no object
    with a unique name, or no free space to add/move into)."""
    present = set(scene.counts())
    unique = _unique_indices(scene)
    if kind == "background":
        while True:
            new = sample_background(rng, BACKGROUND_KINDS)
            if (new.kind, new.tone, new.tone2) != (scene.background.kind, scene.background.tone, scene.background.tone2):
                break
        text = _pick(rng, ("Change the background to {bg}.", "Replace the background with {bg}.", "Use {bg}."))
        return EditPair(scene, text.format(bg=new.describe()), scene.replace(background=new), kind,
                        {"background_before": dataclasses.asdict(scene.background), "background_after": dataclasses.asdict(new)})
    if kind == "add":
        free = [(c, s) for s in SHAPES for c in COLOR_NAMES if (c, s) not in present]
        color, shape = _pick(rng, free)
        obj = place_object(rng, shape, color, width, height, scene.objects)
        if obj is None:
            return None
        text = _pick(rng, ("Add {obj} {where}.", "Put {obj} {where}.", "Draw {obj} {where}."))
        return EditPair(scene, text.format(obj=noun_phrase(1, color, shape), where=place_phrase(obj)),
                        scene.replace(objects=scene.objects + (obj,)), kind,
                        {"object_index": len(scene.objects), "after": dataclasses.asdict(obj)})
    if not unique:
        return None
    index = int(_pick(rng, unique))
    obj = scene.objects[index]
    meta: dict[str, Any] = {"object_index": index, "before": dataclasses.asdict(obj)}
    if kind == "remove":
        if len(scene.objects) < 2:
            return None   # keep targets non-empty: an empty canvas is not a Shapes-world scene
        text = _pick(rng, ("Remove the {name}.", "Delete the {name}.", "Take away the {name}."))
        return EditPair(scene, text.format(name=obj.name), _with_object(scene, index, None), kind, meta)
    if kind == "recolor":
        color = _pick(rng, [c for c in COLOR_NAMES if (c, obj.shape) not in present])
        new = dataclasses.replace(obj, color=color)
        text = _pick(rng, ("Make the {name} {color}.", "Change the colour of the {name} to {color}.",
                           "Paint the {name} {color}."))
        return EditPair(scene, text.format(name=obj.name, color=color), _with_object(scene, index, new), kind,
                        {**meta, "after": dataclasses.asdict(new)})
    if kind == "replace":
        shape = _pick(rng, [s for s in SHAPES if (obj.color, s) not in present])
        new = dataclasses.replace(obj, shape=shape)   # same centre and box: cannot collide
        text = _pick(rng, ("Replace the {name} with {new}.", "Turn the {name} into {new}.",
                           "Change the {name} to {new}."))
        return EditPair(scene, text.format(name=obj.name, new=noun_phrase(1, obj.color, shape)),
                        _with_object(scene, index, new), kind, {**meta, "after": dataclasses.asdict(new)})
    if kind == "move":
        others = scene.objects[:index] + scene.objects[index + 1:]
        here = place_phrase(obj)
        for cell in rng.permutation(list(CELLS)):
            new = place_object(rng, obj.shape, obj.color, width, height, others,
                               side_px=obj.side_px(width, height), region=CELLS[cell], like=obj, tries=50)
            if new is not None and place_phrase(new) != here:
                new = dataclasses.replace(new, size=obj.size)   # exact size, not re-rounded
                text = _pick(rng, ("Move the {name} {where}.", "Shift the {name} {where}.", "Drag the {name} {where}."))
                return EditPair(scene, text.format(name=obj.name, where=_destination(new)),
                                _with_object(scene, index, new), kind, {**meta, "after": dataclasses.asdict(new)})
        return None
    raise ValueError(f"unknown edit kind {kind!r}; choose one of {', '.join(EDIT_KINDS)}")


def sample_edit(rng: np.random.Generator, width: int = 64, height: int = 64, kinds: Sequence[str] = EDIT_KINDS,
                **scene_kwargs: Any) -> EditPair:
    """A random scene and a random edit of one of `kinds` that it allows."""
    for _ in range(100):
        kind = str(_pick(rng, list(kinds)))
        pair = make_edit(sample_scene(rng, width, height, **scene_kwargs), kind, rng, width, height)
        if pair is not None:
            return pair
    raise RuntimeError(f"no edit of kinds {list(kinds)} found in 100 scenes on {width}x{height}")


# ----------------------------------------------------------------------------- subject-driven
@dataclass
class SubjectPair:
    source: Scene              # the subject in its original context
    target: Scene              # the same subject (shape, colour, size) in a new scene
    prompt: str
    subject: dict[str, Any]    # {shape, color, size}
    source_index: int
    target_index: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self) | {"source": self.source.to_dict(), "target": self.target.to_dict()}


def sample_subject_pair(rng: np.random.Generator, width: int = 64, height: int = 64, **scene_kwargs: Any) -> SubjectPair:
    """Subject = one uniquely named object of a random scene; target = a fresh scene (new
    background, new companions that never share the subject's name) with the subject at a new
    place and the same size."""
    for _ in range(100):
        source = sample_scene(rng, width, height, **scene_kwargs)
        unique = _unique_indices(source)
        if not unique:
            continue
        source_index = int(_pick(rng, unique))
        subject = source.objects[source_index]
        moved = place_object(rng, subject.shape, subject.color, width, height, (),
                             side_px=subject.side_px(width, height), like=subject)
        if moved is None:
            continue
        moved = dataclasses.replace(moved, size=subject.size)
        placed = [moved]
        companions = [(c, s) for s in SHAPES for c in COLOR_NAMES if (c, s) != (subject.color, subject.shape)]
        color, shape = _pick(rng, companions)
        for _k in range(int(rng.integers(1, 4))):
            obj = place_object(rng, shape, color, width, height, placed)
            if obj is not None:
                placed.append(obj)
        if len(placed) < 2:
            continue
        background = sample_background(rng)
        target = Scene(tuple(placed), background)
        others = join_list([noun_phrase(n, c, s) for (c, s), n in Scene(tuple(placed[1:])).counts().items()])
        prompt = (f"Place this {subject.name} {place_phrase(moved)} next to {others}, on "
                  f"{background.describe()}.")
        return SubjectPair(source, target, prompt, {"shape": subject.shape, "color": subject.color,
                                                    "size": subject.size}, source_index, 0)
    raise RuntimeError(f"no subject pair found in 100 scenes on {width}x{height}")

