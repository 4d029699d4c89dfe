"""Understanding on Shapes: image-to-text evaluation with exact ground truth and exact-match scoring.

Items are read off procedural scenes (shapes/questions.py), so every answer is true by construction:
  caption   no question; the caption's objects, parsed as (count, colour, shape) mentions, must
            equal the scene's groups exactly (caption attributes)
  count     "How many red circles are there?"                 -> "three"
  color     "What color is the star?" (a shape unique in the scene) -> "blue"
  position  "Is the red circle left of the blue star?"        -> "yes" / "no" (GenEval's rule,
            asked only for pairs whose relation holds clearly, captions.clear_relations; a "no"
            question uses the opposite relation)
An answer is normalised (lower case, punctuation stripped, digits -> number words, leading
article dropped) and scored by exact match; per kind = mean, overall = unweighted mean of kinds.

The evaluator never sees a model: `score_understanding(items, answer_fn)` takes a function
(images uint8 list, questions list) -> answer strings; for the AR model that is
`ARGenerator.answer` (modules/ar/generator.py), passed in by the suite's caller.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from evaluation.shapes_vqa import parse_mention
from shapes.captions import NUMBER_WORDS
from shapes.questions import KINDS, scene_groups, understanding_items  # noqa: F401  (re-exported)
from shapes.scene import Scene
AnswerFn = Callable[[list[np.ndarray], list[str]], list[str]]


def normalize(answer: str) -> str:
    words = re.findall(r"[a-z]+(?:-[a-z]+)?|\d+", answer.lower())
    words = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w for w in words]
    if len(words) > 1 and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words)


def caption_groups(text: str) -> set[tuple[int, str | None, str]]:
    """(count, colour, shape) of every object mention in a caption ('two red circles and a star')."""
    out = set()
    for part in re.split(r"[,;.]|\band\b|\bwith\b|\bon\b", text.lower()):
        m = parse_mention(part)
        if m is not None:
            count = m["count"] if m["count"] is not None else 1
            out.add((count, m["color"], m["shape"]))
    return out


def is_correct(item: dict, prediction: str) -> bool:
    if item["kind"] == "caption":
        return caption_groups(prediction) == scene_groups(Scene.from_dict(item["scene"]))
    return normalize(prediction) == normalize(item["answer"])


def score_understanding(items: Sequence[dict], answer_fn: AnswerFn, batch_size: int = 16) -> dict:
    """{"overall", "<kind>": accuracy, "counts": {kind: (correct, total)}, "records": [...]}."""
    records = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        answers = answer_fn([it["image"] for it in chunk], [it["question"] for it in chunk])
        if len(answers) != len(chunk):
            raise ValueError(f"answer_fn returned {len(answers)} answers for {len(chunk)} questions")
        for it, a in zip(chunk, answers):
            records.append({"kind": it["kind"], "question": it["question"], "answer": it["answer"],
                            "prediction": a, "correct": is_correct(it, a),
                            "scene_index": it.get("scene_index")})
    counts = {k: (sum(r["correct"] for r in records if r["kind"] == k), sum(r["kind"] == k for r in records))
              for k in KINDS}
    scores = {k: c / n for k, (c, n) in counts.items() if n}
    return {"overall": float(np.mean(list(scores.values()))) if scores else 0.0, **scores,
            "counts": counts, "records": records}
