"""The benchmark suite: GenEval, DPG, EditCanvas and understanding for one model, in one call.

`run_suite(generator, out_dir, config)` asks a generator (anything with `text_to_image`,
`edit`, `answer`) for images and answers, writes each benchmark's official layout under
`out_dir`, scores it with the evaluators (which never know which model made the images) and
writes one `metrics.json`. The evaluation callback (periodically during `fit`, on a prompt
subset) and `python main.py validate` (the full suite) both call it; nothing else does.

Layout written (what `main.py report` reads, evaluation/reporting.py):
    out_dir/geneval/<00000>/metadata.jsonl, samples/0000.png ...; results.jsonl; summary.json
    out_dir/dpg/<item_id>.png (2×2 grid, official), dpg_questions.csv, dpg_results.json
    out_dir/editcanvas/<id>/{sample.json, source.png, target.png, result.png}; editcanvas_results.json
    out_dir/understanding.json
    out_dir/interleaved/interleaved.json, strip.png (a generated story: first frame, then the
                                  model's frame, captioned with the texts)
    out_dir/metrics.json          {"geneval": summary, "dpg": ..., "editcanvas": ..., "understanding": ...}

metrics.json's "geneval" also holds "seen" and "unseen": the same summary (overall, tasks,
task_counts, images, prompts) over the prompts whose text appears among the training captions
(SuiteConfig.train_captions) and over the others; "split" says which decided: "captions", or
"rule" (the world's held-out combinations, shapes/split.py) when no training shards are given.
"held_out" is the summary over the prompts the rule holds out (a subset of "unseen").
"""
from __future__ import annotations

import functools
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Generator(Protocol):
    def text_to_image(self, prompts: list[str], height: int, width: int, seed: int) -> list[np.ndarray]: ...
    def edit(self, sources: list[np.ndarray], instructions: list[str], seed: int) -> list[np.ndarray]: ...
    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]: ...


@dataclass
class SuiteConfig:
    """Sizes of each benchmark (a benchmark with 0 items is skipped).

    geneval_prompts: GenEval-format jsonl (default: the world's 553 prompts); geneval_limit takes
    every k-th prompt so that a subset keeps the six tags' proportions. train_captions: shard
    directories the model trained on (raw or pretokenised); a GenEval prompt is "seen" if its text
    is among their captions (None: the world's split rule decides). min_object_px: smallest object
    side of the DPG and understanding scenes (None: the world's default), so a model trained on
    larger objects is asked for scenes like the ones it learned."""

    geneval_prompts: str | None = None
    geneval_limit: int | None = None
    images_per_prompt: int = 4
    dpg_prompts: int = 16
    editcanvas_per_task: int = 2
    understanding_scenes: int = 8
    width: int = 64
    height: int = 64
    seed: int = 0
    train_captions: list[str] | None = None
    min_object_px: float | None = None
    interleaved_videos: int = 0  # held-out world videos continued (evaluation/interleaved.py); needs continue_story


def scene_kwargs(cfg: SuiteConfig) -> dict[str, Any]:
    return {} if cfg.min_object_px is None else {"min_object_px": cfg.min_object_px}


@functools.lru_cache(maxsize=4)
def _caption_texts(shard_dirs: tuple[str, ...]) -> frozenset[str]:
    """Training captions, read once per process (the periodic suite asks at every run)."""
    from evaluation.geneval import caption_texts

    return frozenset(caption_texts(shard_dirs))


def geneval_split(records: list[dict], cfg: SuiteConfig) -> dict[str, Any]:
    """{"seen": summary, "unseen": summary, "split": "captions" | "rule"} for metrics.json."""
    from evaluation.geneval import split_summaries

    texts = set(_caption_texts(tuple(str(d) for d in cfg.train_captions))) if cfg.train_captions else None
    parts = split_summaries(records, texts)
    return {"seen": parts["seen"], "unseen": parts["unseen"], "held_out": parts["held_out"], "split": parts["source"]}


