"""Measure the oracle detector against the renderer's ground truth, clean and perturbed.

    python -m evaluation.measure_oracle --num-scenes 500 [--size 128] [--threshold 0.3] [--breakdown]

Per condition: per-object precision and recall (a detection matches an unmatched ground-truth
object when the boxes overlap at IoU >= 0.5 and the class is right; greedy by score, COCO-style),
colour accuracy of the matched detections, and recall at the counting threshold 0.9. Ground-truth
boxes are the extent of each object's labelled pixels (render.py: coverage >= 0.5).
Perturbations stand in for a generator's artefacts: noise, blur, JPEG, down- then up-sampling.
"""
from __future__ import annotations

import argparse
import io
import time
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage

from shapes.render import render
from shapes.scene import sample_scene
from shapes.oracle import OracleDetector

PERTURBATIONS = ("clean", "noise", "blur", "jpeg", "resample")


def perturb(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """One generator-like degradation of an H x W x 3 uint8 image."""
    if kind == "clean":
        return image
    if kind == "noise":      # Gaussian pixel noise, std 8 grey levels
        return np.clip(image + rng.normal(0.0, 8.0, image.shape), 0, 255).astype(np.uint8)
    if kind == "blur":       # Gaussian blur, std 1 px
        return np.clip(np.rint(ndimage.gaussian_filter(image.astype(np.float32), (1.0, 1.0, 0))),
                       0, 255).astype(np.uint8)
    if kind == "jpeg":       # JPEG at quality 75 (4:2:0 chroma subsampling, PIL's default)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=75)
        return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    if kind == "resample":   # bilinear down-sampling by 2, bicubic back up
        h, w, _ = image.shape
        small = Image.fromarray(image).resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR)
        return np.asarray(small.resize((w, h), Image.BICUBIC))
    raise ValueError(f"unknown perturbation {kind!r}; choose one of {', '.join(PERTURBATIONS)}")


def box_iou(a, b) -> float:
    """IoU of two xyxy boxes in continuous pixel coordinates."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def ground_truth(scene, rendered) -> list[dict]:
    """Class, colour and labelled-pixel box of every visible object."""
    objects = []
    for index, obj in enumerate(scene.objects):
        ys, xs = np.nonzero(rendered.instance_map == index + 1)
        if len(xs):
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            objects.append({"class": obj.shape, "color": obj.color, "bbox": box})
    return objects


def match(detections: list[dict], truths: list[dict], iou: float = 0.5) -> list[tuple[dict, dict]]:
    """Greedy one-to-one matching, highest score first: same class and box IoU >= iou."""
    pairs, free = [], list(range(len(truths)))
    for det in sorted(detections, key=lambda d: -d["score"]):
        candidates = [(box_iou(det["bbox"], truths[j]["bbox"]), j) for j in free
                      if truths[j]["class"] == det["class"]]
        best = max(candidates, default=(0.0, -1))
        if best[0] >= iou:
            free.remove(best[1])
            pairs.append((det, truths[best[1]]))
    return pairs


@dataclass
class Tally:
    truths: int = 0
    detections: int = 0
    matched: int = 0
    colour_right: int = 0
    matched_at_counting: int = 0
    scores: list = field(default_factory=list)
    by_group: dict = field(default_factory=dict)   # "class:star" / "color:pink" -> [matched, truths]

    def add(self, detections: list[dict], truths: list[dict], threshold: float) -> None:
        kept = [d for d in detections if d["score"] > threshold]   # GenEval keeps score > threshold
        pairs = match(kept, truths)
        self.truths += len(truths)
        self.detections += len(kept)
        self.matched += len(pairs)
        self.colour_right += sum(d["color"] == t["color"] for d, t in pairs)
        self.matched_at_counting += sum(d["score"] > 0.9 for d, _ in pairs)
        self.scores += [d["score"] for d, _ in pairs]
        hits = {id(t) for _, t in pairs}
        for t in truths:
            for key in (f"class:{t['class']}", f"color:{t['color']}"):
                tally = self.by_group.setdefault(key, [0, 0])
                tally[0] += id(t) in hits
                tally[1] += 1

    def summary(self) -> dict:
        return {"precision": self.matched / max(self.detections, 1),
                "recall": self.matched / max(self.truths, 1),
                "colour_accuracy": self.colour_right / max(self.matched, 1),
                "recall_at_0.9": self.matched_at_counting / max(self.truths, 1),
                "objects": self.truths, "detections": self.detections,
                "recall_by": {k: m / n for k, (m, n) in sorted(self.by_group.items())}}


def measure(num_scenes: int = 500, size: int = 128, seed: int = 0, threshold: float = 0.3,
            perturbations: tuple[str, ...] = PERTURBATIONS, detector=None,
            aspects: tuple[float, ...] = (1.0, 1.0, 0.5, 2.0)) -> dict[str, dict]:
    """Per-perturbation summaries over `num_scenes` random scenes (sizes vary per scene: the
    shorter side is `size`, aspect ratios cycle through `aspects`)."""
    detector = detector or OracleDetector()
    rng = np.random.default_rng(seed)
    tallies = {kind: Tally() for kind in perturbations}
    for index in range(num_scenes):
        aspect = aspects[index % len(aspects)]
        width, height = (round(size * aspect), size) if aspect >= 1 else (size, round(size / aspect))
        scene = sample_scene(rng, width, height)
        rendered = render(scene, width, height)
        truths = ground_truth(scene, rendered)
        for kind in perturbations:
            image = perturb(rendered.image, kind, rng)
            tallies[kind].add(detector.detect(image), truths, threshold)
    return {kind: tally.summary() for kind, tally in tallies.items()}


def format_table(results: dict[str, dict]) -> str:
    header = ("condition", "objects", "precision", "recall", "colour", "recall@0.9")
    lines = [f"{header[0]:<10} {header[1]:>7} {header[2]:>9} {header[3]:>7} {header[4]:>7} {header[5]:>10}"]
    for kind, r in results.items():
        lines.append(f"{kind:<10} {r['objects']:>7d} {r['precision']:>9.4f} {r['recall']:>7.4f} "
                     f"{r['colour_accuracy']:>7.4f} {r['recall_at_0.9']:>10.4f}")
    return "\n".join(lines)


def format_breakdown(results: dict[str, dict]) -> str:
    """Recall per shape class and per colour (rows) under each condition (columns)."""
    keys = list(next(iter(results.values()))["recall_by"])
    lines = [f"{'recall by':<14}" + "".join(f"{kind:>10}" for kind in results)]
    for key in keys:
        cells = "".join(f"{r['recall_by'].get(key, float('nan')):>10.4f}" for r in results.values())
        lines.append(f"{key:<14}{cells}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-scenes", type=int, default=500)
    parser.add_argument("--size", type=int, default=128, help="shorter image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", type=float, default=0.3, help="detections kept at score > threshold")
    parser.add_argument("--breakdown", action="store_true", help="also print recall per class and per colour")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = measure(args.num_scenes, args.size, args.seed, args.threshold)
    print(f"oracle detector on {args.num_scenes} scenes, shorter side {args.size} px, "
          f"score > {args.threshold} ({time.perf_counter() - start:.1f} s)")
    print(format_table(results))
    if args.breakdown:
        print(format_breakdown(results))
    return results


if __name__ == "__main__":
    main()
