"""What `main.py report` reads and draws: run/sweep discovery, metrics tables, PNG plots, image grids.

A run directory (what `fit` / `validate` / a sweep point leave behind) may hold, anywhere below it:
  metrics.json                      {"<benchmark>": {...}, "step": ..., "env": {...}} (validate)
  .../metrics.csv                   Lightning CSVLogger (train/loss, train/loss_scale_03, val/...)
  .../<00000>/metadata.jsonl + samples/*.png        GenEval output layout (per prompt)
  .../dpg_results.json              evaluation.dpg.write_results
  .../editcanvas_results.json and <id>/{sample.json, source.png, result.png, target.png}
A sweep directory holds sweep.json (commands/sweep.py) and one run directory per point.
Baselines (the untrained model, prompt-agnostic random scenes, ground-truth renders) are suite
folders in the same layout; their GenEval prompts are matched to the trained run's by text.
A run root (the quickstart's folder) holds one Lightning metrics.csv per training stage, at any depth;
`read_csv_columns` below is this module's own reader of that CSV.
Plots use matplotlib's Agg backend; image grids are composed with PIL (evaluation/grids.py).
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

SCALE_LOSS = re.compile(r"loss_scale_(\d+)|scale_(\d+)_loss")   # train/loss_scale_03, val/scale_03_loss
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
    paths = sorted(paths, key=lambda p: (p.stat().st_mtime, p))
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
def edit_grid(folders: list[Path], out: Path, prefix: str = "", limit: int = 12, thumb: int = 128) -> list[tuple[str, Path]]:
    """Before / after (/ target) for EditCanvas samples: one row per sample, its task and full instruction on top."""
    from evaluation.grids import comparison_sheet

    rows = []
    for folder in folders[:limit]:
        sample = json.loads((folder / "sample.json").read_text())
        cells = [[(folder / f"{n}.png" if (folder / f"{n}.png").is_file() else None, None)]
                 for n in ("source", "result", "target")]
        rows.append((f"[{sample.get('task', '?')}] " + sample.get("instruction", sample.get("prompt", "")), cells))
    if not rows:
        return []
    path = out / f"{prefix}edits.png"
    comparison_sheet(rows, ["source", "result", "target"], cell=thumb, per_line=1).save(path)
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


# ----------------------------------------------------------------------------- suites side by side
def read_verdicts(folder: Path) -> dict[str, tuple[bool, str]]:
    """GenEval per-image records (results.jsonl, evaluation/geneval.py): "<00000>/samples/<0000>.png" ->
    (correct, reason)."""
    out: dict[str, tuple[bool, str]] = {}
    path = folder / "results.jsonl"
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                out["/".join(Path(record["filename"]).parts[-3:])] = (bool(record["correct"]), str(record.get("reason", "")))
    return out


def geneval_prompts(folder: Path) -> list[dict[str, Any]]:
    """One entry per prompt folder: index, tag, prompt, sample paths and each sample's verdict
    (True / False, None when results.jsonl does not cover it)."""
    verdicts = read_verdicts(folder)
    prompts = []
    for meta_path in sorted(folder.glob("[0-9]" * 5 + "/metadata.jsonl")):
        meta = json.loads(meta_path.read_text().splitlines()[0])
        samples = sorted((meta_path.parent / "samples").glob("*.png"))
        prompts.append({"index": meta_path.parent.name, "tag": meta.get("tag", "untagged"), "prompt": meta.get("prompt", ""),
                        "samples": samples,
                        "verdicts": [verdicts.get("/".join(p.parts[-3:]), (None, ""))[0] for p in samples]})
    return prompts


def spread(items: list, k: int) -> list:
    """k items evenly spaced through the list (all of them when there are ≤ k)."""
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)] if k > 1 else items[:1]


def compare_geneval(suites: dict[str, Path], out: Path, prefix: str = "", per_tag: int = 4, images: int = 4,
                    cell: int = 128) -> list[tuple[str, Path, str]]:
    """Per GenEval task one sheet: `per_tag` of the first suite's prompts (evenly spread), each model's
    first `images` samples side by side, pass/fail marked per image from its results.jsonl. Other
    suites are matched by prompt text (then by prompt folder). Returns (title, png, caption), the
    caption counting each model's images judged correct in that task."""
    from evaluation.grids import comparison_sheet

    loaded = {}
    for name, root in suites.items():
        folders = find_geneval_folders(root) if root is not None else []
        loaded[name] = geneval_prompts(folders[0]) if folders else []
    names = [n for n, p in loaded.items() if p]
    if not names:
        return []
    first = loaded[names[0]]
    made = []
    for tag in dict.fromkeys(p["tag"] for p in first):
        chosen = spread([p for p in first if p["tag"] == tag], per_tag)
        rows = []
        for entry in chosen:
            blocks = []
            for name in names:
                others = loaded[name]
                match = next((p for p in others if p["tag"] == tag and p["prompt"] == entry["prompt"]), None) \
                    or next((p for p in others if p["index"] == entry["index"] and p["tag"] == tag), None)
                cells = list(zip(match["samples"], match["verdicts"]))[:images] if match else []
                blocks.append(cells or [(None, None)])   # a grey cell: this model has no such prompt
            rows.append((f"{entry['index']}: {entry['prompt']}", blocks))
        path = out / f"{prefix}samples_{tag}.png"
        comparison_sheet(rows, names, cell=cell).save(path)
        counts = []
        for name in names:
            verdicts = [v for p in loaded[name] if p["tag"] == tag for v in p["verdicts"] if v is not None]
            counts.append(f"{name} {sum(verdicts)}/{len(verdicts)}" if verdicts else f"{name} not scored")
        made.append((f"GenEval {tag}", path,
                     f"{len(chosen)} of {sum(p['tag'] == tag for p in first)} prompts; images judged correct: "
                     + ", ".join(counts)))
    return made


