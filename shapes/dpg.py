"""DPG-Bench-style dense prompts with DSG question graphs over Shapes-world scenes.

Every question is built from the same facts as the prompt text, so the true answer is always
"yes" for the scene. Graph per prompt (REFERENCE.md, DPG-Bench protocol):
  global     "Is the background plain?"                      parents: none ("0")
  entity     "Is there a circle?"        (one per class)      parents: none
  attribute  "Is there a red circle?"    (one per colour group) parent: its class
  attribute  "Is the red circle large?"  (single objects)     parent: its colour group
  other      "Are there three red circles?" (groups of >1)    parent: its colour group
  relation   "Is the red circle left of the blue star?"      parents: both colour groups
A child of a failed parent scores 0 in DPG's scoring, so the graph never asks about the colour
of a class that is missing.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .captions import clear_relations, noun_phrase, place_phrase, plural, size_word
from .scene import Scene, sample_scene

# Official DPG-Bench CSV columns (dpg_bench/dpg_bench.csv), in order.
DPG_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language")

_BACKGROUND_QUESTIONS = {"plain": "Is the background plain?", "gradient": "Does the background have a gradient?",
                         "texture": "Is the background textured?"}


class _Graph:
    """Collects questions with 1-based proposition ids."""

    def __init__(self) -> None:
        self.questions: list[dict[str, Any]] = []

    def add(self, detailed: str, args: str, question: str, parents: Sequence[int] = ()) -> int:
        broad = detailed.split(" - ")[0]
        self.questions.append({
            "proposition_id": len(self.questions) + 1,
            "dependency": ",".join(str(p) for p in parents) or "0",
            "category_broad": broad,
            "category_detailed": detailed,
            "tuple": f"{detailed if ' - ' in detailed else broad + ' -'} ({args})",
            "question": question,
            "answer": "yes",
        })
        return len(self.questions)


def dpg_item(scene: Scene, rng: np.random.Generator, width: int, height: int,
             max_relations: int = 3) -> dict[str, Any]:
    """{"prompt": dense text, "questions": [...]} for one scene (all answers "yes")."""
    graph = _Graph()
    background = scene.background
    sentences = [background.describe().capitalize()]
    graph.add("global", f"{background.kind} background", _BACKGROUND_QUESTIONS[background.kind])

    class_ids: dict[str, int] = {}
    group_ids: dict[tuple[str, str], int] = {}
    for (color, shape), count in scene.counts().items():
        if shape not in class_ids:
            class_ids[shape] = graph.add("entity - whole", shape, f"Is there {noun_phrase(1, None, shape)}?")
        if count == 1:
            group_ids[(color, shape)] = graph.add("attribute - color", f"{shape}, {color}",
                                                  f"Is there {noun_phrase(1, color, shape)}?", [class_ids[shape]])
            obj = next(o for o in scene.objects if (o.color, o.shape) == (color, shape))
            size = size_word(obj)
            graph.add("attribute - size", f"{color} {shape}, {size}", f"Is the {color} {shape} {size}?",
                      [group_ids[(color, shape)]])
            sentences.append(f"{noun_phrase(1, size + ' ' + color, shape).capitalize()} is {place_phrase(obj)}")
        else:
            group_ids[(color, shape)] = graph.add("attribute - color", f"{plural(shape)}, {color}",
                                                  f"Are there {color} {plural(shape)}?", [class_ids[shape]])
            graph.add("other - count", f"{color} {shape}, =={count}",
                      f"Are there {noun_phrase(count, color, shape)}?", [group_ids[(color, shape)]])
            sentences.append(f"There are {noun_phrase(count, color, shape)}")

    relations = clear_relations(scene, width, height)
    picks = rng.choice(len(relations), size=min(max_relations, len(relations)), replace=False) if relations else []
    for k in sorted(picks):
        a, rel, b = relations[k]
        oa, ob = scene.objects[a], scene.objects[b]
        graph.add("relation - spatial", f"{oa.name}, {ob.name}, {rel}", f"Is the {oa.name} {rel} the {ob.name}?",
                  [group_ids[(oa.color, oa.shape)], group_ids[(ob.color, ob.shape)]])
        sentences.append(f"The {oa.name} is {rel} the {ob.name}")
    return {"prompt": ". ".join(sentences) + ".", "questions": graph.questions}


def dpg_items(num: int, seed: int = 0, width: int = 64, height: int = 64, **scene_kwargs: Any) -> list[dict]:
    """num dense-prompt items {item_id, prompt, questions, scene}; item i uses rng([seed, i])."""
    scene_kwargs.setdefault("max_groups", 4)
    items = []
    for i in range(num):
        rng = np.random.default_rng([seed, i])
        scene = sample_scene(rng, width, height, **scene_kwargs)
        items.append({"item_id": f"shapes_{i:05d}", **dpg_item(scene, rng, width, height), "scene": scene.to_dict()})
    return items


def validate_graph(questions: list[dict]) -> None:
    """Raise ValueError unless ids are 1..n in order and every parent is an earlier id (or 0)."""
    for index, q in enumerate(questions, start=1):
        if q["proposition_id"] != index:
            raise ValueError(f"proposition_id {q['proposition_id']} at position {index}")
        parents = [int(p) for p in q["dependency"].split(",")]
        if parents != [0] and not all(0 < p < index for p in parents):
            raise ValueError(f"question {index} depends on {q['dependency']}: parents must be earlier ids")


def write_dpg_csv(items: Sequence[dict], path: str | Path) -> None:
    """Write items in DPG-Bench's CSV layout. As in the official file, category_detailed holds
    only the part after the broad category ("whole", "color"), and tuple the full
    "entity - whole (circle)". Note: the official scorer skips the first data row (`if i == 0:
    continue`), i.e. the first question of the first item is never asked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(DPG_COLUMNS)
        for item in items:
            scene = Scene.from_dict(item["scene"]) if "scene" in item else None
            keywords = ", ".join(sorted({w for o in scene.objects for w in (o.color, o.shape)})) if scene else ""
            for q in item["questions"]:
                writer.writerow([item["item_id"], item["prompt"], keywords, q["proposition_id"], q["dependency"],
                                 q["category_broad"], q["category_detailed"].split(" - ")[-1], q["tuple"],
                                 q["question"]])


def read_dpg_csv(path: str | Path) -> dict[str, dict]:
    """item_id -> {"prompt", "questions"} from a DPG-format CSV (ours or the official one)."""
    out: dict[str, dict] = {}
    with open(path, newline="") as stream:
        for row in csv.DictReader(stream):
            item = out.setdefault(row["item_id"], {"prompt": row["text"], "questions": []})
            item["questions"].append({"proposition_id": int(row["proposition_id"]), "dependency": row["dependency"],
                                      "category_broad": row["category_broad"], "tuple": row["tuple"],
                                      "question": row["question_natural_language"]})
    return out
