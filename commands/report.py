"""`python main.py report --path <run or sweep dir>`: report.md, a self-contained report.html, PNG plots.

For a run: metrics tables per benchmark and per task/category (metrics.json and the benchmarks'
result files), loss curves and per-scale losses from Lightning's metrics.csv, benchmark scores
against step, GenEval sample grids per prompt tag, EditCanvas edits before/after, and the
environment. For a sweep (sweep.json from `main.py sweep`): one comparison table across points
(status, wall time, headline metrics), bar plots of the metrics and overlaid loss curves, then
each finished point's own sections. `--baseline <run dir>` adds a baseline column to the headline
table (e.g. the untrained model next to the trained one). Plots land in <dir>/report_files/ as
PNG; report.html embeds them as base64 so it can be mailed as one file. Layout of a run directory:
evaluation/reporting.py.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, Optional

from commands import UsageError
from evaluation import reporting as rp

Block = tuple  # ("table", title, header, rows) | ("image", title, path) | ("text", str)


def run_sections(run: dict, files: Path, prefix: str = "", baseline: Optional[dict] = None) -> list[tuple[str, list[Block]]]:
    sections: list[tuple[str, list[Block]]] = []
    top = rp.headline(run["metrics"])
    if top:
        base = rp.headline(baseline["metrics"]) if baseline else None
        header = ["metric", "value"] + (["baseline"] if base is not None else [])
        rows = [[k, v] + ([base.get(k, "")] if base is not None else []) for k, v in top.items()]
        sections.append(("Headline metrics", [("table", "", header, rows)]))
    tables = [("table", title, header, rows) for title, header, rows in rp.benchmark_tables(run["metrics"])]
    if tables:
        sections.append(("Metrics per benchmark", tables))
    plots = [("image", title, path) for title, path in rp.run_plots(run, files, prefix)]
    if plots:
        sections.append(("Training curves", plots))
    elif run["csv_path"] is None:
        sections.append(("Training curves", [("text", "No Lightning metrics.csv in this run.")]))
    grids = [("image", title, path) for folder in run["geneval"]
             for title, path in rp.geneval_grids(folder, files, f"{prefix}{folder.name}_")]
    grids += [("image", title, path) for title, path in rp.edit_grid(run["edits"], files, prefix)]
    if grids:
        sections.append(("Samples", grids))
    return sections


def sweep_sections(root: Path, files: Path) -> tuple[list[tuple[str, list[Block]]], list[list[Any]], list[str]]:
    record = json.loads((root / "sweep.json").read_text())
    points = record.get("points", [])
    runs = {p["dir"]: rp.load_run(root / p["dir"]) for p in points if (root / p["dir"]).is_dir()}
    swept = list(dict.fromkeys(k for p in points for k in (p.get("overrides") or {})
                               if not k.startswith(("trainer.default_root_dir", "trainer.logger", "trainer.callbacks"))))
    tops = {d: {**rp.headline(r["metrics"]), **rp.last_logged(r)} for d, r in runs.items()}
    keys = sorted({k for top in tops.values() for k in top})
    header = ["run", "status", "wall_s", *[k.split(".")[-1] for k in swept], *[k.replace("/", " ") for k in keys]]
    rows = []
    for p in points:
        top = tops.get(p["dir"], {})
        over = p.get("overrides") or {}
        rows.append([p["dir"], p.get("status"), p.get("wall_s"), *[over.get(k, "") for k in swept],
                     *[top.get(k, "") for k in keys]])
    blocks: list[Block] = [("text", f"Sweep **{record.get('name', root.name)}** over base config(s) "
                                    f"{', '.join(record.get('base') or []) or '-'}; {len(points)} points.")]
    first = [k for k in rp.SWEEP_SUMMARY_KEYS if any(k in top for top in tops.values())]
    summary_header = ["run", "status", "wall_s", *[k.split(".")[-1] for k in swept], *first]
    summary = [[p["dir"], p.get("status"), p.get("wall_s"), *[(p.get("overrides") or {}).get(k, "") for k in swept],
                *[tops.get(p["dir"], {}).get(k, "") for k in first]] for p in points]
    blocks.append(("table", "summary (val/vision_nll: mean CE per visual token on the validation shards; "
                            "lower is better)", summary_header, summary))
    blocks.append(("table", "every logged metric", header, rows))
    failed = [p for p in points if p.get("status") != "done"]
    for p in failed:
        blocks.append(("text", f"`{p['dir']}` {p.get('status')}: ```{(p.get('error') or '').strip()[-600:]}```"))
    blocks += [("image", title, path) for title, path in rp.sweep_plots(points, runs, files)]
    sections = [("Sweep comparison", blocks)]
    for p in points:
        if p.get("status") == "done" and p["dir"] in runs:
            for title, sub in run_sections(runs[p["dir"]], files, prefix=f"{p['dir']}_"):
                sections.append((f"{p['dir']}: {title}", sub))
    return sections, summary, summary_header


# ----------------------------------------------------------------------------- rendering
def to_markdown(title: str, sections, root: Path) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if block[0] == "text":
                lines += [block[1], ""]
            elif block[0] == "image":
                lines += [f"**{block[1]}**", "", f"![{block[1]}]({block[2].relative_to(root).as_posix()})", ""]
            else:
                _, caption, header, rows = block
                if caption:
                    lines += [f"**{caption}**", ""]
                lines += ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(rp.fmt(v) for v in row) + " |" for row in rows] + [""]
    return "\n".join(lines)


def to_html(title: str, sections) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
             "margin:.5em 0 1.2em}td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px;text-align:right}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}"
             f"</style></head><body><h1>{e(title)}</h1>"]
    for heading, blocks in sections:
        parts.append(f"<h2>{e(heading)}</h2>")
        for block in blocks:
            if block[0] == "text":
                parts.append(f"<p>{e(block[1])}</p>")
            elif block[0] == "image":
                data = base64.b64encode(block[2].read_bytes()).decode()
                parts.append(f"<h4>{e(block[1])}</h4><img alt='{e(block[1])}' src='data:image/png;base64,{data}'>")
            else:
                _, caption, header, rows = block
                parts.append(f"<h4>{e(caption)}</h4>" if caption else "")
                parts.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(rp.fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
                parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def print_terminal(title: str, header: list[str], rows: list[list[Any]], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, header_style="bold")
    for h in header:
        table.add_column(str(h))
    for row in rows:
        table.add_row(*[rp.fmt(v) for v in row])
    console = Console()
    console.print(table)
    console.print(f"report: {out / 'report.md'} and {out / 'report.html'}")


def run(path: str, out: Optional[str] = None, baseline: Optional[str] = None, title: Optional[str] = None) -> str:
    """Write report.md + self-contained report.html (+ PNG plots) for a run or sweep directory.

    Args:
        path: a run directory (metrics.json / Lightning metrics.csv) or a sweep directory (sweep.json).
        out: where to write the report (default: the directory itself).
        baseline: another run directory whose headline metrics are shown next to this run's.
        title: report title (default: the directory name).
    """
    root = Path(path)
    try:
        kind = rp.classify_dir(root)
        base_run = rp.load_run(Path(baseline)) if baseline and rp.classify_dir(Path(baseline)) == "run" else None
    except ValueError as err:
        raise UsageError(str(err)) from err
    out_dir = Path(out) if out else root
    files = out_dir / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    title = title or f"NextFlow {kind} report: {root.resolve().name}"
    if kind == "sweep":
        sections, rows, header = sweep_sections(root, files)
    else:
        loaded = rp.load_run(root)
        sections = run_sections(loaded, files, baseline=base_run)
        top = rp.headline(loaded["metrics"])
        header, rows = ["metric", "value"], [[k, v] for k, v in top.items()]
        if not rows and loaded["csv"]:
            rows = [[k, float(v[-1])] for k, (_, v) in sorted(loaded["csv"].items())]
            header = ["last logged", "value"]
    env = rp.environment(root)
    sections.append(("Environment", [("table", "", ["", "value"], [[k, v] for k, v in env.items()])]))
    (out_dir / "report.md").write_text(to_markdown(title, sections, out_dir))
    (out_dir / "report.html").write_text(to_html(title, sections))
    print_terminal(title, header, rows, out_dir)
    return str(out_dir / "report.md")
