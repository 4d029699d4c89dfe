"""GenEval's per-image rules, exactly as the official code applies them (djghosh13/geneval
evaluation/evaluate_images.py; REFERENCE.md "GenEval protocol (official)"), on detections from any
backend with `detect(image)` and colours from any backend with `classify(image, dets, class)`.

`evaluate_image` is the scorer's core and the RL reward's; `geneval_reward` adds the partial credit
of REFERENCE.md "Prefix-tuning GRPO". Folder layout, results files and summary: evaluation/geneval.py.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence, Sized

import numpy as np

from shapes.geometry import geneval_relations

from evaluation.clip_color import GENEVAL_COLORS
from evaluation.detectors import load_color_classifier, load_detector

# GenEval evaluate_images.py __main__ defaults (--options threshold, counting_threshold, ...).
THRESHOLD = 0.3
COUNTING_THRESHOLD = 0.9
MAX_OBJECTS = 16
POSITION_THRESHOLD = 0.1
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


# ----------------------------------------------------------------------------- rules
def filter_detections(detections: Iterable[dict], tag: str, threshold: float = THRESHOLD,
                      counting_threshold: float = COUNTING_THRESHOLD,
                      max_objects: int = MAX_OBJECTS) -> dict[str, list[dict]]:
    """class -> its detections, best first. GenEval evaluate_image: per class, order the raw
    detections by `np.argsort(scores)[::-1]`, keep score > threshold (0.9 for the counting tag), at
    most max_objects, no NMS (max_overlap 1.0 disables it).

    Tie order (it decides colour and position verdicts when two detections of one class score
    the same, as the oracle's often do): numpy's default argsort is an introsort that
    insertion-sorts runs of up to 16 elements, i.e. it is stable on the <= 16 raw detections of a
    class, so after the reversal the *later*-listed of two tied detections comes first. This
    function applies that rule at every length (beyond 16, numpy's partitioning makes the
    official order of ties depend on the numpy build; "later first" is fixed here)."""
    limit = counting_threshold if tag == "counting" else threshold
    by_class: dict[str, list[dict]] = {}
    for det in detections:
        by_class.setdefault(det["class"], []).append(det)
    kept: dict[str, list[dict]] = {}
    for name, dets in by_class.items():
        # descending by (score, position in the detector's list): argsort(scores)[::-1] with ties reversed
        order = sorted(range(len(dets)), key=lambda i: (float(dets[i]["score"]), i), reverse=True)
        best = [dets[i] for i in order if float(dets[i]["score"]) > limit][:max_objects]
        if best:
            kept[name] = best
    return kept


def relative_position(box_a: Sequence[float], box_b: Sequence[float],
                      margin: float = POSITION_THRESHOLD) -> set[str]:
    """Relations of A to B: GenEval's relative_position (offset shrunk by margin·(dim_a + dim_b),
    unit-offset component beyond 0.5; y points down). The one implementation lives with the
    world's geometry, which also uses it to place objects."""
    return geneval_relations(box_a, box_b, threshold=0.5, margin=margin)


def check_clauses(image: np.ndarray, detected: dict[str, list[dict]], metadata: dict,
                  color_classifier: Any, margin: float = POSITION_THRESHOLD) -> tuple[bool, str]:
    """GenEval evaluate(): include clauses AND-ed, exclude clauses OR-ed; colour and position are
    judged on the top-`count` detections of the clause's class only."""
    correct, reasons, matched_groups = True, [], []
    for req in metadata.get("include", []):
        name, count = req["class"], req["count"]
        found = detected.get(name, [])[:count]
        matched = True
        if len(found) < count:
            correct = matched = False
            reasons.append(f"expected {name}>={count}, found {len(found)}")
        else:
            if "color" in req:
                colors = list(color_classifier.classify(image, found, name))
                if colors.count(req["color"]) < count:
                    correct = matched = False
                    tally = ", ".join(f"{colors.count(c)} {c}" for c in GENEVAL_COLORS if c in colors)
                    reasons.append(f"expected {req['color']} {name}>={count}, found "
                                   f"{colors.count(req['color'])} {req['color']}; and {tally}")
            if "position" in req and matched:
                relation, target = req["position"]
                if matched_groups[target] is None:
                    correct = matched = False
                    reasons.append(f"no target for {name} to be {relation}")
                else:
                    for obj in found:
                        for other in matched_groups[target]:
                            true_relations = relative_position(obj["bbox"], other["bbox"], margin)
                            if relation not in true_relations:
                                correct = matched = False
                                reasons.append(f"expected {name} {relation} target, found "
                                               f"{' and '.join(true_relations)} target")
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        found = detected.get(req["class"], [])
        if len(found) >= req["count"]:
            correct = False
            reasons.append(f"expected {req['class']}<{req['count']}, found {len(found)}")
    return correct, "\n".join(reasons)


