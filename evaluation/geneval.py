"""GenEval benchmark over a folder of generated images: official layout in, official results out.

    python -m evaluation.geneval <images_dir> [--outfile results.jsonl] [--detector oracle]

Layout (GenEval README / evaluate_images.py main): <dir>/<00000>/metadata.jsonl holding the
prompt's line of evaluation_metadata.jsonl, and <dir>/<00000>/samples/0000.png, 0001.png, ...
Writes <dir>/results.jsonl with the official per-image fields (filename, tag, prompt, correct,
reason, metadata, details) and <dir>/summary.json; the summary follows summary_scores.py: per
task = mean per-image correctness, overall = unweighted mean over tasks. The summary adds
"clutter_rate" (not part of GenEval): the fraction of images whose kept detections hold an object
the prompt does not ask for (geneval_rules.cluttered), read from each record's details.
The rules themselves live in evaluation/geneval_rules.py (re-exported here).

Seen / unseen (shapes/split.py): `split_summaries` scores the prompts whose text appears among the
training captions ("seen") and the others ("unseen") separately; without training captions the
world's split rule decides (held-out combinations are unseen).
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageOps

from evaluation.detectors import load_color_classifier, load_detector
from evaluation.geneval_rules import (COUNTING_THRESHOLD, MAX_OBJECTS, POSITION_THRESHOLD, TASKS, THRESHOLD,
                                      check_clauses, cluttered, evaluate_image, filter_detections,
                                      geneval_reward, relative_position)

__all__ = ["COUNTING_THRESHOLD", "MAX_OBJECTS", "POSITION_THRESHOLD", "TASKS", "THRESHOLD",
           "GenEvalResults", "check_clauses", "cluttered", "evaluate_image", "filter_detections",
           "geneval_reward", "load_image", "load_metadata", "read_geneval_layout", "relative_position",
           "render_ground_truth_layout", "score_geneval", "summarize", "write_geneval_layout",
           "caption_texts", "prompt_overlap", "split_summaries"]

IMAGE_NAME = re.compile(r"\d+\.png")   # evaluate_images.py main: re.match(r"\d+\.png", name)


def load_metadata(path: str | Path) -> list[dict]:
    """The lines of an evaluation_metadata.jsonl (official file or ours), unchanged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GenEval metadata not found at {path}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


CAPTION_FIELDS = ("caption", "prompt", "text")   # raw shards: caption/prompt (+ captions{}); pretokenised: text


def caption_texts(shard_dirs: Sequence[str | Path]) -> set[str]:
    """Every caption text of the samples in webdataset shard directories (raw world shards:
    caption, prompt, captions.short/dense; pretokenised shards: text). Reads only the .json
    members of the .tar shards."""
    import tarfile

    texts: set[str] = set()
    for directory in shard_dirs:
        tars = sorted(Path(directory).glob("*.tar"))
        if not tars:
            raise FileNotFoundError(f"no .tar shards in {directory}: pass shard directories written by "
                                    f"`main.py world` or `main.py pretokenize`")
        for path in tars:
            with tarfile.open(path) as tar:
                for member in tar:
                    if not member.name.endswith(".json"):
                        continue
                    meta = json.loads(tar.extractfile(member).read())
                    texts.update(str(meta[k]) for k in CAPTION_FIELDS if meta.get(k))
                    if isinstance(meta.get("captions"), dict):
                        texts.update(str(v) for v in meta["captions"].values() if v)
    return texts


def prompt_overlap(metadata_list: Sequence[dict], texts: set[str]) -> dict[str, int]:
    """How many prompt lines (and distinct prompt texts) appear word for word in `texts`, overall
    and among the lines the world's split holds out."""
    from shapes.split import split_of

    unseen = [m for m in metadata_list if split_of(m) == "unseen"]
    distinct = {m["prompt"] for m in metadata_list}
    return {"prompts": len(metadata_list), "in_captions": sum(m["prompt"] in texts for m in metadata_list),
            "distinct_texts": len(distinct), "distinct_in_captions": len(distinct & texts),
            "unseen_by_rule": len(unseen), "unseen_in_captions": sum(m["prompt"] in texts for m in unseen)}


def spread_subset(metadata_list: Sequence[dict], limit: int | None) -> list[dict]:
    """`limit` prompts spread evenly over the file (every k-th line): a subset of a file sorted
    by tag keeps all six tags in about their proportions."""
    if limit is None or limit >= len(metadata_list):
        return list(metadata_list)
    stride = len(metadata_list) / limit
    return [metadata_list[int(i * stride)] for i in range(limit)]


