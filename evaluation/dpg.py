"""DPG-Bench scorer (REFERENCE.md, "DPG-Bench protocol"), written against the official script
TencentQQGYLab/ELLA dpg_bench/compute_dpg_bench.py (read for the protocol, not copied).

Protocol, as the official script computes it:
- dpg_bench.csv has one row per question: item_id, text, keywords, proposition_id, dependency
  ("0" or "1,2": parent proposition ids, 0 = none), category_broad, category_detailed, tuple
  ("entity - whole (bicycle)"), question_natural_language.
- Each prompt has one generated image holding a 2x2 grid of 4 samples; crops are taken in the
  order top-left, top-right, bottom-left, bottom-right and the first `pic_num` (4) are scored.
- Per image: a question scores 1 iff the VQA answer is "yes"; then, in question order, a question
  with a parent scoring 0 is set to 0 (the zeroing is applied in place, so it chains down the
  graph when parents come first, as they do in DSG graphs). Image score = mean over questions.
- Prompt score = mean over its images; DPG = mean over prompts x 100.
- Category scores pool questions over all prompts: L2 = tuple text before "(" ("entity - whole"),
  L1 = its part before "-". The official script uses the *raw* answers (before the dependency
  rule) of the *last* scored image only; `category_mode="official"` reproduces that, and
  `category_mode="all_images"` uses every image's scores after the dependency rule.
Deliberate differences: the official script skips the CSV's first data row (a known off-by-one;
we score that row too) and silently drops a prompt whose graph names an unknown parent (we raise). Answers
are compared after lower-casing and stripping punctuation ("Yes." == "yes") unless strict=True.
"""
from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Protocol, Sequence

import numpy as np

from evaluation.backends import load_backend

CSV_COLUMNS = ("item_id", "text", "keywords", "proposition_id", "dependency", "category_broad",
               "category_detailed", "tuple", "question_natural_language")
GRID_ORDER = ((0, 0), (0, 1), (1, 0), (1, 1))   # (row, col): the official crop order


class VQABackend(Protocol):
    def answer(self, image: np.ndarray, question: str) -> str: ...


@dataclass(frozen=True)
class DPGQuestion:
    proposition_id: int
    dependency: tuple[int, ...]          # parent ids; (0,) = no parent
    question: str
    category_broad: str = ""
    category_detailed: str = ""
    tuple: str = ""

    @property
    def category_l2(self) -> str:
        """Official L2 category: the tuple's text before '(' ("entity - whole")."""
        if self.tuple:   # "global - (plain background)" -> "global"
            return self.tuple.split("(")[0].strip().rstrip("-").strip()
        return f"{self.category_broad} - {self.category_detailed}".strip(" -")

    @property
    def category_l1(self) -> str:
        return self.category_l2.split("-")[0].strip() or self.category_broad


@dataclass
class DPGPrompt:
    item_id: str
    text: str
    questions: list[DPGQuestion] = field(default_factory=list)

    def check(self) -> None:
        ids = [q.proposition_id for q in self.questions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"DPG prompt {self.item_id!r}: duplicate proposition_id in {ids}")
        for q in self.questions:
            missing = [p for p in q.dependency if p != 0 and p not in ids]
            if missing:
                raise ValueError(f"DPG prompt {self.item_id!r}: question {q.proposition_id} depends on "
                                 f"unknown proposition(s) {missing}")


def parse_dependency(value: Any) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value) or (0,)
    text = str(value).strip()
    return tuple(int(v) for v in text.split(",") if v.strip()) or (0,)


def prompts_from_records(records: Iterable[Mapping[str, Any]]) -> dict[str, DPGPrompt]:
    """Question rows (official CSV columns, as dicts) -> prompts in first-appearance order."""
    prompts: dict[str, DPGPrompt] = {}
    for row in records:
        item_id = str(row["item_id"])
        prompt = prompts.setdefault(item_id, DPGPrompt(item_id, str(row.get("text", ""))))
        prompt.questions.append(DPGQuestion(
            proposition_id=int(row["proposition_id"]), dependency=parse_dependency(row["dependency"]),
            question=str(row["question_natural_language"]), category_broad=str(row.get("category_broad", "")),
            category_detailed=str(row.get("category_detailed", "")), tuple=str(row.get("tuple", ""))))
    for prompt in prompts.values():
        prompt.check()
    return prompts


def prompts_from_items(items: Iterable[Mapping[str, Any]]) -> dict[str, DPGPrompt]:
    """World items from shapes.dpg.dpg_items ({item_id, prompt, questions}) -> prompts."""
    return prompts_from_records(
        {"item_id": item["item_id"], "text": item.get("prompt", ""), **q,
         "question_natural_language": q.get("question_natural_language", q.get("question"))}
        for item in items for q in item["questions"])


