"""Captions for Shapes-world scenes: short (what is there) and dense (plus sizes, places,
relations and background). Everything said is read off the scene, so it is true by construction;
spatial relations are only stated when they hold clearly under GenEval's rule.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import geneval_relations
from .scene import Scene, ShapeObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
CLEAR_RELATION = 0.65   # above GenEval's 0.5: stated relations survive small generation errors


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def plural(shape: str) -> str:
    # Proper English ("crosses"); GenEval's own file appends "s" blindly ("toothbrushs").
    return shape + ("es" if shape.endswith(("s", "sh", "ch", "x")) else "s")


def noun_phrase(count: int, color: str | None, shape: str) -> str:
    """'a red circle', 'an orange star', 'three crosses', 'two blue squares'."""
    words = f"{color} {shape}" if color else shape
    if count == 1:
        return f"{article(words)} {words}"
    return f"{number_word(count)} {color + ' ' if color else ''}{plural(shape)}"


def join_list(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def size_word(obj: ShapeObject) -> str:
    """small / medium / large by box side relative to the canvas' shorter side."""
    return "small" if obj.size < 0.2 else "medium-sized" if obj.size < 0.3 else "large"


def place_phrase(obj: ShapeObject) -> str:
    """Where in a 3x3 grid of the canvas the object's centre lies."""
    col = ("left", "", "right")[min(int(obj.cx * 3), 2)]
    row = ("top", "", "bottom")[min(int(obj.cy * 3), 2)]
    if not row and not col:
        return "in the centre"
    if row and col:
        return f"in the {row} {col}"
    return f"at the {row or col}" if row else f"on the {col}"


def object_list(scene: Scene) -> list[str]:
    return [noun_phrase(n, color, shape) for (color, shape), n in scene.counts().items()]


SHORT_TEMPLATES = (
    "{objects}",
    "a photo of {objects}",
    "{objects} on {background}",
    "an image with {objects}",
    "a picture showing {objects}",
)


def short_caption(scene: Scene, rng: np.random.Generator) -> str:
    template = SHORT_TEMPLATES[int(rng.integers(len(SHORT_TEMPLATES)))]
    return template.format(objects=join_list(object_list(scene)), background=scene.background.describe())


def clear_relations(scene: Scene, width: int, height: int) -> list[tuple[int, str, int]]:
    """(a, relation, b) for pairs of objects whose (colour, shape) is unique in the scene (so the
    phrase 'the red circle' names one object) and whose relation holds clearly."""
    counts = scene.counts()
    unique = [i for i, o in enumerate(scene.objects) if counts[(o.color, o.shape)] == 1]
    out = []
    for a in unique:
        for b in unique:
            if a < b:
                held = geneval_relations(scene.objects[a].box_px(width, height),
                                         scene.objects[b].box_px(width, height), CLEAR_RELATION)
                out += [(a, rel, b) for rel in sorted(held)]
    return out


def dense_caption(scene: Scene, rng: np.random.Generator, width: int, height: int,
                  max_relations: int = 2) -> str:
    """Background, every group with count, each single object with size and place, a few
    clear relations between single objects."""
    sentences = [f"{scene.background.describe().capitalize()}"]
    groups: dict[tuple[str, str], list[ShapeObject]] = {}
    for o in scene.objects:
        groups.setdefault((o.color, o.shape), []).append(o)
    for (color, shape), members in groups.items():
        if len(members) == 1:
            o = members[0]
            verb = ("sits", "is", "appears")[int(rng.integers(3))]
            sentences.append(f"{article(size_word(o)).capitalize()} {size_word(o)} {color} {shape} {verb} {place_phrase(o)}")
        else:
            sentences.append(f"There are {noun_phrase(len(members), color, shape)}")
    relations = clear_relations(scene, width, height)
    if relations:
        picks = rng.choice(len(relations), size=min(max_relations, len(relations)), replace=False)
        for k in sorted(picks):
            a, rel, b = relations[k]
            sentences.append(f"The {scene.objects[a].name} is {rel} the {scene.objects[b].name}")
    return ". ".join(sentences) + "."


def captions(scene: Scene, rng: np.random.Generator, width: int, height: int) -> dict[str, str]:
    return {"short": short_caption(scene, rng), "dense": dense_caption(scene, rng, width, height)}