def cluttered(detected: Mapping[str, Sized], metadata: dict) -> bool:
    """True when the detector finds an object the prompt does not ask for (the clutter rate's
    per-image verdict, issue 13's drift measure; not a GenEval rule): a kept detection of a class
    no include clause names, or more kept detections of a class than its include clauses' counts
    add up to (two clauses of one class, "a red cube and a blue cube", ask for 2). `detected`:
    class -> kept detections (`filter_detections`, the tag's threshold, or `details_of`'s lists),
    so clutter is judged on the detections GenEval judges; a missing object is not clutter."""
    wanted: dict[str, int] = {}
    for req in metadata.get("include", []):
        wanted[req["class"]] = wanted.get(req["class"], 0) + int(req["count"])
    return any(len(dets) > wanted.get(name, 0) for name, dets in detected.items())


def details_of(detected: dict[str, list[dict]]) -> dict[str, list[list[float]]]:
    """GenEval's `details`: class -> [[x0, y0, x1, y1, score], ...] of the kept detections."""
    return {name: [[float(v) for v in d["bbox"][:4]] + [float(d["score"])] for d in dets]
            for name, dets in detected.items()}


def evaluate_image(image: np.ndarray, metadata: dict, detector: Any = None, color_classifier: Any = None,
                   **rules: float) -> tuple[bool, str, dict]:
    """(correct, reason, details) for one image; rules: threshold, counting_threshold, max_objects, margin."""
    detector, color_classifier = load_detector(detector), load_color_classifier(color_classifier)
    image = np.asarray(image)
    margin = rules.pop("margin", POSITION_THRESHOLD)
    detected = filter_detections(detector.detect(image), metadata["tag"], **rules)
    correct, reason = check_clauses(image, detected, metadata, color_classifier, margin)
    return correct, reason, details_of(detected)


def geneval_reward(image: np.ndarray, metadata: dict, detector: Any = None, color_classifier: Any = None,
                   **rules: float) -> dict:
    """Strict GenEval correctness plus partial credit in [0, 1] for RL (REFERENCE.md, Prefix-tuning
    GRPO rewards): mean of, per include clause, 1 - |count - n_found| / count (n_found: kept
    detections of the class, floored at 0), the share of its top-`count` objects in the right
    colour, and the share of (object, target) pairs in the right relation."""
    detector, color_classifier = load_detector(detector), load_color_classifier(color_classifier)
    image = np.asarray(image)
    margin = rules.pop("margin", POSITION_THRESHOLD)
    detected = filter_detections(detector.detect(image), metadata["tag"], **rules)
    correct, reason = check_clauses(image, detected, metadata, color_classifier, margin)
    terms, chosen = [], []
    for req in metadata.get("include", []):
        found = detected.get(req["class"], [])
        count = req["count"]
        terms.append(max(0.0, 1.0 - abs(count - len(found)) / count))
        top = found[:count]
        chosen.append(top)
        if "color" in req:
            colors = list(color_classifier.classify(image, top, req["class"])) if top else []
            terms.append(colors.count(req["color"]) / count)
        if "position" in req:
            relation, target = req["position"]
            pairs = [(a, b) for a in top for b in chosen[target]]
            hits = sum(relation in relative_position(a["bbox"], b["bbox"], margin) for a, b in pairs)
            terms.append(hits / max(count * max(len(chosen[target]), 1), 1))
    reward = float(np.mean(terms)) if terms else float(correct)
    return {"reward": 1.0 if correct else reward, "correct": correct, "reason": reason, "terms": terms}
