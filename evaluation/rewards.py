"""Rewards for RL (modules/rl, GRPOModule), built by class path:
`reward(images: list[H×W×3 uint8], metadata: list[dict]) -> {"reward": (N,) float, ...}`.

A reward returns NaN for a prompt it does not apply to (GenEval rewards need `include` clauses,
DPG rewards `questions`); extra keys (e.g. "correct", strict GenEval correctness) are logged beside.
Neural parts come through the evaluators' backend interfaces (evaluation/detectors.py detectors and
colour classifiers, evaluation/dpg.py VQA backends), so a real detector or VQA model plugs in by
class path; the Shapes oracles are the defaults.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from evaluation.detectors import load_color_classifier, load_detector
from evaluation.dpg import make_vqa, prompts_from_items, score_answers
from evaluation.geneval_rules import POSITION_THRESHOLD, check_clauses, filter_detections, relative_position


def geneval_partial_credit(image: np.ndarray, detected: dict[str, list[dict]], metadata: dict,
                           color_classifier: Any, margin: float = POSITION_THRESHOLD) -> tuple[float, list[float]]:
    """Partial credit in [0, 1]: Flow-GRPO's GenEval reward (reward-server gen_eval.py, REFERENCE.md
    "RL for AR image generators") with its quirks bounded. Per include clause (n = its count, found
    = the class's kept detections):
      count term   1 − |n − found|/n clipped to [0, 1] (Flow-GRPO: unbounded below);
      count wrong  one 0.0 for colour and position together (as Flow-GRPO);
      colour       1 − |n − found_in_colour|/n on the top-n detections;
      position     1.0 if every (object, target) pair holds the relation, else 0.0 (Flow-GRPO appends
                   an extra 1.0 after a failure); a missing/failed target group scores 0.0;
    per exclude clause (Flow-GRPO ignores them): 1.0 if fewer than its count were found, else 0.0.
    Reward = mean of the terms. Returns (reward, terms)."""
    terms: list[float] = []
    groups: list[list[dict] | None] = []
    for req in metadata.get("include", []):
        n, found = int(req["count"]), detected.get(req["class"], [])
        terms.append(float(np.clip(1.0 - abs(n - len(found)) / n, 0.0, 1.0)))
        matched = len(found) == n
        if not matched:
            if "color" in req or "position" in req:
                terms.append(0.0)
        else:
            if "color" in req:
                colors = list(color_classifier.classify(image, found[:n], req["class"]))
                hits = colors.count(req["color"])
                terms.append(1.0 - abs(n - hits) / n)
                matched = hits == n
            if "position" in req and matched:
                relation, target = req["position"]
                others = groups[target]
                ok = others is not None and all(relation in relative_position(a["bbox"], b["bbox"], margin)
                                                for a in found[:n] for b in others)
                terms.append(1.0 if ok else 0.0)
                matched = ok
        groups.append(found[:n] if matched else None)
    for req in metadata.get("exclude", []):
        terms.append(1.0 if len(detected.get(req["class"], [])) < int(req["count"]) else 0.0)
    return (float(np.mean(terms)) if terms else 0.0), terms


class ShapesGenEvalReward:
    """GenEval partial credit (`geneval_partial_credit`) on a detector backend ("oracle": the Shapes
    world's oracle detector), strict GenEval correctness (official rules) as "correct"."""

    def __init__(self, detector: Any = "oracle", color_classifier: Any = "detection", strict: bool = False,
                 **rules: float):
        self.detector, self.colors = load_detector(detector), load_color_classifier(color_classifier)
        self.margin = rules.pop("margin", POSITION_THRESHOLD)
        self.rules, self.strict = rules, strict

    def score(self, image: np.ndarray, metadata: dict) -> dict:
        image = np.asarray(image)
        detected = filter_detections(self.detector.detect(image), metadata["tag"], **self.rules)
        correct, _ = check_clauses(image, detected, metadata, self.colors, self.margin)
        partial, terms = geneval_partial_credit(image, detected, metadata, self.colors, self.margin)
        return {"reward": float(correct) if self.strict else partial, "correct": float(correct), "terms": terms}

    def __call__(self, images: Sequence[np.ndarray], metadata: Sequence[dict]) -> dict[str, np.ndarray]:
        out = [self.score(im, m) if "include" in m else {"reward": np.nan, "correct": np.nan}
               for im, m in zip(images, metadata)]
        return {"reward": np.array([o["reward"] for o in out]), "correct": np.array([o["correct"] for o in out])}


class DPGReward:
    """The fraction of the prompt's DPG questions the VQA backend answers "yes", after DPG's
    dependency rule (a child of a failed parent scores 0; evaluation/dpg.py). Metadata: a DPG item
    {"item_id", "prompt", "questions"} (shapes.dpg.dpg_items)."""

    def __init__(self, vqa: str = "oracle", vqa_args: dict | None = None):
        self.vqa = make_vqa(vqa, vqa_args)

    def score(self, image: np.ndarray, metadata: dict) -> float:
        prompt = next(iter(prompts_from_items([{"item_id": metadata.get("item_id", "x"), **metadata}]).values()))
        answers = {q.proposition_id: self.vqa.answer(np.asarray(image), q.question) for q in prompt.questions}
        return score_answers(prompt, answers)["score"]

    def __call__(self, images: Sequence[np.ndarray], metadata: Sequence[dict]) -> dict[str, np.ndarray]:
        return {"reward": np.array([self.score(im, m) if "questions" in m else np.nan
                                    for im, m in zip(images, metadata)])}


class CLIPReward:
    """CLIP image-text similarity (open_clip, from a local checkpoint; nothing is downloaded):
    reward = cosine(image, prompt) · scale, the SimpleAR-style reward (REFERENCE.md table)."""

    def __init__(self, weights_path: str, model_name: str = "ViT-B-32", device: str = "cpu", scale: float = 1.0):
        if not weights_path or not os.path.isfile(weights_path):
            raise FileNotFoundError(f"CLIPReward: open_clip weights not found at {weights_path!r}; put a local "
                                    f"{model_name} checkpoint there and pass it as init_args.weights_path")
        import open_clip
        import torch

        model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=weights_path,
                                                                          device=device)
        self.model, self.tokenizer = model.eval(), open_clip.get_tokenizer(model_name)
        self.device, self.scale, self._torch = device, scale, torch

    def __call__(self, images: Sequence[np.ndarray], metadata: Sequence[dict]) -> dict[str, np.ndarray]:
        from PIL import Image

        torch = self._torch
        with torch.no_grad():
            x = torch.stack([self.preprocess(Image.fromarray(np.asarray(im, np.uint8))) for im in images])
            f_img = torch.nn.functional.normalize(self.model.encode_image(x.to(self.device)).float(), dim=-1)
            t = self.tokenizer([m["prompt"] for m in metadata]).to(self.device)
            f_txt = torch.nn.functional.normalize(self.model.encode_text(t).float(), dim=-1)
        return {"reward": (f_img * f_txt).sum(-1).cpu().numpy() * self.scale}


class ColorFractionReward:
    """The fraction of pixels of one colour (within `tolerance` of `rgb`, max-channel distance):
    the sanity reward GRPO maintainers recommend before a real one (a policy must raise it fast).
    `soft`: mean of max(0, 1 − distance/tolerance) instead of the hard fraction (denser signal)."""

    def __init__(self, rgb: Sequence[int] = (220, 30, 35), tolerance: float = 96.0, soft: bool = False):
        self.rgb, self.tolerance, self.soft = np.asarray(rgb, np.float64), float(tolerance), soft

    def __call__(self, images: Sequence[np.ndarray], metadata: Sequence[dict]) -> dict[str, np.ndarray]:
        out = []
        for im in images:
            d = np.abs(np.asarray(im, np.float64)[..., :3] - self.rgb).max(-1)
            out.append(np.clip(1.0 - d / self.tolerance, 0, 1).mean() if self.soft else (d <= self.tolerance).mean())
        return {"reward": np.array(out, dtype=np.float64)}
