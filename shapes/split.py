"""The world's train / held-out split: combinations no training caption or scene ever shows.

GenEval-style prompts are compositions of a small vocabulary (6 shapes, 10 colours, counts 2-4,
4 relations), so a random prompt set of another seed shares most of its texts with the evaluation
set. To measure composition rather than recall, the world holds out a fixed set of combinations
from every training scene (and so from every caption, which only states what a scene shows), in
the manner of CLEVR-CoGenT (Johnson et al. 2017, "CLEVR", §5: colour-shape combinations withheld
from training, evaluated on a held-out condition). Three kinds, each a fixed rule over the world's
vocabulary (shape and colour indices in shapes.palette.SHAPES / COLOR_NAMES order):

1. Shape pairs (two_object, position, color_attr): the three pairs {SHAPES[i], SHAPES[i + 3]},
   i = 0..2, i.e. {circle, diamond}, {square, star}, {triangle, cross}: 3 of the 15 unordered
   pairs (a fifth), each shape in exactly one. No training scene contains both shapes of a held-out
   pair, so no caption relates them and no layout of the two is ever seen (every relation of such
   a pair, 24 of the 120 (shape, shape, relation) combinations, is held out with it).
2. Colour-shape items (colors, color_attr): (COLOR_NAMES[c], SHAPES[s]) with (c + 2 s) mod 5 == 0:
   12 of the 60 items (a fifth), two colours per shape. No training scene has an object of a
   held-out item (e.g. no red circle anywhere).
3. Shape counts (counting): (circle, 3), (triangle, 4), (star, 2), (cross, 4): 4 of the 18
   (shape, count) pairs with GenEval's counts 2-4 (about a fifth), every count at least once. No
   training scene has exactly that many objects of the shape in all, nor a (colour, shape) group of
   that size (a caption would say "three red circles"). Count 1 is never held out: single objects
   and coloured single objects must be learnable.

Single-object prompts ("a photo of a star") cannot be held out without removing a class from the
world, so they are always "seen". A GenEval-format prompt line is "unseen" if it states any
held-out combination (`held_out_reasons(meta)`, `split_of(meta)`); a scene is a training scene if
it shows none (`scene_held_out(scene)`). commands/world.py applies the split to every training
writer (random scenes, prompt-mix scenes, edits, subject pairs, videos); evaluation renders
(kind geneval / dpg) are not split.
"""
from __future__ import annotations

from typing import Any, Callable, Literal, TypeVar

import numpy as np

from .palette import COLOR_NAMES, SHAPES
from .prompts import scene_for_prompt
from .scene import Scene, sample_scene

HELD_OUT_SHAPE_PAIRS: frozenset[frozenset[str]] = frozenset(
    frozenset((SHAPES[i], SHAPES[i + 3])) for i in range(3))
HELD_OUT_ITEMS: frozenset[tuple[str, str]] = frozenset(
    (color, shape) for s, shape in enumerate(SHAPES) for c, color in enumerate(COLOR_NAMES) if (c + 2 * s) % 5 == 0)
HELD_OUT_COUNTS: frozenset[tuple[str, int]] = frozenset({("circle", 3), ("triangle", 4), ("star", 2), ("cross", 4)})

Split = Literal["seen", "unseen"]
T = TypeVar("T")


def is_held_out_pair(shape_a: str, shape_b: str) -> bool:
    return frozenset((shape_a, shape_b)) in HELD_OUT_SHAPE_PAIRS


def is_held_out_item(color: str, shape: str) -> bool:
    return (color, shape) in HELD_OUT_ITEMS


def is_held_out_count(shape: str, count: int) -> bool:
    return (shape, int(count)) in HELD_OUT_COUNTS


def held_out_reasons(meta: dict) -> list[str]:
    """The held-out combinations a GenEval-format prompt line states (empty: a seen prompt)."""
    reasons = []
    clauses = meta.get("include", [])
    for clause in clauses:
        shape, count, color = clause["class"], int(clause["count"]), clause.get("color")
        if count >= 2 and is_held_out_count(shape, count):
            reasons.append(f"count ({shape}, {count})")
        if color is not None and is_held_out_item(color, shape):
            reasons.append(f"item ({color}, {shape})")
    shapes = sorted({c["class"] for c in clauses})
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            if is_held_out_pair(a, b):
                reasons.append(f"pair ({a}, {b})")
    return reasons


