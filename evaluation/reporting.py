"""What `main.py report` reads and draws: run/sweep discovery, metrics tables, PNG plots, image grids.

A run directory (what `fit` / `validate` / a sweep point leave behind) may hold, anywhere below it:
  metrics.json                      {"<benchmark>": {...}, "step": ..., "env": {...}} (validate)
  .../metrics.csv                   Lightning CSVLogger (train/loss, train/loss_scale_03, val/...)
  .../<00000>/metadata.jsonl + samples/*.png        GenEval output layout (per prompt)
  .../dpg_results.json              evaluation.dpg.write_results
  .../editcanvas_results.json and <id>/{sample.json, source.png, result.png, target.png}
A sweep directory holds sweep.json (commands/sweep.py) and one run directory per point.
Plots use matplotlib's Agg backend; image grids are composed with PIL (fast on CPU).
"""
from __future__ import annotations

import json
import math
import os
import platform
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.suite import NOT_BENCHMARKS, headline  # noqa: F401 (headline: used by commands.report)
from modules.common.metrics_csv import read_metrics_columns

SCALE_LOSS = re.compile(r"loss_scale_(\d+)")
BENCHMARK_COLUMN = re.compile(r"(geneval|dpg|editcanvas|fid|clip)", re.IGNORECASE)
BENCHMARK_FILES = {"dpg_results.json": "dpg", "editcanvas_results.json": "editcanvas"}


# ----------------------------------------------------------------------------- discovery
def find_geneval_folders(root: Path) -> list[Path]:
    """Folders in GenEval's output layout: <folder>/<5 digits>/metadata.jsonl."""
    parents = {p.parent.parent for p in root.rglob("metadata.jsonl") if re.fullmatch(r"\d{5}", p.parent.name)}
    return sorted(parents)