def load_dpg_csv(path: str | Path) -> dict[str, DPGPrompt]:
    """Read dpg_bench.csv (or a Shapes-world graph file in the same columns)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"DPG question file not found: {path}")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("item_id", "proposition_id", "dependency", "question_natural_language")
                   if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} is not a DPG-Bench question file: missing columns {missing} "
                             f"(expected {', '.join(CSV_COLUMNS)})")
        return prompts_from_records(reader)


def split_grid(image: np.ndarray, rows: int = 2, cols: int = 2) -> list[np.ndarray]:
    """A rows x cols grid image -> its cells in the official order (row-major)."""
    image = np.asarray(image)
    h, w = image.shape[0] // rows, image.shape[1] // cols
    return [image[r * h:(r + 1) * h, c * w:(c + 1) * w] for r in range(rows) for c in range(cols)]


def is_yes(answer: str, strict: bool = False) -> bool:
    if strict:
        return answer == "yes"                                   # official: answer == 'yes'
    return re.sub(r"[^a-z]", "", str(answer).lower()) == "yes"


def apply_dependencies(questions: Sequence[DPGQuestion], raw: Mapping[int, float]) -> dict[int, float]:
    """The DPG dependency rule: in question order, a question whose parent scored 0 scores 0."""
    scores = dict(raw)
    for q in questions:
        if any(p != 0 and scores[p] == 0 for p in q.dependency):
            scores[q.proposition_id] = 0.0
    return scores


def score_answers(prompt: DPGPrompt, answers: Mapping[int, str], strict: bool = False) -> dict:
    """One image's answers -> {"score", "raw", "final"} (raw/final: proposition_id -> 0/1)."""
    raw = {q.proposition_id: float(is_yes(answers[q.proposition_id], strict)) for q in prompt.questions}
    final = apply_dependencies(prompt.questions, raw)
    return {"score": float(np.mean(list(final.values()))) if final else 0.0, "raw": raw, "final": final}


