"""`python main.py sweep --config configs/sweeps/<name>.yaml`: run a grid or list of experiments.

A sweep file (every key is a parameter of `run` below):

    name: ablations
    base: [configs/experiment/ar_shapes_t2i.yaml]    # experiment config(s), layered left to right
    fixed: {trainer.max_steps: 300}                   # overrides shared by every point (optional)
    grid:                                             # cartesian product over dotted keys ...
      model.init_args.alpha: [0.9, 0.0]
      model.init_args.overrides.visual_inputs: [residual, accumulated]
    list:                                             # ... and/or explicit points
      - {name: no_self_correction, model.init_args.self_correct: false}
    out_dir: runs/sweeps/ablations                    # default runs/sweeps/<name>

Each point runs as a subprocess, by default
    python main.py fit --config <base>... [--config <run_dir>/sweep_point.yaml] --key=value...
(`command` replaces the first part; `{python}`, `{root}` and `{run_dir}` are filled in), with its
output in <run_dir>/log.txt. trainer.default_root_dir and every logger save_dir / checkpoint
dirpath found in the base config are pointed at <out_dir>/<run_name> so points never share files.
Configs are merged and validated by the project's Lightning CLI parser
(commands.lightning_cli.parse_config): the base files (`compose:` expanded), then every point's
keys and values, checked as `main.py fit` would check them before anything runs, so a point
means exactly what `fit --config <base>... --key=value` means. <run_dir>/status.json records
the overrides, command, status
(done / failed), wall time, the error tail of a failed run and its metrics (the run's
metrics.json and the last value of every column of its Lightning CSV log). <out_dir>/sweep.json
collects all points; `python main.py report <out_dir>` turns it into one comparison report.
A failing point is marked failed and the sweep goes on. Rerunning the same command resumes:
finished points are skipped (failed ones are retried unless --retry_failed false).
"""
from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from commands import UsageError
from commands.lightning_cli import parse_config
from modules.common.metrics_csv import last_metrics

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_COMMAND = ["{python}", "{root}/main.py", "fit"]
POINT_CONFIG = "sweep_point.yaml"
SWEEP_FILE, STATUS_FILE = "sweep.json", "status.json"


# ----------------------------------------------------------------------------- config handling
def config_args(base: list[str]) -> list[str]:
    for path in base:
        if not Path(path).is_file():
            raise UsageError(f"sweep base config {path!r} not found (paths are relative to {os.getcwd()})")
    return [arg for path in base for arg in ("--config", path)]


def load_base(paths: list[str]) -> dict:
    """The base configs merged and validated by the Lightning CLI's own parser (`compose:`
    expanded, defaults filled in): what `main.py fit --config a --config b` would run."""
    return parse_config(["fit", *config_args(paths)])


def check_key(config: Any, key: str, where: str) -> None:
    """Raise UsageError unless the dotted key exists in the config (list items by index)."""
    node, walked = config, []
    for part in key.split("."):
        if node is None:  # an unset dict-typed argument (e.g. ARModule overrides): the parser checks the rest
            return
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            here = ".".join(walked) or "the top level"
            options = list(node) if isinstance(node, dict) else []
            close = difflib.get_close_matches(part, options, n=1)
            hint = f"; did you mean {'.'.join(walked + close)!r}?" if close else \
                (f"; {here} has keys: {', '.join(map(str, options))}" if options else "")
            raise UsageError(f"sweep key {key!r} does not exist in the base config ({where}): "
                             f"no {part!r} under {here}{hint}")
        walked.append(part)


def set_key(config: Any, key: str, value: Any) -> None:
    """Set a dotted key (list items by index) in place; check_key has validated the path."""
    parts = key.split(".")
    node = config
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def output_keys(config: dict) -> list[str]:
    """Keys of the base config that decide where a run writes (Lightning's default_root_dir, the
    loggers' save_dir, checkpoint callbacks' dirpath): a sweep points them all at the run dir, or
    every point would write into the same folder."""
    keys = ["trainer.default_root_dir"]
    trainer = config.get("trainer") or {}
    logger = trainer.get("logger")
    for prefix, entries in (("trainer.logger", logger), ("trainer.callbacks", trainer.get("callbacks"))):
        items = entries if isinstance(entries, list) else [entries]
        for i, entry in enumerate(items):
            args = entry.get("init_args") if isinstance(entry, dict) else None
            where = f"{prefix}.{i}" if isinstance(entries, list) else prefix
            for name in ("save_dir", "dirpath"):
                if isinstance(args, dict) and name in args:
                    keys.append(f"{where}.init_args.{name}")
    return keys


