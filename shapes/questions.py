"""Understanding questions about Shapes scenes, true by construction (the world's ground truth).

Each scene gives a caption item, one count, one colour and one position question when the scene
allows them; `evaluation/understanding.py` scores a model's answers to them by exact match, and
training data for image understanding is written from the same generator.
"""
from __future__ import annotations

import numpy as np

from shapes.captions import NUMBER_WORDS, clear_relations, noun_phrase, plural
from shapes.render import render
from shapes.scene import Scene, sample_scene

KINDS = ("caption", "count", "color", "position")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def scene_groups(scene: Scene) -> set[tuple[int, str | None, str]]:
    return {(n, color, shape) for (color, shape), n in scene.counts().items()}


def scene_items(scene: Scene, rng: np.random.Generator, width: int, height: int) -> list[dict]:
    """Questions about one scene: a caption item, one count, one colour and one position question
    when the scene allows them."""
    items = [{"kind": "caption", "question": "", "answer": "; ".join(sorted(noun_phrase(n, c, s)
                                                                       for n, c, s in scene_groups(scene)))}]
    counts = scene.counts()
    (color, shape), n = list(counts.items())[int(rng.integers(len(counts)))]
    items.append({"kind": "count", "question": f"How many {color} {plural(shape)} are there?",
                  "answer": NUMBER_WORDS[n]})
    by_shape: dict[str, list[str]] = {}
    for o in scene.objects:
        by_shape.setdefault(o.shape, []).append(o.color)
    unique = sorted(s for s, cols in by_shape.items() if len(cols) == 1)
    if unique:
        s = unique[int(rng.integers(len(unique)))]
        items.append({"kind": "color", "question": f"What color is the {s}?", "answer": by_shape[s][0]})
    rels = [(a, r, b) for a, r, b in clear_relations(scene, width, height) if r in OPPOSITE]
    if rels:
        a, rel, b = rels[int(rng.integers(len(rels)))]
        yes = bool(rng.integers(2))
        asked = rel if yes else OPPOSITE[rel]
        items.append({"kind": "position", "answer": "yes" if yes else "no",
                      "question": f"Is the {scene.objects[a].name} {asked} the {scene.objects[b].name}?"})
    return items


def understanding_items(num_scenes: int = 32, seed: int = 0, width: int = 64, height: int = 64,
                        **scene_kwargs) -> list[dict]:
    """Evaluation items with rendered images (H×W×3 uint8) and the scene's JSON."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(num_scenes):
        scene = sample_scene(rng, width, height, **scene_kwargs)
        image = render(scene, width, height).image
        for it in scene_items(scene, rng, width, height):
            out.append({**it, "scene_index": k, "image": image, "scene": scene.to_dict()})
    return out