class DPGScorer:
    """`score(images, prompts) -> results` with a VQA backend; see the module docstring."""

    def __init__(self, vqa: VQABackend, *, pic_num: int = 4,
                 category_mode: Literal["official", "all_images"] = "official", strict: bool = False):
        if category_mode not in ("official", "all_images"):
            raise ValueError(f"category_mode must be 'official' or 'all_images', got {category_mode!r}")
        self.vqa, self.pic_num, self.category_mode, self.strict = vqa, pic_num, category_mode, strict

    def images_of(self, item: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
        """A 2x2 grid image (official layout) or a list of separate images -> the images to score."""
        if isinstance(item, np.ndarray) and item.ndim == 3:
            return split_grid(item)[: self.pic_num]
        return [np.asarray(im) for im in item][: self.pic_num]

    def score_prompt(self, prompt: DPGPrompt, item: np.ndarray | Sequence[np.ndarray]) -> dict:
        images = self.images_of(item)
        if not images:
            raise ValueError(f"DPG prompt {prompt.item_id!r}: no images to score")
        per_image = []
        for image in images:
            answers = {q.proposition_id: self.vqa.answer(image, q.question) for q in prompt.questions}
            result = score_answers(prompt, answers, self.strict)
            result["answers"] = answers
            per_image.append(result)
        return {"item_id": prompt.item_id, "text": prompt.text,
                "score": float(np.mean([r["score"] for r in per_image])), "images": per_image}

    def score(self, images: Mapping[str, Any], prompts: Mapping[str, DPGPrompt]) -> dict:
        missing = [k for k in images if k not in prompts]
        if missing:
            raise ValueError(f"images for unknown DPG item_id(s) {missing[:5]}: not in the question file")
        per_prompt = [self.score_prompt(prompts[k], images[k]) for k in images]
        return aggregate(per_prompt, prompts, self.category_mode)


def aggregate(per_prompt: list[dict], prompts: Mapping[str, DPGPrompt],
              category_mode: str = "official") -> dict:
    """Per-prompt results -> DPG score (x100) and L1/L2 category scores (x100)."""
    l2: dict[str, list[float]] = defaultdict(list)
    for result in per_prompt:
        prompt = prompts[result["item_id"]]
        # official: raw answers of the last image; all_images: every image after the dependency rule
        sources = [result["images"][-1]["raw"]] if category_mode == "official" else \
            [image["final"] for image in result["images"]]
        for scores in sources:
            for q in prompt.questions:
                l2[q.category_l2].append(scores[q.proposition_id])
    l1: dict[str, list[float]] = defaultdict(list)
    for name, values in l2.items():
        l1[name.split("-")[0].strip()].extend(values)
    pct = lambda values: 100.0 * float(np.mean(values)) if values else float("nan")
    return {
        "benchmark": "dpg",
        "dpg": pct([r["score"] for r in per_prompt]),
        "num_prompts": len(per_prompt),
        "category_mode": category_mode,
        "categories_broad": {k: pct(v) for k, v in sorted(l1.items())},
        "categories_detailed": {k: pct(v) for k, v in sorted(l2.items())},
        "prompts": per_prompt,
    }


def load_image_folder(folder: str | Path, item_ids: Iterable[str]) -> dict[str, Any]:
    """Images for each item id: `<folder>/<item_id>.png` (official 2x2 grid) or
    `<folder>/<item_id>/*.png` (separate images, sorted by name)."""
    from PIL import Image

    folder, out = Path(folder), {}
    for item_id in item_ids:
        grid = next((folder / f"{item_id}{ext}" for ext in (".png", ".jpg") if (folder / f"{item_id}{ext}").is_file()), None)
        if grid is not None:
            out[item_id] = np.asarray(Image.open(grid).convert("RGB"))
        elif (folder / item_id).is_dir():
            files = sorted(p for p in (folder / item_id).iterdir() if p.suffix.lower() in (".png", ".jpg"))
            out[item_id] = [np.asarray(Image.open(p).convert("RGB")) for p in files]
    if not out:
        raise FileNotFoundError(f"no DPG images in {folder}: expected <item_id>.png grids or <item_id>/ folders")
    return out


def write_results(results: dict, out_dir: str | Path) -> Path:
    """dpg_results.json (everything) and dpg_results.txt (the official script's summary lines)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dpg_results.json").write_text(json.dumps(results, indent=1, default=float))
    lines = [f"{r['item_id']}, " + ", ".join(str(i["score"]) for i in r["images"]) + f", {r['score']}"
             for r in results["prompts"]]
    lines += ["L1 category scores:"] + [f"\t{k}: {v}" for k, v in results["categories_broad"].items()]
    lines += ["L2 category scores:"] + [f"\t{k}: {v}" for k, v in results["categories_detailed"].items()]
    lines.append(f"DPG-Bench score: {results['dpg']}")
    (out_dir / "dpg_results.txt").write_text("\n".join(lines) + "\n")
    return out_dir / "dpg_results.json"


class LocalVQA:
    """Any local VQA model with `answer(image, question) -> str`, built from a class path.

    init_args that name files (weights, *_path, ...) must exist locally (evaluation/backends.py).
    `method` names the model's answering method if it is not called `answer`.
    """

    def __init__(self, class_path: str, init_args: dict[str, Any] | None = None, method: str = "answer"):
        self.model = load_backend(class_path, init_args, method=method)
        self._answer = getattr(self.model, method)

    def answer(self, image: np.ndarray, question: str) -> str:
        return str(self._answer(image, question))


def summary(results: dict) -> dict:
    """The headline numbers only (what metrics.json keeps)."""
    return {k: v for k, v in results.items() if k != "prompts"}


def make_vqa(spec: str = "oracle", init_args: dict[str, Any] | None = None) -> VQABackend:
    """"oracle" (Shapes oracle VQA) or a `package.module.Class` path with init_args."""
    if spec == "oracle":
        from evaluation.shapes_vqa import ShapesOracleVQA
        return ShapesOracleVQA(**(init_args or {}))
    return LocalVQA(spec, init_args)


def main(argv: list[str] | None = None) -> dict:
    """python -m evaluation.dpg <images_dir> --csv dpg_bench.csv [--vqa oracle|pkg.Class] ..."""
    import argparse

    parser = argparse.ArgumentParser(description="DPG-Bench scoring (official protocol)")
    parser.add_argument("images_dir", help="<item_id>.png 2x2 grids or <item_id>/ folders of images")
    parser.add_argument("--csv", required=True, help="dpg_bench.csv (official columns) or a Shapes-world file")
    parser.add_argument("--vqa", default="oracle", help="'oracle' or a class path with answer(image, question)")
    parser.add_argument("--vqa_args", default="{}", help="JSON init_args for the VQA class")
    parser.add_argument("--pic_num", type=int, default=4)
    parser.add_argument("--category_mode", default="official", choices=["official", "all_images"])
    parser.add_argument("--out", default=None, help="results folder (default: images_dir)")
    args = parser.parse_args(argv)
    prompts = load_dpg_csv(args.csv)
    images = load_image_folder(args.images_dir, prompts)
    results = DPGScorer(make_vqa(args.vqa, json.loads(args.vqa_args)), pic_num=args.pic_num,
                        category_mode=args.category_mode).score(images, prompts)
    path = write_results(results, args.out or args.images_dir)
    print(f"DPG-Bench score: {results['dpg']:.2f} over {results['num_prompts']} prompts -> {path}")
    return results


if __name__ == "__main__":
    main()
