"""The one reader of Lightning's CSVLogger `metrics.csv` (sparse: each row fills the columns logged
at that step). Used by the sweep, the quickstart and the reports; stdlib only."""
from __future__ import annotations

import csv
from pathlib import Path


def read_metrics_columns(path: str | Path) -> dict[str, list[tuple[float, float]]]:
    """column -> [(step, value), ...] over the rows where the column is filled; `step` (or the row
    index when the file has no step column) as the x value; step/epoch are not columns here."""
    series: dict[str, list[tuple[float, float]]] = {}
    with Path(path).open(newline="") as f:
        for index, row in enumerate(csv.DictReader(f)):
            step = float(row.get("step") or index)
            for key, value in row.items():
                if key in ("step", "epoch") or not key or value in (None, ""):
                    continue
                try:
                    series.setdefault(key, []).append((step, float(value)))
                except ValueError:
                    pass
    return series


def last_metrics(path: str | Path, prefix: str = "") -> dict[str, float]:
    """The last logged value of every column (whose name starts with `prefix`), step and epoch
    included when no prefix is given."""
    last: dict[str, float] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith(prefix) and value not in (None, ""):
                    try:
                        last[key] = float(value)
                    except ValueError:
                        pass
    return last
