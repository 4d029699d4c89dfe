"""Judges for the EditCanvas-style benchmark: the Shapes oracle judge and a VLM-judge adapter.

Both answer the same two calls (0-10 scales, REFERENCE.md "GEdit-style edit scoring"):
  score_edit(source, result, sample)        -> {"sc", "pq", "parts"}
  score_subject(references, result, sample) -> {"pf", "consistency", "parts"}
SC and PQ follow VIEScore as GEdit-Bench uses it (stepfun-ai/Step1X-Edit, GEdit-Bench): each is
the *minimum* of two sub-scores, SC = min(editing success, over-editing), PQ = min(naturalness,
artifacts). Subject-driven samples get OmniContext's prompt following and subject consistency.

Oracle judge, from detections only (OracleDetector on source and result):
- success: each object the edit adds must be detected (class + colour) in the 3x3 cell the target
  puts it in, each object it takes away must be gone from its old place, and a new background
  must match the target's kind and tone; success = fraction of these requirements met;
- over-editing: source detections the edit does not touch must reappear in the result (same
  class and colour, soft box-IoU credit), extra result objects count against it, and the
  background must be unchanged unless it is the edit; preservation = credit / items;
- naturalness = mean detector confidence of the result's detections;
- artifacts = 1 - fraction of non-background pixels (palette-coloured or unexplained) that no
  detection (score >= 0.3) explains.
"""
from __future__ import annotations

import json
import re
from typing import Any, Protocol, Sequence

import numpy as np
from scipy import ndimage

from shapes.render import render
from shapes.scene import Scene, ShapeObject
from evaluation.backends import load_backend
from evaluation.shapes_vqa import background_kind, place_of


class EditJudge(Protocol):
    def score_edit(self, source: np.ndarray, result: np.ndarray, sample: dict) -> dict: ...
    def score_subject(self, references: Sequence[np.ndarray], result: np.ndarray, sample: dict) -> dict: ...


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def centre(box: Sequence[float]) -> tuple[float, float]:
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