def write_geneval_layout(out_dir: str | Path, metadata_list: Sequence[dict],
                         images_per_prompt: Sequence[Sequence[np.ndarray]]) -> Path:
    """Write prompts and their images in the official layout; returns out_dir."""
    if len(metadata_list) != len(images_per_prompt):
        raise ValueError(f"{len(metadata_list)} prompts but images for {len(images_per_prompt)}")
    out_dir = Path(out_dir)
    for index, (metadata, images) in enumerate(zip(metadata_list, images_per_prompt)):
        folder = out_dir / f"{index:05d}"
        (folder / "samples").mkdir(parents=True, exist_ok=True)
        (folder / "metadata.jsonl").write_text(json.dumps(metadata) + "\n")
        for k, image in enumerate(images):
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / "samples" / f"{k:04d}.png")
    return out_dir


def render_ground_truth_layout(out_dir: str | Path, images_per_prompt: int = 4, limit: int | None = None,
                               size: int = 64, seed: int = 0) -> Path:
    """The Shapes world's own renders of its default prompts (geneval_prompts(seed)) in the
    official layout: the scorer's sanity check (overall ~1 with the oracle detector)."""
    from shapes.prompts import geneval_prompts, scene_for_prompt
    from shapes.render import render

    metas = spread_subset(geneval_prompts(seed=seed), limit)
    rng = np.random.default_rng(seed)
    images = [[render(scene_for_prompt(m, rng, size, size), size, size).image for _ in range(images_per_prompt)]
              for m in metas]
    return write_geneval_layout(out_dir, metas, images)


def read_geneval_layout(images_dir: str | Path) -> list[tuple[dict, list[Path]]]:
    """(metadata, sample paths) per prompt folder, folders and samples in name order."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"GenEval images directory not found at {images_dir}")
    prompts = []
    for folder in sorted(p for p in images_dir.iterdir() if p.is_dir() and p.name.isdigit()):
        metadata = json.loads((folder / "metadata.jsonl").read_text())   # official: json.load(fp)
        samples = sorted(p for p in (folder / "samples").iterdir()
                         if p.is_file() and IMAGE_NAME.match(p.name))
        prompts.append((metadata, samples))
    if not prompts:
        raise FileNotFoundError(f"no prompt folders (00000/metadata.jsonl, samples/0000.png) "
                                f"under {images_dir}")
    return prompts


def load_image(path: str | Path) -> np.ndarray:
    """RGB uint8, EXIF orientation applied (evaluate_images.py: ImageOps.exif_transpose)."""
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


@dataclass
class GenEvalResults:
    records: list[dict] = field(default_factory=list)      # one official results.jsonl row per image
    task_scores: dict[str, float] = field(default_factory=dict)
    task_counts: dict[str, tuple[int, int]] = field(default_factory=dict)   # (correct, images)
    overall: float = 0.0
    image_accuracy: float = 0.0
    prompt_accuracy: float = 0.0
    num_prompts: int = 0
    clutter_rate: float | None = None  # images with an object the prompt did not ask for; None: no details

    def summary(self) -> dict[str, Any]:
        return {"overall": self.overall, "tasks": self.task_scores,
                "task_counts": {k: list(v) for k, v in self.task_counts.items()},
                "images": len(self.records), "prompts": self.num_prompts,
                "image_accuracy": self.image_accuracy, "prompt_accuracy": self.prompt_accuracy,
                "clutter_rate": self.clutter_rate}

    def __getitem__(self, key: str) -> Any:
        """Mapping access to summary() ("overall", "tasks"; "per_task" is an alias of "tasks")."""
        return self.summary()["tasks" if key == "per_task" else key]

    def summary_text(self) -> str:
        """summary_scores.py's printout."""
        lines = ["Summary", "=======", f"Total images: {len(self.records)}",
                 f"Total prompts: {self.num_prompts}", f"% correct images: {self.image_accuracy:.2%}",
                 f"% correct prompts: {self.prompt_accuracy:.2%}", "", "Task breakdown", "=============="]
        for tag, score in self.task_scores.items():
            correct, total = self.task_counts[tag]
            lines.append(f"{tag:<16} = {score:.2%} ({correct} / {total})")
        lines += ["", f"Overall score (avg. over tasks): {self.overall:.5f}"]
        return "\n".join(lines)