def run_geneval(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from shapes.prompts import DEFAULT_PROMPTS_PATH
    from evaluation.geneval import load_metadata, score_geneval, spread_subset, write_geneval_layout

    metas = spread_subset(load_metadata(cfg.geneval_prompts or DEFAULT_PROMPTS_PATH), cfg.geneval_limit)
    images = []
    for i, meta in enumerate(metas):
        images.append(gen.text_to_image([meta["prompt"]] * cfg.images_per_prompt, cfg.height, cfg.width,
                                        seed=cfg.seed + i))
    write_geneval_layout(out, metas, images)
    results = score_geneval(out, verbose=False)
    return {**results.summary(), **geneval_split(results.records, cfg)}


def run_dpg(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from shapes.dpg import dpg_items, write_dpg_csv
    from evaluation.dpg import DPGScorer, prompts_from_items, write_results
    from evaluation.grids import image_grid
    from evaluation.shapes_vqa import ShapesOracleVQA

    items = dpg_items(cfg.dpg_prompts, seed=cfg.seed, width=cfg.width, height=cfg.height, **scene_kwargs(cfg))
    out.mkdir(parents=True, exist_ok=True)
    write_dpg_csv(items, out / "dpg_questions.csv")
    images = {}
    for i, item in enumerate(items):
        four = gen.text_to_image([item["prompt"]] * 4, cfg.height, cfg.width, seed=cfg.seed + 7919 + i)
        images[item["item_id"]] = four
        image_grid(four, ncols=2, pad=0).save(out / f"{item['item_id']}.png")  # official: a 2x2 grid
    results = DPGScorer(ShapesOracleVQA()).score(images, prompts_from_items(items))
    write_results(results, out)
    return {k: v for k, v in results.items() if k != "prompts"}


def run_editcanvas(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from evaluation.editcanvas import EditCanvasScorer, sample_images, shapes_editcanvas_set, summary, \
        write_results, write_sample_folder

    samples = shapes_editcanvas_set(seed=cfg.seed, per_task=cfg.editcanvas_per_task, width=cfg.width,
                                    height=cfg.height)
    results: dict[str, np.ndarray] = {}
    editing = [s for s in samples if s["kind"] == "editing"]
    subject = [s for s in samples if s["kind"] != "editing"]
    if editing:
        edited = gen.edit([sample_images(s)["source"] for s in editing], [s["instruction"] for s in editing],
                          seed=cfg.seed)
        results.update({s["id"]: im for s, im in zip(editing, edited)})
    if subject:  # subject-driven: the reference image is the "source", the prompt the instruction
        made = gen.edit([sample_images(s)["source"] for s in subject], [s["prompt"] for s in subject],
                        seed=cfg.seed + 1)
        results.update({s["id"]: im for s, im in zip(subject, made)})
    for s in samples:
        write_sample_folder(out, s, results[s["id"]])
    scored = EditCanvasScorer().score(samples, results)
    write_results(scored, out)
    return summary(scored)


def run_understanding(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from evaluation.understanding import score_understanding, understanding_items

    items = understanding_items(cfg.understanding_scenes, seed=cfg.seed, width=cfg.width, height=cfg.height,
                                **scene_kwargs(cfg))
    res = score_understanding(items, gen.answer)
    out.write_text(json.dumps({k: v for k, v in res.items()}, indent=1, default=str))
    return {k: v for k, v in res.items() if k not in ("records",)}


def run_interleaved(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from evaluation.grids import image_grid
    from evaluation.interleaved import interleaved_items, score_interleaved

    if not hasattr(gen, "continue_story"):
        return {"skipped": f"{type(gen).__name__} writes no stories (no continue_story)"}
    items = interleaved_items(cfg.interleaved_videos, seed=cfg.seed, width=cfg.width, height=cfg.height)
    kept: dict[int, np.ndarray | None] = {}

    def continue_fn(captions, frames, seed):
        outs = gen.continue_story(captions, frames, seed)
        kept.update({i: im for i, (_, im) in enumerate(outs)})
        return outs

    res = score_interleaved(items, continue_fn, seed=cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    strip, texts = [], []
    for i, (it, rec) in enumerate(zip(items[:4], res["records"])):
        blank = np.zeros_like(it["image"])
        strip += [it["image"], kept.get(i) if kept.get(i) is not None else blank]
        texts += [it["caption"][:40], rec["text"][:40] or "(no text)"]
    if strip:
        image_grid(strip, ncols=2, captions=texts).save(out / "strip.png")
    (out / "interleaved.json").write_text(json.dumps(res, indent=1, default=str))
    return {k: v for k, v in res.items() if k != "records"}


def run_suite(gen: Generator, out_dir: str | Path, cfg: SuiteConfig | None = None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every benchmark whose size is > 0; returns and writes metrics.json."""
    cfg = cfg or SuiteConfig()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics: dict[str, Any] = {"suite": asdict(cfg), **(extra or {})}
    runs = [("geneval", run_geneval, cfg.geneval_limit != 0, out_dir / "geneval"),
            ("dpg", run_dpg, cfg.dpg_prompts > 0, out_dir / "dpg"),
            ("editcanvas", run_editcanvas, cfg.editcanvas_per_task > 0, out_dir / "editcanvas"),
            ("understanding", run_understanding, cfg.understanding_scenes > 0, out_dir / "understanding.json"),
            ("interleaved", run_interleaved, cfg.interleaved_videos > 0, out_dir / "interleaved")]
    for name, fn, enabled, where in runs:
        if not enabled:
            continue
        start = time.perf_counter()
        metrics[name] = fn(gen, where, cfg)
        metrics[name]["seconds"] = round(time.perf_counter() - start, 1)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    return metrics


def rescore_suite(out_dir: str | Path) -> dict[str, Any]:
    """Score a finished suite folder again from the images it wrote (GenEval layout, DPG 2x2
    grids + question CSV, EditCanvas sample folders) with today's evaluators, and rewrite its
    metrics.json (the scores as first written are kept under "previous"). For when an evaluator is fixed after
    runs were made: nothing is generated again. Understanding (exact-match text) is left as is."""
    from evaluation.dpg import DPGScorer, load_dpg_csv, load_image_folder, write_results as write_dpg
    from evaluation.editcanvas import EditCanvasScorer, load_results_folder, summary, write_results as write_edits
    from evaluation.geneval import score_geneval
    from evaluation.shapes_vqa import ShapesOracleVQA

    out_dir = Path(out_dir)
    path = out_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{out_dir} has no metrics.json: not a benchmark suite folder (run_suite writes one)")
    metrics = json.loads(path.read_text())
    # the scores as first written, kept across repeated rescoring
    previous = metrics.get("previous") or {k: metrics[k] for k in ("geneval", "dpg", "editcanvas") if k in metrics}
    if "geneval" in metrics:
        results = score_geneval(out_dir / "geneval", verbose=False)
        known = set(SuiteConfig.__dataclass_fields__)
        cfg = SuiteConfig(**{k: v for k, v in metrics.get("suite", {}).items() if k in known})
        metrics["geneval"] = {**results.summary(), **geneval_split(results.records, cfg),
                              "seconds": metrics["geneval"].get("seconds")}
    if "dpg" in metrics:  # the official layout: each prompt's 4 images as one 2x2 grid + the question CSV
        prompts = load_dpg_csv(out_dir / "dpg" / "dpg_questions.csv")
        images = load_image_folder(out_dir / "dpg", prompts)
        results = DPGScorer(ShapesOracleVQA()).score(images, prompts)
        write_dpg(results, out_dir / "dpg")
        metrics["dpg"] = {**{k: v for k, v in results.items() if k != "prompts"}, "seconds": metrics["dpg"].get("seconds")}
    if "editcanvas" in metrics:
        samples, results = load_results_folder(out_dir / "editcanvas")
        scored = EditCanvasScorer().score(samples, results)
        write_edits(scored, out_dir / "editcanvas")
        metrics["editcanvas"] = {**summary(scored), "seconds": metrics["editcanvas"].get("seconds")}
    metrics["previous"] = previous
    path.write_text(json.dumps(metrics, indent=1, default=float))
    return metrics


# metrics.json bookkeeping (not scores), and per-benchmark counts (not scores either)
NOT_BENCHMARKS = ("env", "suite", "step", "epoch", "previous", "settings", "scales", "sampling", "checkpoint",
                  "untrained_scales", "untrained_scale_counts", "trained_scale_counts", "alpha", "resolution",
                  "baseline")
COUNT_KEYS = ("n", "num_prompts", "num_samples", "images", "prompts", "seconds", "items", "events_stated")
HEADLINE_NAMES = {"dpg/dpg": "dpg/score"}   # DPG's own name for its score is "dpg"


def headline(metrics: dict[str, Any]) -> dict[str, float]:
    """The scalars of a metrics.json that go into logs, tables and reports: every numeric
    top-level value of each benchmark section as "<benchmark>/<key>" (counts left out; DPG's
    score as "dpg/score"), GenEval's per-task scores as "geneval/<task>", and sections that
    record {"status": "ok", "value": x} (FID/CLIP) by their value."""
    out: dict[str, float] = {}
    for bench, section in metrics.items():
        if bench in NOT_BENCHMARKS:
            continue
        if isinstance(section, (int, float)) and not isinstance(section, bool):
            out[bench] = float(section)
            continue
        if not isinstance(section, dict):
            continue
        for key, value in section.items():
            name = HEADLINE_NAMES.get(f"{bench}/{key}", f"{bench}/{key}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in COUNT_KEYS:
                out[name] = float(value)
            elif isinstance(value, dict) and value.get("status") == "ok" and "value" in value:
                out[name] = float(value["value"])
        if bench == "geneval":
            for task, score in (section.get("tasks") or {}).items():
                out[f"geneval/{task}"] = float(score)
            for part in ("seen", "unseen", "held_out"):  # the held-out split (shapes/split.py)
                summary = section.get(part) or {}
                if summary.get("overall") is not None:
                    out[f"geneval/{part}/overall"] = float(summary["overall"])
                    for task, score in summary.get("tasks", {}).items() if part != "held_out" else ():
                        out[f"geneval/{part}/{task}"] = float(score)
    return out
