"""`python main.py rescore <dir>`: score finished benchmark runs again with today's evaluators.

Every benchmark suite folder under <dir> (a folder holding metrics.json next to geneval/, dpg/,
editcanvas/) is re-scored from the images it wrote (evaluation.suite.rescore_suite); sweep
points' status.json copies of the metrics are refreshed so `main.py report` shows the new scores.
Use it after an evaluator fix: nothing is generated again.
"""
from __future__ import annotations

import json
from pathlib import Path

from commands import UsageError


def run(path: str) -> dict:
    """Re-score every benchmark suite folder under `path` (a run, a sweep or one suite folder).

    Args:
        path: a folder; every metrics.json below it that sits next to a geneval/ folder is re-scored.
    """
    from rich.console import Console

    from evaluation.suite import headline, rescore_suite

    root = Path(path)
    if not root.is_dir():
        raise UsageError(f"{path} is not a directory; pass a run, sweep or benchmark suite folder")
    folders = sorted(p.parent for p in root.rglob("metrics.json") if (p.parent / "geneval").is_dir())
    if not folders:
        raise UsageError(f"no benchmark suite folders (metrics.json next to geneval/) under {path}")
    console, out = Console(), {}
    for folder in folders:
        metrics = rescore_suite(folder)
        before, after = headline(metrics["previous"]), headline(metrics)
        out[str(folder)] = after
        console.print(f"{folder}: " + ", ".join(f"{k} {before.get(k, float('nan')):.3f} -> {v:.3f}"
                                               for k, v in after.items() if k in before))
    for status in root.rglob("status.json"):  # sweep points keep a copy of their suite's metrics
        record = json.loads(status.read_text())
        suites = sorted(status.parent.rglob("metrics.json"))
        if record.get("metrics", {}).get("json") and suites:
            record["metrics"]["json"] = json.loads(suites[-1].read_text())
            status.write_text(json.dumps(record, indent=1))
    return out