# ----------------------------------------------------------------------------- training stages
def find_stage_csvs(root: Path) -> list[tuple[str, Path]]:
    """Every Lightning metrics.csv below `root`, oldest first (pipeline order), each named by its
    folder relative to root without Lightning's logger folders (lightning_logs, version_N, csv)."""
    found = sorted((p for p in root.rglob("metrics.csv") if p.is_file()), key=lambda p: (p.stat().st_mtime, p))
    named = []
    for path in found:
        parts = [q for q in path.parent.relative_to(root).parts
                 if q not in ("lightning_logs", "csv", "logs") and not re.fullmatch(r"version_\d+", q)]
        named.append(("/".join(parts) or root.resolve().name, path))
    counts = defaultdict(int)
    for name, _ in named:
        counts[name] += 1
    return [(name if counts[name] == 1 else "/".join(p.parent.relative_to(root).parts), p) for name, p in named]


def scale_index(key: str) -> int:
    found = SCALE_LOSS.search(key)
    return int(found.group(1) or found.group(2))


def stage_series(columns: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict]:
    """Split a metrics.csv into losses (train and val, NLLs included), per-scale losses and
    validation / benchmark metrics (one panel each)."""
    losses = {k: v for k, v in columns.items() if ("loss" in k or "nll" in k) and not SCALE_LOSS.search(k)}
    scales = dict(sorted(((k, v) for k, v in columns.items() if SCALE_LOSS.search(k)),
                         key=lambda kv: (kv[0].split("/")[0], scale_index(kv[0]))))
    metrics = {k: v for k, v in columns.items() if k not in losses and k not in scales
               and (k.startswith(("val/", "bench/")) or BENCHMARK_COLUMN.search(k))}
    metrics = dict(sorted(metrics.items(), key=lambda kv: not (kv[0].startswith("val/") or "overall" in kv[0])))
    return {"losses": losses, "scales": scales, "metrics": metrics}