class ShapesOracleJudge:
    """EditJudge for Shapes-world images; see the module docstring for the rules."""

    def __init__(self, detector=None, min_score: float = 0.3, tone_tolerance: float = 7.0):
        if detector is None:
            from shapes.oracle import OracleDetector
            detector = OracleDetector()
        self.detector, self.min_score, self.tone_tolerance = detector, min_score, tone_tolerance

    # ---------------------------------------------------------------- pieces
    def detect(self, image: np.ndarray) -> tuple[list[dict], list[dict]]:
        every = self.detector.detect(np.asarray(image))
        return [d for d in every if d["score"] >= self.min_score], every

    def _found_in_cell(self, dets: list[dict], obj: ShapeObject, w: int, h: int) -> dict | None:
        want = place_of(obj.cx, obj.cy)
        for d in dets:
            cx, cy = centre(d["bbox"])
            if (d["class"], d.get("color")) == (obj.shape, obj.color) and place_of(cx / w, cy / h) == want:
                return d
        return None

    def _gone(self, dets: list[dict], obj: ShapeObject, w: int, h: int) -> bool:
        x, y = obj.center_px(w, h)
        reach = 0.5 * obj.side_px(w, h)
        return not any((d["class"], d.get("color")) == (obj.shape, obj.color)
                       and np.hypot(centre(d["bbox"])[0] - x, centre(d["bbox"])[1] - y) <= reach for d in dets)

    def background_signature(self, image: np.ndarray, covered: np.ndarray | list[dict]) -> tuple[str, np.ndarray]:
        """(plain/gradient/texture, mean colour of the pixels outside the dilated objects);
        `covered` is a boolean object mask or a list of detections."""
        if not isinstance(covered, np.ndarray):
            mask = np.zeros(image.shape[:2], bool)
            for d in covered:
                mask |= d["mask"]
            covered = mask
        free = ~ndimage.binary_dilation(covered, iterations=2)
        mean = image[free].mean(0) if free.any() else image.reshape(-1, 3).mean(0)
        kind = background_kind(image, [{"mask": covered}])
        return kind, mean.astype(np.float64)

    def _same_background(self, a: tuple[str, np.ndarray], b: tuple[str, np.ndarray]) -> float:
        kind = float(a[0] == b[0])
        tone = float(np.linalg.norm(a[1] - b[1]) <= self.tone_tolerance)
        return 0.5 * kind + 0.5 * tone

    def quality(self, image: np.ndarray, every: list[dict]) -> dict:
        """naturalness (mean confidence) and artifacts (unexplained non-background pixels), 0-10."""
        from shapes.oracle import OracleConfig, estimate_background, unmix

        cfg = getattr(self.detector, "config", None) or OracleConfig()   # the oracle's background model
        smooth = np.asarray(image, np.float32)
        background = estimate_background(smooth, cfg)
        _, alpha, residual = unmix(smooth, background)
        non_background = (alpha >= cfg.coverage_threshold) | (residual > cfg.max_residual)
        explained = np.zeros(image.shape[:2], bool)
        for d in every:
            if d["score"] >= self.min_score:
                explained |= d["mask"]
        explained = ndimage.binary_dilation(explained, iterations=1)
        unexplained = float((non_background & ~explained).sum() / max(non_background.sum(), 1))
        naturalness = float(np.mean([d["score"] for d in every])) if every else 1.0
        return {"naturalness": 10 * naturalness, "artifacts": 10 * (1 - unexplained),
                "unexplained_fraction": unexplained}

    # ---------------------------------------------------------------- editing
    def score_edit(self, source: np.ndarray, result: np.ndarray, sample: dict) -> dict:
        src_scene, tgt_scene = Scene.from_dict(sample["source"]), Scene.from_dict(sample["target"])
        h, w = np.asarray(result).shape[:2]
        added = [o for o in tgt_scene.objects if o not in src_scene.objects]
        removed = [o for o in src_scene.objects if o not in tgt_scene.objects]
        det_s, _ = self.detect(source)
        det_r, every_r = self.detect(result)
        # 1. editing success: requirements of the instruction, met or not
        met = [self._found_in_cell(det_r, o, w, h) is not None for o in added]
        met += [self._gone(det_r, o, w, h) for o in removed]
        bg_r = self.background_signature(np.asarray(result), det_r)
        bg_edit = tgt_scene.background != src_scene.background
        if bg_edit:
            target = render(tgt_scene, w, h)
            met.append(self._same_background(bg_r, self.background_signature(target.image, target.instance_map > 0)) == 1.0)
        success = float(np.mean(met)) if met else 1.0
        # 2. over-editing: untouched source detections preserved, no extra objects, background kept
        sh, sw = np.asarray(source).shape[:2]
        scale = np.array([w / sw, h / sh, w / sw, h / sh])
        touched = [d for d in det_s if any((d["class"], d.get("color")) == (o.shape, o.color)
                                          and box_iou(d["bbox"], o.box_px(sw, sh)) >= 0.3 for o in removed)]
        keep = [d for d in det_s if not any(d is t for t in touched)]
        used: set[int] = set()
        credit = []
        for d in keep:
            box = np.asarray(d["bbox"]) * scale
            best, best_iou = None, 0.0
            for k, r in enumerate(det_r):
                if k not in used and (r["class"], r.get("color")) == (d["class"], d.get("color")):
                    iou = box_iou(box, r["bbox"])
                    if iou > best_iou:
                        best, best_iou = k, iou
            if best is not None:
                used.add(best)
            credit.append(float(np.clip((best_iou - 0.3) / 0.5, 0.0, 1.0)))   # IoU >= 0.8: full credit
        for o in added:
            found = self._found_in_cell([r for k, r in enumerate(det_r) if k not in used], o, w, h)
            if found is not None:
                used.update(k for k, r in enumerate(det_r) if r is found)
        extra = len(det_r) - len(used)
        items = credit + [0.0] * extra
        if not bg_edit:
            source_bg = self.background_signature(np.asarray(source), det_s)
            items.append(self._same_background(bg_r, source_bg))
        preservation = float(np.mean(items)) if items else 1.0
        quality = self.quality(result, every_r)
        parts = {"success": 10 * success, "overediting": 10 * preservation, "extra_objects": extra, **quality}
        return {"sc": min(parts["success"], parts["overediting"]),
                "pq": min(quality["naturalness"], quality["artifacts"]), "parts": parts}

    # ---------------------------------------------------------------- subject-driven
    def score_subject(self, references: Sequence[np.ndarray], result: np.ndarray, sample: dict) -> dict:
        tgt_scene = Scene.from_dict(sample["target"])
        subject = sample["subject"]
        h, w = np.asarray(result).shape[:2]
        det_r, every_r = self.detect(result)
        met = [self._found_in_cell(det_r, o, w, h) is not None for o in tgt_scene.objects]
        target = render(tgt_scene, w, h)
        met.append(self._same_background(self.background_signature(np.asarray(result), det_r),
                                         self.background_signature(target.image, target.instance_map > 0)) == 1.0)
        follow = float(np.mean(met))
        # Subject consistency: the reference's subject (class, colour, size) reappears in the result.
        ref = np.asarray(references[0])
        rh, rw = ref.shape[:2]
        ref_dets = [d for d in self.detect(ref)[0] if (d["class"], d.get("color")) == (subject["shape"], subject["color"])]
        side_ref = (max(ref_dets[0]["bbox"][2] - ref_dets[0]["bbox"][0], ref_dets[0]["bbox"][3] - ref_dets[0]["bbox"][1])
                    / min(rw, rh)) if ref_dets else subject["size"]
        consistency = 0.0
        for d in det_r:
            if (d["class"], d.get("color")) == (subject["shape"], subject["color"]):
                side_px = max(d["bbox"][2] - d["bbox"][0], d["bbox"][3] - d["bbox"][1])
                # size ratio to the reference; pixel boxes are exact to ~1 px, so that much is free
                excess = max(abs(np.log(side_px / min(w, h) / side_ref)) - np.log1p(1.5 / side_px), 0.0)
                size_match = float(np.clip(1 - excess / np.log(1.5), 0.0, 1.0))
                consistency = max(consistency, size_match)
        quality = self.quality(result, every_r)
        return {"pf": 10 * follow, "consistency": 10 * consistency, "parts": quality}