def cli_value(value: Any) -> str:
    """A YAML scalar/flow value as one command-line token: 0.9, true, null, residual, [1, 2]."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("...").strip()


def run_name(index: int, overrides: dict[str, Any]) -> str:
    parts = [f"{key.split('.')[-1]}={cli_value(value)}" for key, value in overrides.items()]
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", f"{index:03d}_" + "_".join(parts))[:120]


def expand_points(grid: Optional[dict[str, list]], points: Optional[list[dict]]) -> list[tuple[str, dict]]:
    """(run name, overrides) for the grid's cartesian product, then the listed points."""
    out: list[tuple[str, dict]] = []
    if grid:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise UsageError(f"sweep grid key {key!r} must map to a non-empty list of values, got {values!r}")
        for combo in itertools.product(*grid.values()):
            overrides = dict(zip(grid, combo))
            out.append((run_name(len(out), overrides), overrides))
    for point in points or []:
        point = dict(point)
        name = point.pop("name", None)
        out.append((re.sub(r"[^A-Za-z0-9._=+-]+", "-", f"{len(out):03d}_{name}") if name
                    else run_name(len(out), point), point))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise UsageError(f"sweep points have duplicate names: {sorted(n for n in names if names.count(n) > 1)}")
    return out


# ----------------------------------------------------------------------------- one point
def split_overrides(overrides: dict[str, Any], config: dict) -> tuple[dict, dict[str, Any]]:
    """(point config, flag overrides). A key through a list (trainer.callbacks.1...) cannot be a
    command-line flag: the list is copied whole from the merged base config into the point config
    and changed there (jsonargparse replaces a list by a later one, keeping each item's class)."""
    flat = {k: v for k, v in overrides.items() if not any(p.isdigit() for p in k.split("."))}
    point: dict = {}
    for key, value in overrides.items():
        if key in flat:
            continue
        parts = key.split(".")
        at = next(i for i, p in enumerate(parts) if p.isdigit())
        node, source = point, config
        for part in parts[:at - 1]:
            node, source = node.setdefault(part, {}), source[part]
        node.setdefault(parts[at - 1], json.loads(json.dumps(source[parts[at - 1]], default=str)))
        set_key(point, key, value)
    return point, flat


def point_args(base: list[str], overrides: dict[str, Any], config: dict, point_file: Optional[Path]) -> list[str]:
    """--config per base file, the point config (written to point_file; None: passed inline as a
    YAML string, for validation), then one --key=value flag per plain key."""
    point, flat = split_overrides(overrides, config)
    args = config_args(base)
    if point:
        text = yaml.safe_dump(point, sort_keys=False)
        if point_file is not None:
            point_file.parent.mkdir(parents=True, exist_ok=True)
            point_file.write_text(text)
        args += ["--config", str(point_file) if point_file is not None else text]
    return args + [f"--{key}={cli_value(value)}" for key, value in flat.items()]


def build_command(template: list[str], base: list[str], overrides: dict[str, Any], run_dir: Path,
                  config: dict) -> list[str]:
    """template + point_args (the point config at <run_dir>/sweep_point.yaml)."""
    fill = {"python": sys.executable, "root": str(ROOT), "run_dir": str(run_dir)}
    return [part.format(**fill) for part in template] + point_args(base, overrides, config, run_dir / POINT_CONFIG)


