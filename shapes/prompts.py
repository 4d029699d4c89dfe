"""GenEval-format prompt sets over the Shapes world, scenes that realise them, and a ground-truth
check of GenEval's rules.

Lines follow the official `evaluation_metadata.jsonl` exactly: keys in the order tag, include,
[exclude], prompt; include clauses {class, count, [color], [position: [relation, index]]};
counting prompts exclude {class, count: N+1}; "a photo of ..." phrasing with a/an and number
words (REFERENCE.md, GenEval protocol). Classes are the shape names.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .captions import CLEAR_RELATION, noun_phrase
from .geometry import RELATIONS, geneval_relations
from .palette import COLOR_NAMES, SHAPES
from .scene import Scene, ShapeObject, check_canvas, place_object, sample_background, size_range_px

# The official file's tag proportions, in its order (553 prompts).
TAG_COUNTS: dict[str, int] = {"single_object": 80, "two_object": 99, "counting": 80,
                              "colors": 94, "position": 100, "color_attr": 100}
COUNTING_NUMBERS = (2, 3, 4)   # the official counting prompts use two, three and four
DEFAULT_PROMPTS_PATH = Path(__file__).resolve().parents[1] / "configs" / "prompts" / "geneval_shapes.jsonl"


def _balanced(rng: np.random.Generator, combos: Sequence[Any], n: int) -> list[Any]:
    """n items cycling through shuffled copies of combos: every combo used before any repeats."""
    out: list[Any] = []
    while len(out) < n:
        out += [combos[i] for i in rng.permutation(len(combos))]
    return out[:n]


def _line(tag: str, include: list[dict], prompt: str, exclude: list[dict] | None = None) -> dict:
    line: dict[str, Any] = {"tag": tag, "include": include}
    if exclude is not None:
        line["exclude"] = exclude
    line["prompt"] = prompt
    return line


def geneval_prompts(seed: int = 0, shapes: Sequence[str] = SHAPES,
                    colors: Sequence[str] = COLOR_NAMES) -> list[dict]:
    """The 553-line GenEval-format prompt set (official tag proportions) drawn from `seed`."""
    rng = np.random.default_rng(seed)
    shapes, colors = list(shapes), list(colors)
    pairs = list(itertools.permutations(shapes, 2))
    lines = []
    for shape in _balanced(rng, shapes, TAG_COUNTS["single_object"]):
        lines.append(_line("single_object", [{"class": shape, "count": 1}], f"a photo of {noun_phrase(1, None, shape)}"))
    for a, b in _balanced(rng, pairs, TAG_COUNTS["two_object"]):
        lines.append(_line("two_object", [{"class": a, "count": 1}, {"class": b, "count": 1}],
                           f"a photo of {noun_phrase(1, None, a)} and {noun_phrase(1, None, b)}"))
    for shape, n in _balanced(rng, list(itertools.product(shapes, COUNTING_NUMBERS)), TAG_COUNTS["counting"]):
        lines.append(_line("counting", [{"class": shape, "count": n}], f"a photo of {noun_phrase(n, None, shape)}",
                           exclude=[{"class": shape, "count": n + 1}]))
    for shape, color in _balanced(rng, list(itertools.product(shapes, colors)), TAG_COUNTS["colors"]):
        lines.append(_line("colors", [{"class": shape, "count": 1, "color": color}],
                           f"a photo of {noun_phrase(1, color, shape)}"))
    for (obj, ref), rel in _balanced(rng, list(itertools.product(pairs, RELATIONS)), TAG_COUNTS["position"]):
        # As in the official file: include[0] is the reference, include[1] is "<rel> include[0]".
        lines.append(_line("position", [{"class": ref, "count": 1}, {"class": obj, "count": 1, "position": [rel, 0]}],
                           f"a photo of {noun_phrase(1, None, obj)} {rel} {noun_phrase(1, None, ref)}"))
    color_pairs = list(itertools.permutations(colors, 2))
    attr_combos = [(p, q) for p in pairs for q in color_pairs]
    for (a, b), (ca, cb) in _balanced(rng, attr_combos, TAG_COUNTS["color_attr"]):
        lines.append(_line("color_attr", [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                           f"a photo of {noun_phrase(1, ca, a)} and {noun_phrase(1, cb, b)}"))
    return lines


def dumps_prompts(lines: list[dict]) -> str:
    """The file's exact text: one json.dumps line each (official separators), newline-terminated."""
    return "".join(json.dumps(line) + "\n" for line in lines)


def write_prompts(lines: list[dict], path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(dumps_prompts(lines))


def load_prompts(path: str | Path = DEFAULT_PROMPTS_PATH) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- scenes for prompts
_HALVES = {"left of": (0.0, 0.0, 0.5, 1.0), "right of": (0.5, 0.0, 1.0, 1.0),
           "above": (0.0, 0.0, 1.0, 0.5), "below": (0.0, 0.5, 1.0, 1.0)}
_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def scene_for_prompt(meta: dict, rng: np.random.Generator, width: int = 64, height: int = 64, *,
                     distractors: int = 0, tries: int = 200, min_object_px: float | None = None) -> Scene:
    """A scene meeting a GenEval prompt's ground truth on a width x height canvas.

    Exactly `count` objects per include clause (so counting's exclude holds), the clause's colour
    or a random palette colour, position relations holding with margin (threshold 0.65 instead of
    GenEval's 0.5). `distractors` adds objects of classes the prompt does not mention.
    """
    check_canvas(width, height)
    clauses = meta["include"]
    total = sum(c["count"] for c in clauses) + distractors
    sides = size_range_px(width, height, total) if min_object_px is None else \
        size_range_px(width, height, total, min_object_px)
    regions: dict[int, tuple[float, float, float, float]] = {}
    for index, clause in enumerate(clauses):
        if "position" in clause:
            rel, ref = clause["position"]
            regions[index], regions[ref] = _HALVES[rel], _HALVES[_OPPOSITE[rel]]
    mentioned = {c["class"] for c in clauses}
    spare = [s for s in SHAPES if s not in mentioned]
    for _ in range(tries):
        groups: list[list[ShapeObject]] = []
        placed: list[ShapeObject] = []
        for index, clause in enumerate(clauses):
            group = []
            for _k in range(clause["count"]):
                color = clause.get("color") or str(rng.choice(COLOR_NAMES))
                obj = place_object(rng, clause["class"], color, width, height, placed, side_px=sides,
                                   region=regions.get(index, (0.0, 0.0, 1.0, 1.0)), tries=50)
                if obj is None:
                    break
                group.append(obj)
                placed.append(obj)
            groups.append(group)
        if sum(len(g) for g in groups) < total - distractors or not _positions_hold(clauses, groups, width, height):
            continue
        for _k in range(distractors if spare else 0):
            obj = place_object(rng, str(rng.choice(spare)), str(rng.choice(COLOR_NAMES)), width, height, placed,
                               side_px=sides, tries=50)
            if obj is not None:
                placed.append(obj)
        return Scene(tuple(placed), sample_background(rng))
    raise RuntimeError(f"could not lay out a scene for {meta['prompt']!r} on {width}x{height} in {tries} tries")


def _positions_hold(clauses: list[dict], groups: list[list[ShapeObject]], width: int, height: int) -> bool:
    for clause, group in zip(clauses, groups):
        if "position" in clause:
            rel, ref = clause["position"]
            for a in group:
                for b in groups[ref]:
                    if rel not in geneval_relations(a.box_px(width, height), b.box_px(width, height), CLEAR_RELATION):
                        return False
    return True
