"""`python main.py report --path <run or sweep dir>`: report.md and report.html with PNG figures next to them.

For a run (a benchmark suite folder: metrics.json + the benchmarks' layouts), pictures first: per
GenEval task a sheet of prompts (full text) with the trained model's samples and every baseline's
side by side at 128 px, each image marked pass/fail from its suite's per-image records
(results.jsonl); EditCanvas edits before/after. Then the training curves of every stage found
under `--curves` (each Lightning metrics.csv below it: tokenizer stages, AR, later RL), then
compact tables: headline scores trained vs each baseline, GenEval per task, GenEval on prompts seen
in training vs held out (when the suite split them), the settings the scores were measured under
(α, resolution, scale counts; a warning when metrics.json says the model was scored on scales it
never trained), and the detailed per-benchmark tables. Baselines are suite folders in the same
layout (`--baselines '[untrained=runs/x/validate_untrained, random_scenes=...]'`, a bare path is
named by its folder). For a sweep (sweep.json from `main.py sweep`): one comparison table across
points, bar plots and overlaid loss curves, then each finished point's own sections. When the
quickstart under --curves ran its `unified` stage, a section sets every task's score of the unified
model beside the T2I-only one, with a strip of generated stories (`unified_sections`). Figures land
in <out>/report_files/ and both pages link them relatively. Layout of a run directory:
evaluation/reporting.py.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any, Optional, Union

from commands import UsageError
from evaluation import reporting as rp

# ("table", title, header, rows) | ("image", title, path, caption) | ("text", str) | ("warning", str)
Block = tuple
Section = tuple[str, list[Block]]


def baseline_folders(baselines: Optional[Union[list[str], str]], baseline: Optional[str] = None) -> dict[str, Path]:
    """"name=path" items (or bare paths, named by their folder; one string may hold several, comma-separated)
    -> {name: path}; UsageError for a folder that is not a run directory."""
    items = [f"baseline={baseline}"] if baseline else []
    items += [x for x in baselines.split(",") if x.strip()] if isinstance(baselines, str) else list(baselines or [])
    out: dict[str, Path] = {}
    for item in items:
        name, _, path = item.partition("=") if "=" in item else (Path(item).name, "", item)
        name, path = name.strip(), path.strip()
        if not name or not path:
            raise UsageError(f"baseline {item!r}: write name=path (e.g. untrained=runs/quickstart/validate_untrained)")
        try:
            if rp.classify_dir(Path(path)) != "run":
                raise UsageError(f"baseline {item!r} is a sweep directory; pass a suite folder with metrics.json")
        except ValueError as err:
            raise UsageError(f"baseline {name}: {err}") from err
        out[name] = Path(path)
    return out


def headline_rows(models: dict[str, dict]) -> tuple[list[str], list[list[Any]]]:
    """Headline metrics as rows, one column per model (the trained one first)."""
    tops = {name: rp.headline(run["metrics"]) for name, run in models.items()}
    keys = list(dict.fromkeys(k for top in tops.values() for k in top))
    return ["metric", *models], [[k, *[tops[n].get(k, "") for n in models]] for k in keys]


def score_sections(models: dict[str, dict], stages: list[tuple[str, Path]]) -> list[Block]:
    """Compact tables: headline, GenEval per task, seen vs unseen, settings."""
    blocks: list[Block] = []
    header, rows = headline_rows(models)
    if rows:
        blocks.append(("table", "headline scores", header, rows))
    tasks = {n: (r["metrics"].get("geneval") or {}).get("tasks") or {} for n, r in models.items()}
    names = list(dict.fromkeys(t for per in tasks.values() for t in per))
    if names:
        blocks.append(("table", "GenEval per task (fraction of images judged correct)", ["task", *models],
                       [[t, *[tasks[n].get(t, "") for n in models]] for t in names]))
    splits = {n: rp.seen_unseen(r["metrics"]) for n, r in models.items()}
    columns = [(n, part) for n in models if splits[n] for part in rp.SPLITS
               if any(part in v for v in splits[n].values())]
    if columns:
        keys = list(dict.fromkeys(k for n, _ in columns for k in splits[n]))
        blocks.append(("table", "GenEval on prompts seen in training vs unseen (held_out: the combinations the "
                                "world never trains on)", ["metric", *[f"{n} {part}" for n, part in columns]],
                       [[k, *[splits[n].get(k, {}).get(part, "") for n, part in columns]] for k in keys]))
    trained_name, trained = next(iter(models.items()))
    rows = [list(r) for r in rp.settings(trained["metrics"])]
    if not any(r[0].startswith("α") for r in rows):   # not in metrics.json: what training logged, else the config
        logged = [(name, float(cols["train/alpha"][1][-1])) for name, cols in
                  ((name, rp.read_csv_columns(path)) for name, path in stages) if "train/alpha" in cols]
        alpha = rp.config_alpha(trained["root"])
        if logged:
            value = f"{logged[-1][1]:g} (last logged in {logged[-1][0]})"
        elif alpha is not None:
            value = f"{alpha[0]:g} (from {alpha[1]}; a curriculum or the checkpoint may change it)"
        else:
            value = "not recorded"
        rows.insert(0, ["α (scale reweighting, NF §4.3)", value])
    if rows:
        blocks.append(("table", f"settings of the scored run ({trained_name})", ["setting", "value"], rows))
    return blocks


def run_sections(run: dict, files: Path, prefix: str = "", baselines: Optional[dict[str, dict]] = None,
                 curves: Optional[Path] = None, name: str = "trained") -> list[Section]:
    models = {name: run, **(baselines or {})}
    sections: list[Section] = []
    warnings = [f"{n} was scored on scale counts it never trained (metrics.json: \"untrained_scales\": true); "
                f"its fine scales are untrained and its scores say little about the model."
                for n, r in models.items() if r["metrics"].get("untrained_scales") is True]
    if warnings:
        sections.append(("Warnings", [("warning", w) for w in warnings]))
    pictures: list[Block] = []
    top = {n: rp.headline(r["metrics"]).get("geneval/overall") for n, r in models.items()}
    if any(v is not None for v in top.values()):
        pictures.append(("text", "GenEval overall: " + " · ".join(f"{n} {rp.fmt(v)}" for n, v in top.items()
                                                                     if v is not None)))
    pictures += [("image", title, path, caption) for title, path, caption in
                 rp.compare_geneval({n: r["root"] for n, r in models.items()}, files, prefix)]
    pictures += [("image", title, path, "") for title, path in rp.edit_grid(run["edits"], files, prefix, thumb=128)]
    if pictures:
        sections.append(("Samples", pictures))
    curves = curves or run["root"]
    stages = rp.find_stage_csvs(curves)
    plots: list[Block] = []
    single: dict[str, dict[str, float]] = {}   # validation-only stages: one logged step, a table not a plot
    for k, (stage, path) in enumerate(stages):
        columns = rp.read_csv_columns(path)
        if all(len(steps) <= 1 for steps, _ in columns.values()):
            groups = rp.stage_series(columns)
            single[stage] = {key: float(v[-1]) for key, (_, v) in {**groups["losses"], **groups["metrics"]}.items()
                             if len(v) and not key.startswith("bench/")}   # bench/*: the suite's scores, in Scores
            continue
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stage)
        made = rp.stage_plot(stage, columns, files / f"{prefix}curves_{k:02d}_{safe}.png")
        if made:
            plots.append(("image", stage, made, f"{path.relative_to(curves).as_posix()}: "
                                                  f"{len(columns)} logged columns"))
    keys = list(dict.fromkeys(key for values in single.values() for key in values))
    if keys:
        plots.append(("table", "stages that logged a single step (validation runs)", ["metric", *single],
                      [[key, *[values.get(key, "") for values in single.values()]] for key in keys]))
    sections.append(("Training curves", plots or [("text", f"No Lightning metrics.csv below {curves}; "
                                                            f"pass --curves <run root> to plot the training stages.")]))
    scores = score_sections(models, stages)
    if scores:
        sections.append(("Scores", scores))
    tables = [("table", title, header, rows) for title, header, rows in rp.benchmark_tables(run["metrics"])]
    if tables:
        sections.append((f"Details ({name})", tables))
    return sections


RL_ROWS = ("geneval/overall", "geneval/single_object", "geneval/two_object", "geneval/counting", "geneval/colors",
           "geneval/position", "geneval/color_attr", "geneval/seen/overall", "geneval/unseen/overall",
           "geneval/held_out/overall", "dpg/score")


def rl_section(ar: dict, rl: dict, files: Path, rl_csv: Optional[Path] = None, prefix: str = "") -> Section:
    """AR vs AR+RL (modules/rl GRPO) on the same suite: GenEval per task, seen / unseen / held-out
    prompts and DPG side by side with the difference; the RL stage's reward and KL curves
    (train/reward, its parts, train/kl and the per-scale KL) from its metrics.csv; a sample sheet per
    GenEval task of the same prompts and seeds before and after RL."""
    before, after = rp.headline(ar["metrics"]), rp.headline(rl["metrics"])
    rows = [[key, rp.fmt(before.get(key)), rp.fmt(after.get(key)),
             rp.fmt(after[key] - before[key]) if key in before and key in after else ""]
            for key in RL_ROWS if key in before or key in after]
    blocks: list[Block] = [("table", "AR vs AR+RL (same prompts, seeds and sampling)",
                            ["metric", "AR", "AR+RL", "difference"], rows)]
    if rl_csv is not None and Path(rl_csv).is_file():
        columns = rp.read_csv_columns(Path(rl_csv))
        groups = {"reward": {k[len("train/"):]: v for k, v in columns.items()
                             if k.startswith("train/") and (k == "train/reward" or k.endswith("/reward")
                                                            or k.endswith("/correct"))},
                  "KL to the starting policy": {k[len("train/"):]: v for k, v in columns.items()
                                                if k == "train/kl" or k.startswith("train/kl_scale_")}}
        for title, series in groups.items():
            made = rp.plot_series(series, files / f"{prefix}rl_{title.split()[0].lower()}.png", f"RL {title}")
            if made:
                blocks.append(("image", f"RL {title}", made, f"{Path(rl_csv).as_posix()}: {', '.join(series)}"))
    blocks += [("image", f"{title}: AR vs AR+RL", path, caption) for title, path, caption in
               rp.compare_geneval({"AR": ar["root"], "AR+RL": rl["root"]}, files, f"{prefix}rl_")]
    return ("AR vs AR+RL (prefix-tuning GRPO)", blocks)


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
    blocks += [("image", title, path, "") for title, path in rp.sweep_plots(points, runs, files)]
    sections = [("Sweep comparison", blocks)]
    for p in points:
        if p.get("status") == "done" and p["dir"] in runs:
            for title, sub in run_sections(runs[p["dir"]], files, prefix=f"{p['dir']}_"):
                sections.append((f"{p['dir']}: {title}", sub))
    return sections, summary, summary_header


def refiner_sections(root: Path, files: Path) -> list[Section]:
    """"Diffusion refiner" (issue 14): the metric table and side-by-side crops that
    benchmarks/refiner.py wrote (the shallowest <root>/**/bench/table.json, with its crops.png)."""
    import json
    import shutil

    found = sorted(root.rglob("bench/table.json"), key=lambda p: len(p.parts)) if root.is_dir() else []
    if not found:
        return []
    data = json.loads(found[0].read_text())
    blocks: list[Block] = [("text", f"Refiner {data.get('ckpt')} (regression control: {data.get('regression_ckpt')}), "
                                    f"{data.get('sampler', 'euler')} sampler; held-out scenes, the same codes in every row.")]
    crops = found[0].parent / "crops.png"
    if crops.is_file():
        dest = files / "refiner_crops.png"
        shutil.copyfile(crops, dest)
        blocks.append(("image", "ground truth / decoder / regression / flow", dest,
                       "rows: methods; columns: held-out scenes (2x zoom)"))
    cols = ["psnr", "ssim", "hf_psnr", "spectral_dist", "fid_shapes", "agreement", "agreement_color_position"]
    for res, table in data.get("tables", {}).items():
        rows = [[name, *[row.get(c) if row.get(c) is not None else "" for c in cols]] for name, row in table.items()]
        blocks.append(("table", res, ["", "PSNR", "SSIM", "HF-PSNR (Laplacian)", "spectral dist.",
                                      "FID (Shapes features)", "agreement", "agreement (colour+position)"], rows))
    return [("Diffusion refiner", blocks)]


# every task's score, the unified model vs the T2I-only one: (row, headline key, benchmark, issue 15's target)
UNIFIED_ROWS = (("GenEval overall", "geneval/overall", "geneval", ""),
                ("GenEval, prompts seen in training", "geneval/seen/overall", "geneval", ""),
                ("GenEval, unseen prompts", "geneval/unseen/overall", "geneval", ""),
                ("DPG", "dpg/score", "dpg", ""),
                ("EditCanvas overall (oracle judge, 0-10)", "editcanvas/overall", "editcanvas", ">= 4"),
                ("understanding exact match", "understanding/overall", "understanding", ">= 0.6"),
                ("interleaved event accuracy", "interleaved/event_accuracy", "interleaved", ">= 0.5"),
                ("interleaved object persistence", "interleaved/object_persistence", "interleaved", ">= 0.7"))
SUITE_SIZE_FIELDS = {"geneval": "geneval_limit", "dpg": "dpg_prompts", "editcanvas": "editcanvas_per_task",
                     "understanding": "understanding_scenes", "interleaved": "interleaved_videos"}


def _done(stage_dir: Path) -> Optional[dict]:
    """A quickstart stage's DONE.json (what its quickstart.json record holds; quickstart.json itself is
    written after the report stage), or None when the stage did not finish."""
    path = stage_dir / "DONE.json"
    try:
        data = json.loads(path.read_text()) if path.is_file() else None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return None
    return data if isinstance(data, dict) else None


def _global_step(ckpt: Optional[str]) -> Optional[int]:
    """The optimizer steps a Lightning checkpoint was saved at (its "global_step"); None without one."""
    if not ckpt or not Path(ckpt).is_file():
        return None
    import torch

    return int(torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True).get("global_step", -1))


def _clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _unscored_reason(metrics: Optional[dict], bench: str, key: str) -> str:
    """Why a suite's metrics.json holds no `key` (the report's "—")."""
    if metrics is None:
        return "no suite found"
    section = metrics.get(bench)
    field = SUITE_SIZE_FIELDS[bench]
    if not isinstance(section, dict):
        size = (metrics.get("suite") or {}).get(field)
        return f"its suite did not run {bench} (suite.{field} = {size})" if size is not None else f"no {bench} scores"
    if "skipped" in section:
        return f"{bench} skipped: {section['skipped']}"
    if key == "interleaved/event_accuracy" and not section.get("events_stated"):
        return "no generated transition stated an event (events_stated = 0)"
    if key.startswith("geneval/") and key.count("/") == 2:
        return "the suite did not split prompts into seen / unseen (no train_captions)"
    return f"{key} not recorded"


def unified_sections(root: Path, files: Path) -> list[Section]:
    """"Unified model (every task)" (issue 15): when the quickstart under `root` ran its `unified` stage
    (<root>/unified/DONE.json, not skipped), every task's score of the unified model (AR fit on the
    task mixture) next to the T2I-only AR model of the same quickstart (<root>/validate, trained by
    <root>/ar_fit), "—" with the reason where a model was not scored; the ratio unified / T2I-only
    GenEval with both models' optimizer steps (read from their checkpoints); the suite's strip of
    generated stories (interleaved/strip.png: the held-out video's first caption and frame, then the
    model's transition text and frame) with the full texts and their oracle verdicts."""
    import shutil

    unified = _done(root / "unified")
    if unified is None or "skipped" in unified or not unified.get("run_dir"):
        return []
    uni_dir = Path(unified["run_dir"])
    t2i_done = _done(root / "validate")
    t2i_dir = Path(t2i_done["run_dir"]) if t2i_done and t2i_done.get("run_dir") else root / "validate"
    suites = {name: json.loads((d / "metrics.json").read_text()) if (d / "metrics.json").is_file() else None
              for name, d in (("unified", uni_dir), ("T2I-only", t2i_dir))}
    tops = {name: rp.headline(m) if m is not None else {} for name, m in suites.items()}
    rows, reasons = [], []
    for label, key, bench, target in UNIFIED_ROWS:
        cells = []
        for name, top in tops.items():
            if key in top:
                cells.append(top[key])
            else:
                cells.append("—")
                reasons.append(f"{name}, {label}: {_unscored_reason(suites[name], bench, key)}.")
        rows.append([label, *cells, target])
    ar_fit = _done(root / "ar_fit") or {}
    steps = {"unified": _global_step(unified.get("checkpoint")), "T2I-only": _global_step(ar_fit.get("checkpoint"))}
    step_text = {n: f"{s} steps" if s is not None else "steps unknown (no checkpoint)" for n, s in steps.items()}
    blocks: list[Block] = [
        ("text", f"The unified model (stage unified, configs/experiment/ar_shapes_unified.yaml: one AR model fit on "
                 f"the task mixture, {step_text['unified']}) next to the T2I-only AR model of the same quickstart "
                 f"(stage ar_fit, text-to-image only, {step_text['T2I-only']}), both scored by the suite. The "
                 f"T2I-only model never trained on editing, understanding or stories: its scores there are "
                 f"those of an untrained task."),
        ("table", "every task's score (targets: issue 15)", ["task", "unified", "T2I-only", "target"], rows)]
    mixture = (root / "unified" / "fit" / "overlay.yaml")
    if mixture.is_file():
        import yaml

        parts = ((yaml.safe_load(mixture.read_text()) or {}).get("data", {}).get("init_args", {}).get("mixture") or [])
        if parts:
            blocks.append(("text", "Unified training mixture (source folder: sampling weight): " + ", ".join(
                f"{Path(p['train_dir']).name}: {p.get('weight')}" for p in parts) + "."))
    if reasons:
        blocks.append(("text", "Not scored (—): " + " ".join(reasons)))
    uni_g, t2i_g = tops["unified"].get("geneval/overall"), tops["T2I-only"].get("geneval/overall")
    if uni_g is None or t2i_g is None:
        blocks.append(("text", "Unified / T2I-only GenEval: not computed (a model has no GenEval overall)."))
    elif t2i_g == 0:
        blocks.append(("text", f"Unified / T2I-only GenEval: not computed (T2I-only GenEval is 0; unified {uni_g:.4g})."))
    else:
        equal = steps["unified"] is not None and steps["unified"] == steps["T2I-only"]
        blocks.append(("text", f"Unified / T2I-only GenEval overall: {uni_g / t2i_g:.3f} (target >= 0.8 at equal "
                               f"steps; unified {step_text['unified']}, T2I-only {step_text['T2I-only']})."))
        if not equal:
            blocks.append(("warning", f"not at equal steps (unified {step_text['unified']}, T2I-only "
                                      f"{step_text['T2I-only']}): the ratio is not issue 15's comparison; run "
                                      f"the quickstart with --unified_steps equal to the AR stage's steps."))
    strip = uni_dir / "interleaved" / "strip.png"
    if strip.is_file():
        dest = files / "unified_story_strip.png"
        shutil.copyfile(strip, dest)
        blocks.append(("image", "generated stories (unified model)", dest,
                       "per row a held-out world video: its first frame under its opening caption, then the frame "
                       "the model drew under the transition text it wrote (texts cut to 40 characters; full below)"))
    stories = uni_dir / "interleaved" / "interleaved.json"
    if stories.is_file():
        records = json.loads(stories.read_text()).get("records") or []
        story_rows = [[r.get("caption", ""), _clip(r.get("text") or "(no text)", 160),
                       f"{sum(bool(e.get('holds')) for e in r.get('events', []))}/{len(r.get('events', []))}",
                       "no frame" if r.get("no_image") else f"{r.get('persistence_hits')}/{r.get('persistence_total')}"]
                      for r in records[:4]]
        if story_rows:
            blocks.append(("table", "the stories of the strip: texts and oracle verdicts",
                           ["opening caption", "generated transition", "events that hold", "objects kept"],
                           story_rows))
    elif "interleaved/event_accuracy" not in tops["unified"]:
        blocks.append(("text", f"No story strip: {uni_dir / 'interleaved'} holds no interleaved.json."))
    return [("Unified model (every task)", blocks)]


# ----------------------------------------------------------------------------- rendering
def section_id(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def md_cell(value: Any) -> str:
    """A table cell's text that cannot end its row or cell early (a model's text may hold '|' or newlines)."""
    return re.sub(r"\s+", " ", rp.fmt(value)).replace("|", "\\|")


def to_markdown(title: str, sections, root: Path) -> str:
    lines = [f"# {title}", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if block[0] == "text":
                lines += [block[1], ""]
            elif block[0] == "warning":
                lines += [f"> **Warning:** {block[1]}", ""]
            elif block[0] == "image":
                _, name, path, caption = block
                lines += [f"**{name}**" + (f": {caption}" if caption else ""), "",
                          f"![{name}]({path.relative_to(root).as_posix()})", ""]
            else:
                _, caption, header, rows = block
                if caption:
                    lines += [f"**{caption}**", ""]
                lines += ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(md_cell(v) for v in row) + " |" for row in rows] + [""]
    return "\n".join(lines)


STYLE = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;max-width:1240px;margin:1.5em auto;padding:0 1em;
     color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
nav a{margin-right:1em}
figure{margin:.6em 0 1.6em}figure img{max-width:100%;border:1px solid #e4e4e4;display:block}
figcaption{font-size:.9em;color:#555;margin-top:.3em}
.warning{background:#fff0f0;border:2px solid #d22;border-left-width:8px;padding:.6em 1em;margin:.6em 0;font-weight:600}
.tables{display:flex;flex-wrap:wrap;gap:0 2.5em;align-items:flex-start}
table{border-collapse:collapse;margin:.2em 0 1.2em}
td,th{border-bottom:1px solid #ddd;padding:3px 10px;font-size:13px;text-align:right;font-variant-numeric:tabular-nums}
th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.lead{font-size:1.1em;font-weight:600}
"""


def to_html(title: str, sections, root: Path) -> str:
    """One page; figures are <img> links relative to `root` (report_files/...)."""
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>"
             f"<style>{STYLE}</style></head><body><h1>{e(title)}</h1>",
             "<nav>" + "".join(f"<a href='#{section_id(h)}'>{e(h)}</a>" for h, _ in sections) + "</nav>"]
    for heading, blocks in sections:
        parts.append(f"<section id='{section_id(heading)}'><h2>{e(heading)}</h2>")
        in_tables = False
        for block in blocks:
            if block[0] == "table" and not in_tables:
                parts.append("<div class='tables'>")
                in_tables = True
            elif block[0] != "table" and in_tables:
                parts.append("</div>")
                in_tables = False
            if block[0] == "text":
                parts.append(f"<p class='lead'>{e(block[1])}</p>")
            elif block[0] == "warning":
                parts.append(f"<div class='warning'>⚠ {e(block[1])}</div>")
            elif block[0] == "image":
                _, name, path, caption = block
                parts.append(f"<figure><h3>{e(name)}</h3><img alt='{e(name)}' src='{e(path.relative_to(root).as_posix())}'>"
                             + (f"<figcaption>{e(caption)}</figcaption>" if caption else "") + "</figure>")
            else:
                _, caption, header, rows = block
                parts.append("<div>" + (f"<h3>{e(caption)}</h3>" if caption else ""))
                parts.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{e(rp.fmt(v))}</td>" for v in row) + "</tr>" for row in rows]
                parts.append("</table></div>")
        if in_tables:
            parts.append("</div>")
        parts.append("</section>")
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


def run(path: str, out: Optional[str] = None, baseline: Optional[str] = None,
        baselines: Optional[Union[list[str], str]] = None, curves: Optional[str] = None, title: Optional[str] = None,
        rl: Optional[str] = None, rl_curves: Optional[str] = None) -> str:
    """Write report.md + report.html (PNG figures in report_files/ next to them) for a run or sweep directory.

    Args:
        path: a run directory (a benchmark suite folder with metrics.json, or a Lightning run with
            metrics.csv) or a sweep directory (sweep.json).
        out: where to write the report (default: the directory itself).
        baseline: one baseline suite folder (shown as "baseline"); same as --baselines '[baseline=DIR]'.
        baselines: baseline suite folders in the same layout, as name=path (a bare path is named by its
            folder): `--baselines untrained=A,random_scenes=B`, or a list `--baselines '[untrained=A, random_scenes=B]'`,
            or repeated `--baselines+ ground_truth=C`.
        curves: folder searched (any depth) for Lightning metrics.csv files, one training stage each
            (default: the run directory).
        title: report title (default: the directory name).
        rl: the suite folder of the same suite run on the RL checkpoint (AR+RL, modules/rl): a section
            compares it with the run; rl_curves: the RL stage's metrics.csv (reward and KL curves).
    """
    root = Path(path)
    try:
        kind = rp.classify_dir(root)
    except ValueError as err:
        raise UsageError(str(err)) from err
    base_runs = {name: rp.load_run(folder) for name, folder in baseline_folders(baselines, baseline).items()}
    if curves is not None and not Path(curves).is_dir():
        raise UsageError(f"--curves {curves} is not a directory; pass the run root that holds the stages' metrics.csv")
    out_dir = Path(out) if out else root
    files = out_dir / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    for stale in files.glob("*.png"):   # figures of an earlier report of this folder
        stale.unlink()
    title = title or f"NextFlow {kind} report: {root.resolve().name}"
    if kind == "sweep":
        sections, rows, header = sweep_sections(root, files)
    else:
        loaded = rp.load_run(root)
        sections = run_sections(loaded, files, baselines=base_runs, curves=Path(curves) if curves else None)
        if rl is not None:  # after the trained model's own samples (pictures first), before the curves
            at = next((i + 1 for i, sec in enumerate(sections) if sec[0] == "Samples"), 0)
            sections.insert(at, rl_section(loaded, rp.load_run(Path(rl)), files, Path(rl_curves) if rl_curves else None))
        header, rows = headline_rows({"trained": loaded, **base_runs})
        if not rows and loaded["csv"]:
            rows = [[k, float(v[-1])] for k, (_, v) in sorted(loaded["csv"].items())]
            header = ["last logged", "value"]
    sections += refiner_sections(Path(curves) if curves else root, files)
    sections += unified_sections(Path(curves) if curves else root, files)
    env = rp.environment(root)
    sections.append(("Environment", [("table", "", ["", "value"], [[k, v] for k, v in env.items()])]))
    (out_dir / "report.md").write_text(to_markdown(title, sections, out_dir))
    (out_dir / "report.html").write_text(to_html(title, sections, out_dir))
    print_terminal(title, header, rows, out_dir)
    return str(out_dir / "report.md")
