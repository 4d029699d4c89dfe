"""EditCanvas-style benchmark: task taxonomy, the default Shapes set, scoring and aggregation.

EditCanvas (NF, REFERENCE.md "Results to anchor against") has 56 tasks: 40 editing tasks in five
groups (local, text, global, view, style) scored like GEdit-Bench, and 16 subject-driven tasks in
four groups (object, abstract, human, visual style) scored like OmniContext. Its data is not
published; this module rebuilds the protocol on the Shapes world:

  group        kind     Shapes tasks
  local        editing  add, remove, recolor, replace, move
  global       editing  background
  object       subject  subject (a reference object placed in a new scene)
Groups the world cannot express (no text, camera or style in it): text, view, style (editing)
and abstract, human, visual style (subject-driven). They are listed in results as "not covered".

Scores (0-10): editing samples get SC, PQ and overall O = sqrt(SC * PQ) (GEdit-Bench, VIEScore);
subject-driven samples get prompt following PF, subject consistency SubC and O = sqrt(PF * SubC)
(OmniContext). Aggregation: mean per task and per group, then the unweighted mean over the
covered groups is the EditCanvas overall (REFERENCE.md: "averaged per group, then over groups").
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from evaluation.editcanvas_judges import EditJudge

EDITING_GROUPS = ("local", "text", "global", "view", "style")
SUBJECT_GROUPS = ("object", "abstract", "human", "visual style")
TASK_GROUPS: dict[str, tuple[str, str]] = {          # task -> (kind, group)
    "add": ("editing", "local"), "remove": ("editing", "local"), "recolor": ("editing", "local"),
    "replace": ("editing", "local"), "move": ("editing", "local"),
    "background": ("editing", "global"), "subject": ("subject", "object"),
}
NOT_COVERED = {"editing": ["text", "view", "style"], "subject": ["abstract", "human", "visual style"]}
SET_FILE = "editcanvas.jsonl"


# ---------------------------------------------------------------------------- the default set
def shapes_editcanvas_set(seed: int = 0, per_task: int = 4, width: int = 64, height: int = 64,
                          tasks: Sequence[str] = tuple(TASK_GROUPS)) -> list[dict]:
    """`per_task` samples of every task, deterministic per seed (sample j of task t uses
    rng([seed, t, j])). Samples are JSON-able: scenes as dicts, images rendered on demand."""
    from shapes.edits import EDIT_KINDS, sample_edit, sample_subject_pair

    unknown = [t for t in tasks if t not in TASK_GROUPS]
    if unknown:
        raise ValueError(f"unknown EditCanvas task(s) {unknown}; choose from {', '.join(TASK_GROUPS)}")
    samples = []
    for t_index, task in enumerate(TASK_GROUPS):
        if task not in tasks:
            continue
        kind, group = TASK_GROUPS[task]
        for j in range(per_task):
            rng = np.random.default_rng([seed, t_index, j])
            base = {"id": f"{task}_{j:04d}", "task": task, "kind": kind, "group": group,
                    "width": width, "height": height}
            if kind == "editing":
                assert task in EDIT_KINDS, task
                pair = sample_edit(rng, width, height, kinds=[task])
                samples.append({**base, "instruction": pair.instruction, "source": pair.source.to_dict(),
                                "target": pair.target.to_dict(), "meta": pair.meta})
            else:
                pair = sample_subject_pair(rng, width, height)
                samples.append({**base, "prompt": pair.prompt, "subject": pair.subject,
                                "source": pair.source.to_dict(), "target": pair.target.to_dict()})
    return samples


def sample_images(sample: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Rendered source (the edit input / the subject reference) and target (ground truth)."""
    from shapes.render import render
    from shapes.scene import Scene

    w, h = sample["width"], sample["height"]
    return {"source": render(Scene.from_dict(sample["source"]), w, h).image,
            "target": render(Scene.from_dict(sample["target"]), w, h).image}