# ============================================================================ VLM judge adapter
# Prompt templates in the style of VIEScore / GEdit-Bench (two scores per question, 0-10, the
# lower one is kept) and OmniContext (prompt following, subject consistency). Our own wording.
CONTEXT = """You are an expert evaluator of AI-generated and AI-edited images. You judge each \
image strictly by the rules given below. Every image you see is AI-generated.

Answer in exactly this JSON form (keep the reasoning short):
{
"score" : [...],
"reasoning" : "..."
}"""

EDIT_RULES = """RULES:

You are given two images. The first is the original image; the second is the result of editing \
the first one with the instruction below. Judge how well the second image carries out the edit. \
The two images may look identical when the edit failed.

Give two scores from 0 to 10:
- The first score rates editing success: 0 means the edited image does not follow the \
instruction at all, 10 means it follows the instruction completely and exactly.
- The second score rates over-editing: 0 means the edited image has changed far more than the \
instruction asks (a different scene), 10 means only what the instruction names was changed and \
everything else is as it was in the original.
Return score = [editing success, over-editing].

Editing instruction: <instruction>"""

QUALITY_RULES = """RULES:

You are given one AI-generated image. Judge its perceptual quality only, not its content.

Give two scores from 0 to 10:
- The first score rates naturalness: 0 means the image looks wrong as a whole (inconsistent \
lighting, shadows, perspective or composition), 10 means it looks coherent and natural.
- The second score rates artifacts: 0 means large parts are distorted, smeared, broken or \
noisy, 10 means there are no visible artifacts.
Return score = [naturalness, artifacts]."""