def summarize(records: Sequence[dict]) -> GenEvalResults:
    """summary_scores.py: tasks in order of first appearance, each the mean of its images'
    correctness; overall the unweighted mean over tasks; a prompt is correct if any image is.
    clutter_rate: over the records that carry "details" (the official results rows do), the
    fraction `cluttered` by their kept detections and metadata; None when none carries them."""
    by_task: dict[str, list[bool]] = {}
    by_prompt: dict[str, list[bool]] = {}
    for r in records:
        by_task.setdefault(r["tag"], []).append(bool(r["correct"]))
        by_prompt.setdefault(r["metadata"], []).append(bool(r["correct"]))
    task_scores = {tag: float(np.mean(v)) for tag, v in by_task.items()}
    clutter = [cluttered(json.loads(r["details"]), json.loads(r["metadata"])) for r in records if "details" in r]
    return GenEvalResults(
        records=list(records), task_scores=task_scores,
        task_counts={tag: (int(sum(v)), len(v)) for tag, v in by_task.items()},
        overall=float(np.mean(list(task_scores.values()))) if task_scores else 0.0,
        image_accuracy=float(np.mean([r["correct"] for r in records])) if records else 0.0,
        prompt_accuracy=float(np.mean([any(v) for v in by_prompt.values()])) if by_prompt else 0.0,
        num_prompts=len(by_prompt), clutter_rate=float(np.mean(clutter)) if clutter else None)


def split_summaries(records: Sequence[dict], seen_texts: set[str] | None = None) -> dict[str, Any]:
    """GenEval summaries of the seen and the unseen prompts' images (summarize() on each part),
    and of the held-out ones (the prompts stating a combination shapes/split.py keeps out of
    training: unseen by construction, whatever the captions).

    seen_texts: the training captions (caption_texts); a prompt is seen if its text is among them
    (so "unseen" also holds allowed prompts the training data happened not to caption). None: the
    split rule decides (unseen == held_out). A part without images has overall None."""
    from shapes.split import split_of

    def seen(record: dict) -> bool:
        meta = json.loads(record["metadata"])
        return meta["prompt"] in seen_texts if seen_texts is not None else split_of(meta) == "seen"

    def held_out(record: dict) -> bool:
        return split_of(json.loads(record["metadata"])) == "unseen"

    out: dict[str, Any] = {"source": "captions" if seen_texts is not None else "rule"}
    parts = {"seen": lambda r: seen(r), "unseen": lambda r: not seen(r), "held_out": held_out}
    for part, wanted in parts.items():
        chosen = [r for r in records if wanted(r)]
        summary = summarize(chosen).summary()
        if not chosen:
            summary["overall"] = None
        out[part] = summary
    return out


def score_geneval(images_dir: str | Path, detector: Any = None, color_classifier: Any = None,
                  outfile: str | Path | None = None, summary_file: str | Path | None = None,
                  verbose: bool = True, **rules: float) -> GenEvalResults:
    """Score every image of an official-layout folder; writes results.jsonl and summary.json
    (default: inside images_dir) and prints the summary. detector / color_classifier: backend
    instances or specs for evaluation.detectors (default: the oracle and its own colours)."""
    detector, color_classifier = load_detector(detector), load_color_classifier(color_classifier)
    records = []
    for metadata, samples in read_geneval_layout(images_dir):
        for path in samples:
            correct, reason, details = evaluate_image(load_image(path), metadata, detector, color_classifier,
                                                      **rules)
            records.append({"filename": str(path), "tag": metadata["tag"], "prompt": metadata["prompt"],
                            "correct": bool(correct), "reason": reason, "metadata": json.dumps(metadata),
                            "details": json.dumps(details)})
    results = summarize(records)
    outfile = Path(outfile) if outfile else Path(images_dir) / "results.jsonl"
    outfile.parent.mkdir(parents=True, exist_ok=True)
    outfile.write_text("".join(json.dumps(r) + "\n" for r in records))
    summary_file = Path(summary_file) if summary_file else outfile.with_name("summary.json")
    summary_file.write_text(json.dumps(results.summary(), indent=2) + "\n")
    if verbose:
        print(results.summary_text())
    return results


def main(argv: list[str] | None = None) -> GenEvalResults:
    parser = argparse.ArgumentParser(description="Score a GenEval-layout image folder (official rules).")
    parser.add_argument("images_dir")
    parser.add_argument("--outfile", default=None,
                        help="results.jsonl path (default: <images_dir>/results.jsonl)")
    parser.add_argument("--detector", default="oracle", help="registry name or module.ClassName")
    parser.add_argument("--color-classifier", default="detection",
                        help="'detection' (the detector's colours), 'clip' (needs --clip-weights) "
                             "or module.ClassName")
    parser.add_argument("--clip-weights", default=None,
                        help="local CLIP ViT-L/14 checkpoint for --color-classifier clip")
    args = parser.parse_args(argv)
    colors: Any = args.color_classifier
    if colors == "clip":
        colors = {"class_path": "clip", "init_args": {"weights_path": args.clip_weights}}
    return score_geneval(args.images_dir, args.detector, colors, outfile=args.outfile)


if __name__ == "__main__":
    main()
