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


@dataclass(frozen=True)
class Request:
    """One call the suite makes to its generator: `method(*args, seed=seed)` (no seed for answer)."""

    method: str
    args: tuple
    seed: int | None = None

    def __call__(self, gen: Generator, **kw) -> list:
        seeded = {} if self.seed is None else {"seed": self.seed}
        return getattr(gen, self.method)(*self.args, **seeded, **kw)


UNDERSTANDING_BATCH = 16  # questions per answer call (score_understanding's chunks)


def geneval_metas(cfg: SuiteConfig) -> list[dict]:
    from shapes.prompts import DEFAULT_PROMPTS_PATH
    from evaluation.geneval import load_metadata, spread_subset

    return spread_subset(load_metadata(cfg.geneval_prompts or DEFAULT_PROMPTS_PATH), cfg.geneval_limit)


def geneval_requests(cfg: SuiteConfig, metas: list[dict]) -> list[Request]:
    return [Request("text_to_image", ([m["prompt"]] * cfg.images_per_prompt, cfg.height, cfg.width), cfg.seed + i)
            for i, m in enumerate(metas)]


def run_geneval(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from evaluation.geneval import score_geneval, write_geneval_layout

    metas = geneval_metas(cfg)
    images = [req(gen) for req in geneval_requests(cfg, metas)]
    write_geneval_layout(out, metas, images)
    results = score_geneval(out, verbose=False)
    return {**results.summary(), **geneval_split(results.records, cfg)}


def dpg_suite_items(cfg: SuiteConfig) -> list[dict]:
    from shapes.dpg import dpg_items

    return dpg_items(cfg.dpg_prompts, seed=cfg.seed, width=cfg.width, height=cfg.height, **scene_kwargs(cfg))


def dpg_requests(cfg: SuiteConfig, items: list[dict]) -> list[Request]:
    return [Request("text_to_image", ([it["prompt"]] * 4, cfg.height, cfg.width), cfg.seed + 7919 + i)
            for i, it in enumerate(items)]


def run_dpg(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from shapes.dpg import write_dpg_csv
    from evaluation.dpg import DPGScorer, prompts_from_items, write_results
    from evaluation.grids import image_grid
    from evaluation.shapes_vqa import ShapesOracleVQA

    items = dpg_suite_items(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_dpg_csv(items, out / "dpg_questions.csv")
    images = {}
    for item, req in zip(items, dpg_requests(cfg, items)):
        four = req(gen)
        images[item["item_id"]] = four
        image_grid(four, ncols=2, pad=0).save(out / f"{item['item_id']}.png")  # official: a 2x2 grid
    results = DPGScorer(ShapesOracleVQA()).score(images, prompts_from_items(items))
    write_results(results, out)
    return {k: v for k, v in results.items() if k != "prompts"}


def editcanvas_parts(cfg: SuiteConfig) -> tuple[list[dict], list[tuple[list[dict], Request]]]:
    """(every sample, [(samples, the edit call that makes them)]): instruction edits, then
    subject-driven ones (the reference image is the "source", the prompt the instruction)."""
    from evaluation.editcanvas import sample_images, shapes_editcanvas_set

    samples = shapes_editcanvas_set(seed=cfg.seed, per_task=cfg.editcanvas_per_task, width=cfg.width,
                                    height=cfg.height)
    editing = [s for s in samples if s["kind"] == "editing"]
    subject = [s for s in samples if s["kind"] != "editing"]
    calls = []
    if editing:
        calls.append((editing, Request("edit", ([sample_images(s)["source"] for s in editing],
                                                [s["instruction"] for s in editing]), cfg.seed)))
    if subject:
        calls.append((subject, Request("edit", ([sample_images(s)["source"] for s in subject],
                                                [s["prompt"] for s in subject]), cfg.seed + 1)))
    return samples, calls


def run_editcanvas(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from evaluation.editcanvas import EditCanvasScorer, summary, write_results, write_sample_folder

    samples, calls = editcanvas_parts(cfg)
    results: dict[str, np.ndarray] = {}
    for part, req in calls:
        results.update({s["id"]: im for s, im in zip(part, req(gen))})
    for s in samples:
        write_sample_folder(out, s, results[s["id"]])
    scored = EditCanvasScorer().score(samples, results)
    write_results(scored, out)
    return summary(scored)


def understanding_suite_items(cfg: SuiteConfig) -> list[dict]:
    from evaluation.understanding import understanding_items

    return understanding_items(cfg.understanding_scenes, seed=cfg.seed, width=cfg.width, height=cfg.height,
                               **scene_kwargs(cfg))


def run_understanding(gen: Generator, out: Path, cfg: SuiteConfig) -> dict:
    from evaluation.understanding import score_understanding

    items = understanding_suite_items(cfg)
    res = score_understanding(items, gen.answer, batch_size=UNDERSTANDING_BATCH)
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


# ---------------------------------------------------------------- several processes
# run_suite_sharded: every rank generates its share of the suite's calls, rank zero gathers them
# and scores exactly as one process would (plan -> generate -> score).

def suite_requests(gen: Generator, cfg: SuiteConfig) -> list[Request]:
    """Every generator call run_suite(gen, ..., cfg) makes, in its order (nothing generated)."""
    reqs: list[Request] = []
    if cfg.geneval_limit != 0:
        reqs += geneval_requests(cfg, geneval_metas(cfg))
    if cfg.dpg_prompts > 0:
        reqs += dpg_requests(cfg, dpg_suite_items(cfg))
    if cfg.editcanvas_per_task > 0:
        reqs += [req for _, req in editcanvas_parts(cfg)[1]]
    if cfg.understanding_scenes > 0:
        items = understanding_suite_items(cfg)
        reqs += [Request("answer", ([it["image"] for it in items[i:i + UNDERSTANDING_BATCH]],
                                    [it["question"] for it in items[i:i + UNDERSTANDING_BATCH]]))
                 for i in range(0, len(items), UNDERSTANDING_BATCH)]
    if cfg.interleaved_videos > 0 and hasattr(gen, "continue_story"):
        from evaluation.interleaved import interleaved_items

        items = interleaved_items(cfg.interleaved_videos, seed=cfg.seed, width=cfg.width, height=cfg.height)
        reqs.append(Request("continue_story", ([it["caption"] for it in items], [it["image"] for it in items]),
                            cfg.seed))
    return reqs


def _takes_offset(gen: Generator, method: str) -> bool:
    import inspect

    return "offset" in inspect.signature(getattr(gen, method)).parameters


def split_requests(gen: Generator, requests: list[Request]) -> list[tuple[int, int, Request]]:
    """(request index, offset, piece): each call cut into pieces of the generator's `batch_size`
    items, aligned to its own batches, when its method takes `offset` (the piece is then seeded by
    its position in the whole call: ARGenerator) or needs no seed (answer: greedy); otherwise whole."""
    size = getattr(gen, "batch_size", None)
    pieces = []
    for r, req in enumerate(requests):
        lists = 1 if req.method == "text_to_image" else 2  # leading per-item arguments
        n = len(req.args[0])
        if not size or n <= size or (req.seed is not None and not _takes_offset(gen, req.method)):
            pieces.append((r, 0, req))
            continue
        for k in range(0, n, size):
            args = tuple(a[k:k + size] for a in req.args[:lists]) + req.args[lists:]
            pieces.append((r, k, Request(req.method, args, req.seed)))
    return pieces


def generate_share(gen: Generator, requests: list[Request], rank: int, world: int) -> dict[str, Any]:
    """This rank's pieces (piece j goes to rank j % world): {"pieces": [(request, offset, outputs)]},
    or {"error": "..."} when generation failed here (gathered, so every rank raises, none hangs)."""
    out = []
    try:
        for j, (r, k, piece) in enumerate(split_requests(gen, requests)):
            if j % world == rank:
                out.append((r, k, piece(gen, **({"offset": k} if k and piece.seed is not None else {}))))
    except Exception as err:  # noqa: BLE001 - re-raised on every rank after the gather
        import traceback

        return {"error": f"rank {rank}: {type(err).__name__}: {err}\n{traceback.format_exc()}"}
    return {"pieces": out}


def assemble(requests: list[Request], shares: list[dict[str, Any]]) -> list[list]:
    """Every request's outputs, its pieces put back in order from all ranks' shares."""
    errors = [s["error"] for s in shares if "error" in s]
    if errors:
        raise RuntimeError("benchmark generation failed on " + "; ".join(errors))
    parts: dict[int, list[tuple[int, list]]] = {r: [] for r in range(len(requests))}
    for share in shares:
        for r, k, outputs in share["pieces"]:
            parts[r].append((k, list(outputs)))
    results = []
    for r, req in enumerate(requests):
        joined = [o for _, outs in sorted(parts[r], key=lambda p: p[0]) for o in outs]
        if len(joined) != len(req.args[0]):
            raise RuntimeError(f"request {r} ({req.method}) gathered {len(joined)} outputs for {len(req.args[0])} items")
        results.append(joined)
    return results


def _signature(method: str, args: tuple, seed: int | None) -> tuple:
    def one(a):
        if isinstance(a, (list, tuple)):
            return tuple(one(x) for x in a)
        return ("array", a.shape) if isinstance(a, np.ndarray) else a
    return method, one(args), seed


class PrefetchedGenerator:
    """Serves run_suite's calls, in order, from outputs generated before (run_suite_sharded); a
    call other than the next planned one is an error, never a silently wrong image."""

    def __init__(self, requests: list[Request], results: list[list]):
        self._queue = list(zip(requests, results))

    def _serve(self, method: str, args: tuple, seed: int | None = None) -> list:
        if not self._queue:
            raise RuntimeError(f"unplanned generator call {method}: the suite made more calls than suite_requests")
        req, res = self._queue.pop(0)
        if _signature(req.method, req.args, req.seed) != _signature(method, args, seed):
            raise RuntimeError(f"generator call {method} (seed {seed}) is not the planned {req.method} (seed {req.seed})")
        return res

    def text_to_image(self, prompts, height, width, seed):
        return self._serve("text_to_image", (prompts, height, width), seed)

    def edit(self, sources, instructions, seed):
        return self._serve("edit", (sources, instructions), seed)

    def answer(self, images, questions):
        return self._serve("answer", (images, questions))


class _PrefetchedStories(PrefetchedGenerator):
    def continue_story(self, captions, images, seed):
        return self._serve("continue_story", (captions, images), seed)


def run_suite_sharded(gen: Generator, out_dir: str | Path, cfg: SuiteConfig | None, rank: int, world: int,
                      all_gather=None, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """run_suite across `world` processes: every rank calls this with the same `gen` weights and
    config; each generates its share, `all_gather(obj) -> [obj of rank 0, 1, ...]` (e.g.
    torch.distributed.all_gather_object) collects them, and rank zero writes and scores the suite
    exactly as run_suite(gen, ...) would in one process (returns its metrics; other ranks None)."""
    cfg = cfg or SuiteConfig()
    if world == 1:
        return run_suite(gen, out_dir, cfg, extra)
    requests = suite_requests(gen, cfg)
    shares = all_gather(generate_share(gen, requests, rank, world))
    results = assemble(requests, shares)  # raises on every rank if any rank failed
    if rank != 0:
        return None
    served = (_PrefetchedStories if hasattr(gen, "continue_story") else PrefetchedGenerator)(requests, results)
    metrics = run_suite(served, out_dir, cfg, extra)
    if served._queue:
        raise RuntimeError(f"{len(served._queue)} planned generator calls were never made by run_suite")
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