def split_of(meta: dict) -> Split:
    """'unseen' if the prompt line states a held-out combination, else 'seen' (by the rule; the
    suite prefers the training captions' exact texts when it has them)."""
    return "unseen" if held_out_reasons(meta) else "seen"


def scene_held_out(scene: Scene) -> list[str]:
    """The held-out combinations a scene shows (empty: the scene may be used for training)."""
    reasons = [f"item ({o.color}, {o.shape})" for o in scene.objects if is_held_out_item(o.color, o.shape)]
    per_shape: dict[str, int] = {}
    for (_color, shape), n in scene.counts().items():
        per_shape[shape] = per_shape.get(shape, 0) + n
        if n >= 2 and is_held_out_count(shape, n):
            reasons.append(f"count ({shape}, {n})")
    reasons += [f"count ({shape}, {n})" for shape, n in per_shape.items() if n >= 2 and is_held_out_count(shape, n)]
    shapes = sorted(per_shape)
    for i, a in enumerate(shapes):
        for b in shapes[i + 1:]:
            if is_held_out_pair(a, b):
                reasons.append(f"pair ({a}, {b})")
    return reasons


def group_allowed(group: tuple[str, str], chosen: list[tuple[str, str]]) -> bool:
    """sample_scene's `allowed_group`: a (colour, shape) group that is no held-out item and forms
    no held-out pair with the shapes chosen so far."""
    color, shape = group
    return not is_held_out_item(color, shape) and not any(is_held_out_pair(shape, s) for _c, s in chosen)


def resample(make: Callable[[], T], scenes_of: Callable[[T], list[Scene]], tries: int = 1000,
             what: str = "sample") -> T:
    """make() again (it draws on from the caller's rng, so the result stays deterministic) until no
    scene of the result shows a held-out combination."""
    for _ in range(tries):
        result = make()
        if not any(scene_held_out(s) for s in scenes_of(result)):
            return result
    raise RuntimeError(f"no {what} without a held-out combination (shapes/split.py) in {tries} tries: the "
                       f"chosen shapes/colours leave too little; widen --shapes/--colors or pass --holdout false")


def sample_training_scene(rng: np.random.Generator, width: int = 64, height: int = 64, *, tries: int = 1000,
                          **scene_kwargs: Any) -> Scene:
    """sample_scene(...) on the training side of the split: groups drawn among the allowed ones
    (so the number of groups keeps its distribution), redrawn while the counts hit a held-out one."""
    return resample(lambda: sample_scene(rng, width, height, allowed_group=group_allowed, **scene_kwargs),
                    lambda s: [s], tries, "random scene")


def training_scene_for_prompt(meta: dict, rng: np.random.Generator, width: int = 64, height: int = 64, *,
                              tries: int = 200, **layout: Any) -> Scene:
    """scene_for_prompt(...) for a seen prompt, with its free choices (colours of uncoloured
    clauses) redrawn until the scene shows no held-out combination."""
    reasons = held_out_reasons(meta)
    if reasons:
        raise ValueError(f"prompt {meta['prompt']!r} states held-out combinations ({', '.join(reasons)}); "
                         f"it cannot be a training prompt")
    return resample(lambda: scene_for_prompt(meta, rng, width, height, **layout), lambda s: [s], tries,
                    f"scene for {meta['prompt']!r}")


def split_counts(metas: list[dict]) -> dict[str, dict[str, int]]:
    """tag -> {"seen": n, "unseen": n} over prompt lines (by the rule), tags in first-appearance order."""
    out: dict[str, dict[str, int]] = {}
    for meta in metas:
        out.setdefault(meta["tag"], {"seen": 0, "unseen": 0})[split_of(meta)] += 1
    return out