def stage_plot(name: str, columns: dict[str, tuple[np.ndarray, np.ndarray]], path: Path,
               max_metrics: int = 6) -> Path | None:
    """One figure per training stage: train/val losses (log y), per-scale losses, then one small
    panel per validation metric (their ranges differ: PSNR in dB, SSIM and agreement in [0, 1])."""
    groups = stage_series(columns)
    panels = []
    if groups["losses"]:
        panels.append(("losses", groups["losses"], True))
    if groups["scales"]:
        panels.append(("per-scale losses", groups["scales"], True))
    panels += [(k, {k: v}, False) for k, v in list(groups["metrics"].items())[:max_metrics]]
    if not panels:
        return None
    plt = _plt()
    from matplotlib.ticker import FuncFormatter

    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols, 2.9 * nrows), dpi=100, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (title, series, log_y) in zip(axes.flat, panels):
        for key, (steps, values) in series.items():
            style = "--" if key.startswith("val/") and len(series) > 1 else "-"
            ax.plot(steps, values, style, label=key, marker="o" if len(steps) < 20 else None, markersize=3)
        if log_y and all((v > 0).all() for _, v in series.values()):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))   # 0.3, not 3×10⁻¹
            ax.yaxis.set_minor_formatter(FuncFormatter(   # label 2× and 5× between the decades
                lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 5) else ""))
        ax.set_title(title, fontsize=10), ax.set_xlabel("step", fontsize=8), ax.grid(alpha=0.3)
        ax.tick_params(labelsize=8)
        if len(series) > 1:
            ax.legend(fontsize=6, ncol=2 if len(series) > 6 else 1)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- settings and splits
SPLITS = ("seen", "unseen", "held_out")


def seen_unseen(metrics: dict) -> dict[str, dict[str, Any]]:
    """{"overall": {"seen": x, "unseen": y, "held_out": z}, "tasks/counting": {...}} from the
    geneval/seen/*, geneval/unseen/* (and geneval/held_out/*) keys, nested or already flat; empty
    when the suite did not split. A part without images (overall None) is left out."""
    out: dict[str, dict[str, Any]] = defaultdict(dict)
    for key, value in flatten(metrics).items():
        found = re.fullmatch(r"geneval/(seen|unseen|held_out)/(.+)", key)
        if found and not isinstance(value, bool) and isinstance(value, (int, float)) and found.group(2) != "seconds":
            out[found.group(2)][found.group(1)] = value
    return dict(sorted(out.items(), key=lambda kv: kv[0] != "overall"))


SETTING_NAMES = {"alpha": "α (scale reweighting, NF §4.3)", "untrained_scales": "scored on untrained scales",
                 "trained_scale_counts": "scale counts trained (scales: samples)",
                 "untrained_scale_counts": "scale counts scored but never trained",
                 "step": "optimizer steps of the scored weights"}


def settings(metrics: dict) -> list[tuple[str, Any]]:
    """What the scores were measured under: the suite's resolution, metrics.json's non-benchmark
    entries (α, scale counts trained vs untrained, step), then the suite's sizes on one line."""
    rows = []
    suite = metrics.get("suite") or {}
    if "width" in suite and "height" in suite:
        rows.append(("scored resolution (px)", f"{suite['width']}×{suite['height']}"))
    for key, value in metrics.items():
        if (key in NOT_BENCHMARKS or not isinstance(value, dict)) and key not in ("env", "previous", "suite") \
                and "/" not in key:
            if isinstance(value, dict):
                value = " · ".join(f"{k}: {fmt(v)}" for k, v in value.items())
            elif isinstance(value, list):
                value = ", ".join(map(fmt, value)) or "none"
            rows.append((SETTING_NAMES.get(key, key), value))
    sizes = [f"{k} {v}" for k, v in suite.items() if k not in ("width", "height") and v is not None]
    if sizes:
        rows.append(("suite", " · ".join(sizes)))
    return rows


def config_alpha(start: Path, levels: int = 4) -> tuple[float, Path] | None:
    """α from the nearest LightningCLI config.yaml at or above `start` (model.init_args.alpha)."""
    import yaml

    for folder in [start, *list(start.parents)[:levels]]:
        for path in sorted(folder.glob("**/config.yaml"))[:5] if folder == start else [folder / "config.yaml"]:
            if path.is_file():
                try:
                    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
                except yaml.YAMLError:
                    continue
                alpha = (model.get("init_args") or {}).get("alpha")
                if isinstance(alpha, (int, float)):
                    return float(alpha), path
    return None