SUBJECT_FOLLOW_RULES = """RULES:

You are given reference image(s) followed by one generated image. The generated image was made \
from the text prompt below, with the subject taken from the reference image(s).

Give one score from 0 to 10 for prompt following: 0 means the generated image ignores the prompt, \
10 means every element, attribute, count and position the prompt asks for is present.
Return score = [prompt following].

Prompt: <prompt>"""

SUBJECT_CONSISTENCY_RULES = """RULES:

You are given reference image(s) followed by one generated image. The generated image should \
show the same subject as the reference image(s): <subject>.

Give one score from 0 to 10 for subject consistency: 0 means the subject is missing or is a \
different subject, 10 means it is the same subject with the same identity, shape, colours and \
proportions (its position and the surrounding scene may differ).
Return score = [subject consistency]."""

_SCORE_LIST = re.compile(r'"?score"?\s*[:=]\s*\[([^\]]*)\]', re.IGNORECASE)


def parse_scores(text: str, expected: int) -> list[float] | None:
    """The `score` list of a judge reply (JSON or `score = [a, b]`), or None if absent."""
    match = _SCORE_LIST.search(text)
    if match is None:
        try:
            match_json = json.loads(text[text.index("{"): text.rindex("}") + 1])
            values = [float(v) for v in match_json["score"]]
        except (ValueError, KeyError, TypeError):
            return None
    else:
        values = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", match.group(1))]
    return values[:expected] if len(values) >= expected else None


class VLMJudge:
    """EditJudge around a local VLM with `judge(images: list[np.ndarray], prompt: str) -> str`,
    built from a class path (weights from local paths only, evaluation/backends.py). A reply
    whose scores cannot be parsed after `max_tries` scores 0 and is counted in parts["unparsed"]."""

    def __init__(self, class_path: str, init_args: dict[str, Any] | None = None, max_tries: int = 2):
        self.model = load_backend(class_path, init_args, method="judge")
        self.max_tries = max_tries

    def ask(self, images: Sequence[np.ndarray], prompt: str, expected: int) -> tuple[list[float], bool]:
        for _ in range(self.max_tries):
            values = parse_scores(str(self.model.judge(list(images), prompt)), expected)
            if values is not None:
                return [float(np.clip(v, 0, 10)) for v in values], True
        return [0.0] * expected, False

    def score_edit(self, source: np.ndarray, result: np.ndarray, sample: dict) -> dict:
        sc_prompt = "\n".join([CONTEXT, EDIT_RULES]).replace("<instruction>", sample["instruction"])
        (success, overedit), ok_sc = self.ask([source, result], sc_prompt, 2)
        (natural, artifacts), ok_pq = self.ask([result], "\n".join([CONTEXT, QUALITY_RULES]), 2)
        parts = {"success": success, "overediting": overedit, "naturalness": natural,
                 "artifacts": artifacts, "unparsed": int(not ok_sc) + int(not ok_pq)}
        return {"sc": min(success, overedit), "pq": min(natural, artifacts), "parts": parts}

    def score_subject(self, references: Sequence[np.ndarray], result: np.ndarray, sample: dict) -> dict:
        images = [*references, result]
        subject = sample.get("subject", {})
        name = f"{subject.get('color', '')} {subject.get('shape', '')}".strip() or "the reference subject"
        (follow,), ok_pf = self.ask(images, "\n".join([CONTEXT, SUBJECT_FOLLOW_RULES]).replace("<prompt>", sample["prompt"]), 1)
        (consistency,), ok_c = self.ask(images, "\n".join([CONTEXT, SUBJECT_CONSISTENCY_RULES]).replace("<subject>", name), 1)
        return {"pf": follow, "consistency": consistency, "parts": {"unparsed": int(not ok_pf) + int(not ok_c)}}