def classify_dir(root: Path) -> str:
    """'sweep' or 'run'; ValueError naming what the folder is when it is neither."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    if (root / "sweep.json").is_file():
        return "sweep"
    if (root / "metrics.json").is_file() or (root / "status.json").is_file() or any(root.rglob("metrics.csv")):
        return "run"
    if any(re.fullmatch(r"\d{5}", p.parent.name) for p in root.glob("*/metadata.jsonl")):
        raise ValueError(f"{root} is a GenEval results folder (<00000>/metadata.jsonl), not a run directory; "
                         f"pass the run directory that contains it (the one with metrics.json)")
    for name, bench in BENCHMARK_FILES.items():
        if (root / name).is_file():
            raise ValueError(f"{root} holds {bench} benchmark results ({name}), not a run directory; "
                             f"pass the run directory that contains it (the one with metrics.json)")
    if any(root.glob("*/sample.json")):
        raise ValueError(f"{root} is an EditCanvas sample folder, not a run directory")
    raise ValueError(f"{root} is not a run or sweep directory: no metrics.json, Lightning metrics.csv or sweep.json in it")


def read_csv_columns(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """column -> (steps, values) over the rows where the column is filled (Lightning's sparse CSV)."""
    return {k: (np.array([s for s, _ in v]), np.array([x for _, x in v]))
            for k, v in read_metrics_columns(path).items()}


def newest(paths) -> Path | None:
    paths = sorted(paths, key=lambda p: p.stat().st_mtime)
    return paths[-1] if paths else None


def load_run(root: Path) -> dict[str, Any]:
    """Everything the report needs from one run directory."""
    metrics = json.loads((root / "metrics.json").read_text()) if (root / "metrics.json").is_file() else {}
    if not metrics:   # a sweep point: its status.json carries the metrics it found
        status = json.loads((root / "status.json").read_text()) if (root / "status.json").is_file() else {}
        metrics = (status.get("metrics") or {}).get("json") or {}
    for name, bench in BENCHMARK_FILES.items():   # detailed result files fill missing sections
        path = next(iter(sorted(root.rglob(name))), None)
        if path is not None and bench not in metrics:
            data = json.loads(path.read_text())
            metrics[bench] = {k: v for k, v in data.items() if k not in ("prompts", "samples")}
    geneval = find_geneval_folders(root)
    summaries = [f / "summary.json" for f in geneval if (f / "summary.json").is_file()]
    if summaries and "geneval" not in metrics:   # evaluation/geneval.py writes it next to results.jsonl
        metrics["geneval"] = json.loads(summaries[0].read_text())
    csv_path = newest(root.rglob("metrics.csv"))
    edits = sorted(p.parent for p in root.rglob("sample.json") if (p.parent / "result.png").is_file())
    return {"root": root, "metrics": metrics, "csv": read_csv_columns(csv_path) if csv_path else {},
            "csv_path": csv_path, "geneval": geneval, "edits": edits}


# ----------------------------------------------------------------------------- tables
def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a/b/c": scalar}; lists of scalars kept as short strings, long lists dropped."""
    out: dict[str, Any] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(data, (int, float, str, bool)) or data is None:
        out[prefix] = data
    elif isinstance(data, list) and len(data) <= 8 and all(isinstance(v, (int, float, str)) for v in data):
        out[prefix] = ", ".join(map(str, data))
    return out


def benchmark_tables(metrics: dict) -> list[tuple[str, list[str], list[list[Any]]]]:
    """(title, header, rows) per benchmark: its scalars, then one table per nested section
    (tasks, categories, groups): rows = entries, columns = their fields."""
    tables = []
    for bench, section in metrics.items():
        if bench in NOT_BENCHMARKS or not isinstance(section, dict):
            continue
        scalars = [[k, v] for k, v in section.items() if not isinstance(v, (dict, list))]
        if scalars:
            tables.append((bench, ["metric", "value"], scalars))
        for name, sub in section.items():
            if not isinstance(sub, dict) or not sub:
                continue
            if all(isinstance(v, dict) for v in sub.values()):
                fields = list(dict.fromkeys(f for v in sub.values() for f, x in v.items() if not isinstance(x, (dict, list))))
                tables.append((f"{bench} / {name}", [name, *fields], [[k, *[v.get(f, "") for f in fields]] for k, v in sub.items()]))
            else:
                tables.append((f"{bench} / {name}", [name, "value"], [[k, v] for k, v in flatten(sub).items()]))
    return tables


def last_logged(run: dict) -> dict[str, float]:
    """Last logged value of the run's loss / NLL and benchmark columns ("last train/loss")."""
    return {f"last {k}": float(v[-1]) for k, (_, v) in sorted(run["csv"].items())
            if len(v) and ((("loss" in k or "nll" in k) and not SCALE_LOSS.search(k)) or BENCHMARK_COLUMN.search(k))}


# What a sweep is compared on first, when present: benchmark headlines and the validation NLL per
# visual token (unweighted, so comparable across loss reweighting settings; the weighted train
# loss is not).
SWEEP_SUMMARY_KEYS = ("geneval/overall", "geneval/single_object", "geneval/two_object", "geneval/counting",
                      "geneval/colors", "geneval/position", "geneval/color_attr", "dpg/dpg",
                      "editcanvas/overall", "last val/vision_nll")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_series(series: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str, ylabel: str = "",
                log_y: bool = False) -> Path | None:
    if not series:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=90)
    for name, (steps, values) in series.items():
        ax.plot(steps, values, label=name, marker="o" if len(steps) < 20 else None, markersize=3)
    if log_y and all((v > 0).all() for _, v in series.values()):
        ax.set_yscale("log")
    ax.set_xlabel("step"), ax.set_ylabel(ylabel), ax.set_title(title), ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run_plots(run: dict, out: Path, prefix: str = "") -> list[tuple[str, Path]]:
    """Loss curves, per-scale losses and benchmark scores against step, from metrics.csv."""
    csv_cols = run["csv"]
    losses = {k: v for k, v in csv_cols.items() if "loss" in k and not SCALE_LOSS.search(k)}
    scales = dict(sorted(((k, v) for k, v in csv_cols.items() if SCALE_LOSS.search(k)),
                         key=lambda kv: int(SCALE_LOSS.search(kv[0]).group(1))))
    benches = {k: v for k, v in csv_cols.items() if BENCHMARK_COLUMN.search(k) and "loss" not in k}
    made = []
    for title, series, name, log in [("loss curves", losses, "loss", True), ("per-scale loss", scales, "loss_scales", True),
                                     ("benchmark scores vs step", benches, "benchmarks", False)]:
        path = plot_series(series, out / f"{prefix}{name}.png", title, log_y=log)
        if path:
            made.append((title, path))
    return made


def sweep_plots(points: list[dict], runs: dict[str, dict], out: Path) -> list[tuple[str, Path]]:
    """Bars of each headline metric across points, and the points' train losses overlaid."""
    plt = _plt()
    made = []
    table = {p["dir"]: {**headline(runs[p["dir"]]["metrics"]), **last_logged(runs[p["dir"]])}
             for p in points if p["dir"] in runs}
    present = {k for row in table.values() for k in row}
    keys = [k for k in ("geneval/overall", "dpg/dpg", "editcanvas/overall", "last val/vision_nll") if k in present]
    keys = keys or sorted(k for k in present if not k.startswith("last "))[:8]
    if keys:
        fig, axes = plt.subplots(len(keys), 1, figsize=(6.4, 1.2 + 1.6 * len(keys)), dpi=90, squeeze=False)
        for ax, key in zip(axes[:, 0], keys):
            names = list(table)
            ax.barh(names, [table[n].get(key, np.nan) for n in names], color="tab:blue")
            ax.set_title(key, fontsize=9), ax.tick_params(labelsize=7)
        fig.tight_layout()
        fig.savefig(out / "sweep_metrics.png")
        plt.close(fig)
        made.append(("metrics across runs", out / "sweep_metrics.png"))
    losses = {}
    comparable = all("val/vision_nll" in run["csv"] for run in runs.values()) and runs
    for name, run in runs.items():
        loss_cols = [k for k in run["csv"] if "loss" in k and not SCALE_LOSS.search(k)]
        if comparable:
            losses[name] = run["csv"]["val/vision_nll"]
        elif loss_cols:
            key = "train/loss" if "train/loss" in loss_cols else sorted(loss_cols)[0]
            losses[f"{name} ({key})"] = run["csv"][key]
    title = "validation NLL per visual token across runs" if comparable else "training loss across runs"
    path = plot_series(losses, out / "sweep_losses.png", title, log_y=not comparable)
    if path:
        made.append((title, path))
    return made