def collect_metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json (shallowest one) and its newest Lightning metrics.csv, last values."""
    out: dict[str, Any] = {}
    jsons = sorted(run_dir.rglob("metrics.json"), key=lambda p: (len(p.parts), str(p)))
    if jsons:
        try:
            out["json"] = json.loads(jsons[0].read_text())
        except json.JSONDecodeError as err:
            out["json_error"] = f"{jsons[0]}: {err}"
    csvs = sorted(run_dir.rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    if csvs:
        out["csv"] = last_metrics(csvs[-1])
        out["csv_path"] = str(csvs[-1].relative_to(run_dir))
    return out


def run_point(name: str, overrides: dict, command: list[str], run_dir: Path, timeout_s: Optional[float]) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    status = {"name": name, "overrides": overrides, "command": command, "status": "running",
              "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (run_dir / STATUS_FILE).write_text(json.dumps(status, indent=1))
    start = time.perf_counter()
    with (run_dir / "log.txt").open("w") as log:
        try:
            proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                                  env={**os.environ, "PYTHONHASHSEED": "0"})
            returncode, reason = proc.returncode, f"exit status {proc.returncode}"
        except subprocess.TimeoutExpired:
            returncode, reason = -1, f"timed out after {timeout_s} s"
        except OSError as err:
            returncode, reason = -1, f"could not start {command[0]!r}: {err}"
    status.update(wall_s=round(time.perf_counter() - start, 3), returncode=returncode,
                  finished=time.strftime("%Y-%m-%dT%H:%M:%S"), metrics=collect_metrics(run_dir))
    status["status"] = "done" if returncode == 0 else "failed"
    if returncode != 0:
        tail = (run_dir / "log.txt").read_text(errors="replace")[-2000:]
        status["error"] = f"{reason}\n{tail}"
    (run_dir / STATUS_FILE).write_text(json.dumps(status, indent=1, default=str))
    return status


# ----------------------------------------------------------------------------- the command
def run(base: Optional[Union[str, list[str]]] = None, grid: Optional[dict[str, list[Any]]] = None,
        list: Optional[list[dict[str, Any]]] = None, fixed: Optional[dict[str, Any]] = None,
        name: str = "sweep", out_dir: Optional[str] = None, command: Optional[list[str]] = None,
        retry_failed: bool = True, timeout_s: Optional[float] = None, redirect_outputs: bool = True,
        dry_run: bool = False) -> dict:
    """Run a sweep (grid or list of points over a base experiment config); resumable.

    Args:
        base: experiment config file(s) every point starts from, layered left to right.
        grid: dotted key -> list of values; every combination is one point.
        list: explicit points, each a dict of dotted key -> value (optional `name`).
        fixed: dotted key -> value applied to every point (before the point's own values).
        name: sweep name; the default output folder is runs/sweeps/<name>.
        out_dir: output folder (one sub-folder per point, plus sweep.json).
        command: command template for a point (default: python main.py fit with the run dir as
            trainer.default_root_dir); `{python}`, `{root}`, `{run_dir}` are filled in.
        retry_failed: rerun points that failed in an earlier invocation.
        timeout_s: wall-clock limit per point (a point over it is marked failed).
        redirect_outputs: point trainer.default_root_dir and every logger save_dir / checkpoint
            dirpath of the base config at the point's run dir.
        dry_run: print the commands and exit without running anything.
    """
    base = [base] if isinstance(base, str) else (base or [])
    points = expand_points(grid, list)
    if not points:
        raise UsageError("the sweep has no points: give `grid:` and/or `list:` in the sweep file")
    config = load_base(base)
    where = ", ".join(base) or "no base config"
    for key in {**(fixed or {}), **{k: v for _, o in points for k, v in o.items()}}:
        check_key(config, key, where)
    out = Path(out_dir or f"runs/sweeps/{name}")
    for run_name_, overrides in points:  # every point parses, as `main.py fit` would parse it, before any runs
        try:
            parse_config(["fit", *point_args(base, {**(fixed or {}), **overrides}, config, None)])
        except UsageError as err:
            raise UsageError(f"sweep point {run_name_} does not parse ({where}): {err}") from err
    template = command or DEFAULT_COMMAND
    record = {"kind": "sweep", "name": name, "base": base, "fixed": fixed or {}, "grid": grid, "list": list,
              "command": template, "points": []}
    for run_name_, overrides in points:
        run_dir = out / run_name_
        overrides = {**(fixed or {}), **overrides}
        outputs = {k: str(run_dir) for k in output_keys(config)} if redirect_outputs else {}
        cmd = build_command(template, base, {**outputs, **overrides}, run_dir, config)
        if dry_run:
            print(" ".join(cmd))
            continue
        previous = json.loads((run_dir / STATUS_FILE).read_text()) if (run_dir / STATUS_FILE).is_file() else None
        same = previous is not None and previous.get("overrides") == json.loads(json.dumps(overrides))
        if same and (previous["status"] == "done" or (previous["status"] == "failed" and not retry_failed)):
            print(f"[sweep] {run_name_}: {previous['status']} earlier, skipped")
            status = previous
        else:
            print(f"[sweep] {run_name_}: running")
            status = run_point(run_name_, overrides, cmd, run_dir, timeout_s)
            print(f"[sweep] {run_name_}: {status['status']} in {status['wall_s']:.1f} s")
        record["points"].append({k: status.get(k) for k in ("name", "overrides", "status", "wall_s", "metrics", "error")}
                                | {"dir": run_name_})
        out.mkdir(parents=True, exist_ok=True)
        (out / SWEEP_FILE).write_text(json.dumps(record, indent=1, default=str))
    if not dry_run:
        failed = [p["name"] for p in record["points"] if p["status"] != "done"]
        print(f"[sweep] {len(record['points']) - len(failed)}/{len(record['points'])} points done -> {out}"
              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return record