def write_set(samples: Sequence[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    return path


def read_set(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"EditCanvas set not found: {path}")
    samples = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    bad = [s.get("id") for s in samples if "task" not in s or "kind" not in s]
    if bad:
        raise ValueError(f"{path} is not an EditCanvas set: samples {bad[:3]} have no task/kind")
    return samples


# ---------------------------------------------------------------------------- scoring
def score_sample(judge: EditJudge, sample: Mapping[str, Any], result: np.ndarray,
                 source: np.ndarray | None = None) -> dict:
    """One sample -> its row: id, task, group, kind, sub-scores and overall O (0-10)."""
    source = sample_images(sample)["source"] if source is None else source
    row = {k: sample[k] for k in ("id", "task", "group", "kind")}
    if sample["kind"] == "editing":
        s = judge.score_edit(source, result, dict(sample))
        row.update(sc=s["sc"], pq=s["pq"], overall=math.sqrt(max(s["sc"], 0) * max(s["pq"], 0)))
    else:
        s = judge.score_subject([source], result, dict(sample))
        row.update(pf=s["pf"], consistency=s["consistency"],
                   overall=math.sqrt(max(s["pf"], 0) * max(s["consistency"], 0)))
    row["parts"] = s.get("parts", {})
    return row


def _mean_fields(rows: list[dict], fields: Sequence[str]) -> dict[str, float]:
    return {f: float(np.mean([r[f] for r in rows])) for f in fields if all(f in r for r in rows)}


def aggregate(rows: list[dict]) -> dict:
    """Per task, per group, then over groups (unweighted); editing and subject overalls too."""
    fields = ("sc", "pq", "pf", "consistency", "overall")
    by_task, by_group = defaultdict(list), defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
        by_group[r["group"]].append(r)
    groups = {g: {**_mean_fields(rs, fields), "n": len(rs), "kind": rs[0]["kind"]} for g, rs in by_group.items()}
    kind_overall = {kind: float(np.mean([v["overall"] for v in groups.values() if v["kind"] == kind]))
                    for kind in ("editing", "subject") if any(v["kind"] == kind for v in groups.values())}
    return {
        "benchmark": "editcanvas",
        "overall": float(np.mean([v["overall"] for v in groups.values()])) if groups else float("nan"),
        "editing_overall": kind_overall.get("editing", float("nan")),
        "subject_overall": kind_overall.get("subject", float("nan")),
        "groups": groups,
        "tasks": {t: {**_mean_fields(rs, fields), "n": len(rs), "group": rs[0]["group"]} for t, rs in by_task.items()},
        "not_covered": NOT_COVERED,
        "num_samples": len(rows),
    }


class EditCanvasScorer:
    """`score(samples, results) -> results dict` with an injected judge (EditJudge)."""

    def __init__(self, judge: EditJudge | None = None):
        if judge is None:
            from evaluation.editcanvas_judges import ShapesOracleJudge
            judge = ShapesOracleJudge()
        self.judge = judge

    def score(self, samples: Sequence[Mapping[str, Any]], results: Mapping[str, np.ndarray],
              sources: Mapping[str, np.ndarray] | None = None) -> dict:
        missing = [s["id"] for s in samples if s["id"] not in results]
        if missing:
            raise ValueError(f"no result image for EditCanvas sample(s) {missing[:5]} ({len(missing)} missing)")
        rows = [score_sample(self.judge, s, np.asarray(results[s["id"]]),
                             None if sources is None else sources.get(s["id"])) for s in samples]
        return {**aggregate(rows), "samples": rows}


# ---------------------------------------------------------------------------- on-disk layout
def write_sample_folder(out_dir: str | Path, sample: Mapping[str, Any], result: np.ndarray | None = None) -> Path:
    """<out>/<id>/: sample.json, source.png, target.png and (when given) result.png."""
    from PIL import Image

    folder = Path(out_dir) / sample["id"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sample.json").write_text(json.dumps(dict(sample), indent=1))
    for name, image in sample_images(sample).items():
        Image.fromarray(image).save(folder / f"{name}.png")
    if result is not None:
        Image.fromarray(np.asarray(result, np.uint8)).save(folder / "result.png")
    return folder


def load_results_folder(out_dir: str | Path) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Samples and result images back from write_sample_folder's layout."""
    from PIL import Image

    out_dir = Path(out_dir)
    folders = sorted(p.parent for p in out_dir.glob("*/sample.json"))
    if not folders:
        raise FileNotFoundError(f"{out_dir} holds no EditCanvas samples (<id>/sample.json)")
    samples = [json.loads((f / "sample.json").read_text()) for f in folders]
    results = {s["id"]: np.asarray(Image.open(f / "result.png").convert("RGB"))
               for s, f in zip(samples, folders) if (f / "result.png").is_file()}
    return samples, results


def write_results(results: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "editcanvas_results.json"
    path.write_text(json.dumps(results, indent=1, default=float))
    return path


def summary(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "samples"}


def make_judge(spec: str = "oracle", init_args: dict[str, Any] | None = None) -> EditJudge:
    """"oracle" (ShapesOracleJudge) or a VLM class path with judge(images, prompt) -> str."""
    from evaluation.editcanvas_judges import ShapesOracleJudge, VLMJudge

    return ShapesOracleJudge(**(init_args or {})) if spec == "oracle" else VLMJudge(spec, init_args)


def main(argv: list[str] | None = None) -> dict:
    """python -m evaluation.editcanvas write-set <dir> [--seed 0 --per_task 4 --size 64]
       python -m evaluation.editcanvas score <dir> [--judge oracle|pkg.VLM --judge_args '{}']"""
    import argparse

    parser = argparse.ArgumentParser(description="EditCanvas-style benchmark on the Shapes world")
    sub = parser.add_subparsers(dest="action", required=True)
    write = sub.add_parser("write-set", help="write the default Shapes set: <dir>/<id>/{sample.json,source.png,target.png}")
    write.add_argument("out_dir")
    write.add_argument("--seed", type=int, default=0)
    write.add_argument("--per_task", type=int, default=4)
    write.add_argument("--size", type=int, default=64)
    score = sub.add_parser("score", help="score <dir>/<id>/result.png against the samples")
    score.add_argument("out_dir")
    score.add_argument("--judge", default="oracle")
    score.add_argument("--judge_args", default="{}")
    args = parser.parse_args(argv)
    if args.action == "write-set":
        samples = shapes_editcanvas_set(args.seed, args.per_task, args.size, args.size)
        for sample in samples:
            write_sample_folder(args.out_dir, sample)
        write_set(samples, Path(args.out_dir) / SET_FILE)
        print(f"{len(samples)} EditCanvas samples -> {args.out_dir}")
        return {"num_samples": len(samples)}
    samples, results = load_results_folder(args.out_dir)
    out = EditCanvasScorer(make_judge(args.judge, json.loads(args.judge_args))).score(samples, results)
    path = write_results(out, args.out_dir)
    print(f"EditCanvas overall {out['overall']:.3f} (editing {out['editing_overall']:.3f}, "
          f"subject {out['subject_overall']:.3f}) -> {path}")
    return out


if __name__ == "__main__":
    main()