# ----------------------------------------------------------------------------- image grids
def _label(image, text: str, width: int):
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (width, image.height + 14), "white")
    canvas.paste(image, (0, 14))
    ImageDraw.Draw(canvas).text((2, 1), text[: max(8, width // 6)], fill="black")
    return canvas


def geneval_grids(folder: Path, out: Path, prefix: str = "", per_tag: int = 4, thumb: int = 96) -> list[tuple[str, Path]]:
    """One PNG per prompt tag: a row per prompt (its samples side by side, prompt on top; a
    green/red frame when results.jsonl says the image is correct/wrong)."""
    from PIL import Image, ImageDraw

    verdict: dict[str, bool] = {}   # results.jsonl (evaluation/geneval.py): per-image "correct"
    if (folder / "results.jsonl").is_file():
        for line in (folder / "results.jsonl").read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                verdict["/".join(Path(record["filename"]).parts[-3:])] = bool(record["correct"])
    by_tag: dict[str, list[tuple[str, list[Path]]]] = defaultdict(list)
    for meta_path in sorted(folder.glob("[0-9]" * 5 + "/metadata.jsonl")):
        meta = json.loads(meta_path.read_text().splitlines()[0])
        samples = sorted((meta_path.parent / "samples").glob("*.png"))[:4]
        if samples and len(by_tag[meta.get("tag", "untagged")]) < per_tag:
            by_tag[meta.get("tag", "untagged")].append((meta.get("prompt", ""), samples))
    made = []
    for tag, rows in by_tag.items():
        cols = max(len(s) for _, s in rows)
        row_images = []
        for prompt, samples in rows:
            strip = Image.new("RGB", (cols * thumb, thumb), "white")
            for i, path in enumerate(samples):
                strip.paste(Image.open(path).convert("RGB").resize((thumb, thumb)), (i * thumb, 0))
                ok = verdict.get("/".join(path.parts[-3:]))   # <00000>/samples/<0000>.png
                if ok is not None:   # green frame: judged correct, red: wrong
                    ImageDraw.Draw(strip).rectangle([i * thumb, 0, (i + 1) * thumb - 1, thumb - 1],
                                                    outline=(0, 170, 0) if ok else (220, 0, 0), width=3)
            row_images.append(_label(strip, prompt, cols * thumb))
        path = out / f"{prefix}{tag}.png"
        stack_rows(row_images, cols * thumb).save(path)
        made.append((f"GenEval samples: {tag}", path))
    return made


def stack_rows(rows: list, width: int):
    """Labelled PIL strips stacked top to bottom on white."""
    from PIL import Image

    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    return sheet


def edit_grid(folders: list[Path], out: Path, prefix: str = "", limit: int = 12, thumb: int = 96) -> list[tuple[str, Path]]:
    """Before / after (/ target) rows for EditCanvas samples, the instruction on top of each row."""
    from PIL import Image

    rows = []
    for folder in folders[:limit]:
        sample = json.loads((folder / "sample.json").read_text())
        names = [n for n in ("source", "result", "target") if (folder / f"{n}.png").is_file()]
        strip = Image.new("RGB", (3 * thumb, thumb), "white")
        for i, name in enumerate(names):
            strip.paste(Image.open(folder / f"{name}.png").convert("RGB").resize((thumb, thumb)), (i * thumb, 0))
        text = f"[{sample.get('task', '?')}] " + sample.get("instruction", sample.get("prompt", ""))
        rows.append(_label(strip, text, 3 * thumb))
    if not rows:
        return []
    path = out / f"{prefix}edits.png"
    stack_rows(rows, 3 * thumb).save(path)
    return [("edits: source | result | target", path)]


# ----------------------------------------------------------------------------- environment
def environment(root: Path) -> dict[str, str]:
    env = {"python": platform.python_version(), "platform": platform.platform()}
    from importlib import metadata

    for package in ("torch", "lightning", "numpy"):   # metadata: importing lightning costs seconds
        try:
            env[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            env[package] = "not installed"
    try:
        import torch

        env["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    except ImportError:
        env["device"] = f"cpu ({os.cpu_count()} cores)"
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10)
        env["git_commit"] = commit.stdout.strip() + (" (uncommitted changes)" if dirty.stdout.strip() else "") \
            if commit.returncode == 0 else "unknown (not a git checkout)"
    except (OSError, subprocess.TimeoutExpired):
        env["git_commit"] = "unknown (git not available)"
    env["command"] = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
    return env
