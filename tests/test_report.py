"""`main.py report`: pictures first (per-task GenEval sheets, trained vs baselines, 128 px cells,
pass/fail marks from results.jsonl), then every training stage's curves found under --curves,
then compact tables (headline vs baselines, per task, seen/unseen, settings with α and the
untrained-scales warning); report.md and report.html link the PNGs next to them. Built from tiny
synthetic suite folders; a sweep; clear errors for wrong folders. The slow test renders the page
in headless Chromium and checks every image loaded."""
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import main
from commands import UsageError
from commands import report
from evaluation.grids import FAIL, PASS, comparison_sheet

METRICS = {
    "geneval": {"overall": 0.5, "tasks": {"single_object": 1.0, "counting": 0.25},
                "seen": {"overall": 0.6}, "unseen": {"overall": 0.2}},
    "dpg": {"dpg": 70.0, "categories_broad": {"entity": 80.0, "relation": 50.0}},
    "editcanvas": {"overall": 6.5, "groups": {"local": {"sc": 7.0, "pq": 9.0, "overall": 7.9, "n": 5}}},
    "fid_clip": {"fid": {"status": "skipped", "reason": "no Inception weights"}, "clip_score": {"status": "ok", "value": 25.0}},
    "suite": {"width": 128, "height": 128}, "alpha": 0.9, "untrained_scales": True, "step": 40,
    "trained_scale_counts": {"8": 5600, "12": 2400}, "untrained_scale_counts": [],
}
PROMPTS = [("single_object", "a photo of a red circle"),
           ("counting", "a photo of three blue stars and a very long tail of words that a 64 px thumbnail "
                        "would have cut off after the first line of text, ending in OMEGA")]


def make_suite(root, metrics=METRICS, correct=lambda i, k: k % 2 == 0, colour=None, edits=True):
    """A benchmark suite folder in evaluation/suite.py's layout."""
    root.mkdir(parents=True)
    (root / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(0)
    for index, (tag, prompt) in enumerate(PROMPTS):
        folder = root / "geneval" / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps({"tag": tag, "include": [], "prompt": prompt}) + "\n")
        for k in range(4):
            image = np.full((32, 32, 3), colour, np.uint8) if colour is not None else \
                rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(folder / "samples" / f"{k:04d}.png")
    (root / "geneval" / "results.jsonl").write_text("".join(      # evaluation/geneval.py's per-image rows
        json.dumps({"filename": f"elsewhere/geneval/{i:05d}/samples/{k:04d}.png", "tag": PROMPTS[i][0],
                    "correct": correct(i, k), "reason": ""}) + "\n" for i in range(2) for k in range(4)))
    if edits:
        edit = root / "editcanvas" / "recolor_0000"
        edit.mkdir(parents=True)
        (edit / "sample.json").write_text(json.dumps({"id": "recolor_0000", "task": "recolor",
                                                      "instruction": "Make the red circle blue."}))
        for name in ("source", "result", "target"):
            Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(edit / f"{name}.png")
    return root


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(",".join(header) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))


def make_run_root(root, loss_scale=1.0):
    """A quickstart-like run root: two stages' Lightning CSVs and the scored suite folders."""
    write_csv(root / "tokenizer_stage1" / "metrics.csv", ["epoch", "step", "train/loss", "val/loss", "val/psnr"],
              [[0, s, 2.0 / (1 + s), "", ""] for s in range(0, 30, 3)] + [[0, 29, "", 0.3, 21.5]])
    losses = [loss_scale * 3.0 * np.exp(-s / 20) for s in range(0, 50, 5)]
    write_csv(root / "ar_fit" / "lightning_logs" / "version_0" / "metrics.csv",
              ["step", "epoch", "train/loss", "train/loss_scale_00", "train/loss_scale_01", "train/alpha",
               "val/vision_nll", "val/geneval_overall"],
              [[s, 0, f"{v:.4f}", f"{v * 0.5:.4f}", f"{v * 1.5:.4f}", 0.9, "", ""] for s, v in zip(range(0, 50, 5), losses)]
              + [[20, 0, "", "", "", "", 2.5, 0.1], [45, 0, "", "", "", "", 2.1, 0.3]])
    write_csv(root / "tokenizer_val128" / "metrics.csv", ["epoch", "step", "val/agreement", "val/psnr"], [[0, 0, 0.97, 24.5]])
    for k, stage in enumerate(["tokenizer_stage1", "tokenizer_val128", "ar_fit/lightning_logs/version_0"]):
        os.utime(root / stage / "metrics.csv", (1e9 + k, 1e9 + k))   # pipeline order = age order
    return root


@pytest.fixture
def quick(tmp_path):
    root = make_run_root(tmp_path / "quick")
    trained = make_suite(root / "validate")
    untrained = make_suite(root / "validate_untrained", {"geneval": {"overall": 0.0, "tasks": {"single_object": 0.0,
                                                                                              "counting": 0.0},
                                                                     "seen": {"overall": 0.0}, "unseen": {"overall": None}}},
                           correct=lambda i, k: False, edits=False)
    truth = make_suite(root / "baselines" / "ground_truth", {"geneval": {"overall": 1.0}}, correct=lambda i, k: True,
                       edits=False)
    return root, trained, untrained, truth


def sections(md):
    return re.findall(r"^## (.+)$", md, re.M)


def test_report_leads_with_pictures_then_curves_then_tables(quick, capsys):
    root, trained, untrained, truth = quick
    out = root / "report"
    report.run(str(trained), out=str(out), baselines=[f"untrained={untrained}", f"ground_truth={truth}"],
               curves=str(root))
    md = (out / "report.md").read_text()
    assert sections(md) == ["Warnings", "Samples", "Training curves", "Scores", "Details (trained)", "Environment"]
    assert "untrained_scales" in md                                      # the warning names its source
    assert "GenEval overall: trained 0.5 · untrained 0 · ground_truth 1" in md
    # per task: 4 images per model; trained passes 2 of 4 per prompt, untrained none, ground truth all
    assert "images judged correct: trained 2/4, untrained 0/4, ground_truth 4/4" in md
    files = sorted(p.name for p in (out / "report_files").glob("*.png"))
    assert files == ["curves_00_tokenizer_stage1.png", "curves_02_ar_fit.png", "edits.png",
                     "samples_counting.png", "samples_single_object.png"]
    for name in files:
        assert f"](report_files/{name})" in md
        pixels = np.asarray(Image.open(out / "report_files" / name).convert("L"), float)
        assert pixels.std() > 5                                          # not a blank canvas
    # one column block per model, each 4 cells of 128 px side by side in rows of 2 (3 models)
    sheet = Image.open(out / "report_files" / "samples_single_object.png")
    assert sheet.width >= 3 * 2 * 128
    # tables: headline across models, per task, seen vs unseen, settings with α and resolution
    assert "| metric | trained | untrained | ground_truth |" in md
    assert "| geneval/overall | 0.5 | 0 | 1 |" in md
    assert "| counting | 0.25 | 0 |  |" in md
    assert "| metric | trained seen | trained unseen | untrained seen |" in md and "| overall | 0.6 | 0.2 | 0 |" in md
    assert "| α (scale reweighting, NF §4.3) | 0.9 |" in md and "| scored resolution (px) | 128×128 |" in md
    assert "| scored on untrained scales | True |" in md
    assert "| scale counts trained (scales: samples) | 8: 5600 · 12: 2400 |" in md
    assert "| scale counts scored but never trained | none |" in md
    assert "trained_scale_counts" not in md.split("## Details")[1]         # a setting, not a benchmark
    assert "| local | 7 | 9 | 7.9 | 5 |" in md and "skipped" in md       # details kept
    assert "No Lightning metrics.csv" not in md
    # a stage that logged one step (a validation run) is a table column, not a plot
    assert "| metric | tokenizer_val128 |" in md and "| val/agreement | 0.97 |" in md
    page = (out / "report.html").read_text()
    assert "base64" not in page and "class='warning'" in page
    sources = re.findall(r"<img alt='[^']*' src='([^']+)'", page)
    assert sorted(sources) == sorted(f"report_files/{n}" for n in files)
    assert page.index("id='samples'") < page.index("id='training-curves'") < page.index("id='scores'")
    assert "geneval/overall" in capsys.readouterr().out                 # the rich table


def test_alpha_falls_back_to_the_logged_value(quick):
    root, trained, _, _ = quick
    metrics = {k: v for k, v in METRICS.items() if k not in ("alpha", "untrained_scales")}
    (trained / "metrics.json").write_text(json.dumps(metrics))
    report.run(str(trained), out=str(root / "r2"), curves=str(root))
    md = (root / "r2" / "report.md").read_text()
    assert "| α (scale reweighting, NF §4.3) | 0.9 (last logged in ar_fit) |" in md
    assert "Warnings" not in sections(md)


def test_comparison_sheet_cells_marks_and_wrapped_prompts():
    red, blue = np.full((16, 16, 3), (200, 0, 0), np.uint8), np.full((16, 16, 3), (0, 0, 200), np.uint8)
    short = comparison_sheet([("a red circle", [[(red, True)], [(blue, False)]])], ["trained", "baseline"], per_line=1)
    long = comparison_sheet([("word " * 80, [[(red, True)], [(blue, False)]])], ["trained", "baseline"], per_line=1)
    assert long.height - short.height >= 2 * 15                          # the prompt wraps, nothing is cut
    pixels = np.asarray(short).astype(int)
    for colour, frame in (((200, 0, 0), PASS), ((0, 0, 200), FAIL)):
        ys, xs = np.nonzero((pixels == colour).all(-1))
        assert xs.max() - xs.min() + 1 == 128 == ys.max() - ys.min() + 1  # every pixel of the 128 px cell visible
        assert tuple(pixels[ys.max() + 2, xs.min() + 40]) == frame       # a frame round it: green pass, red fail


def test_sweep_report_and_baseline(tmp_path):
    sweep = tmp_path / "sweep"
    make_run_root(make_suite(sweep / "000_a", {"geneval": {"overall": 0.4}}))
    make_run_root(make_suite(sweep / "001_b", {"geneval": {"overall": 0.7}}), loss_scale=0.5)
    (sweep / "002_c").mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"kind": "sweep", "name": "t", "base": ["x.yaml"], "points": [
        {"dir": "000_a", "name": "000_a", "status": "done", "wall_s": 1.5, "overrides": {"model.init_args.lr": 0.1}},
        {"dir": "001_b", "name": "001_b", "status": "done", "wall_s": 2.0, "overrides": {"model.init_args.lr": 0.2}},
        {"dir": "002_c", "name": "002_c", "status": "failed", "wall_s": 0.1, "error": "exit status 3\nboom",
         "overrides": {"model.init_args.lr": 0.3}}]}))
    report.run(str(sweep))
    md = (sweep / "report.md").read_text()
    # every logged metric: the newest metrics.csv of each point (its AR stage)
    assert "| run | status | wall_s | lr | geneval overall | last train loss | last val geneval_overall | " \
           "last val vision_nll |" in md
    assert "| 000_a | done | 1.5 | 0.1 | 0.4 | 0.3162 | 0.3 | 2.1 |" in md
    assert "| 001_b | done | 2 | 0.2 | 0.7 | 0.1581 | 0.3 | 2.1 |" in md
    assert "| 002_c | failed | 0.1 | 0.3 |  |  |  |  |" in md and "boom" in md
    # the summary table first: swept keys and the headline metrics only
    assert md.index("| run | status | wall_s | lr | geneval/overall |") < md.index("| run | status | wall_s | lr | geneval overall |")
    for name in ("sweep_metrics.png", "sweep_losses.png", "000_a_curves_02_ar_fit.png", "001_b_samples_counting.png"):
        with Image.open(sweep / "report_files" / name) as im:
            im.verify()
    report.run(str(sweep / "001_b"), baseline=str(sweep / "000_a"), out=str(tmp_path / "cmp"))
    assert "| geneval/overall | 0.7 | 0.4 |" in (tmp_path / "cmp" / "report.md").read_text()


def test_baselines_on_the_command_line(quick):
    root, trained, untrained, truth = quick
    out = root / "cli"
    assert main.main(["report", str(trained), "--baselines", f"untrained={untrained},{truth}", "--out", str(out)]) == 0
    assert "| metric | trained | untrained | ground_truth |" in (out / "report.md").read_text()   # bare path: its folder
    assert main.main(["report", str(trained), "--baselines", f"[u={untrained}]", "--baselines+", f"gt={truth}",
                      "--out", str(out)]) == 0
    assert "| metric | trained | u | gt |" in (out / "report.md").read_text()


def test_wrong_directories_give_clear_errors(tmp_path, capsys):
    run_dir = make_suite(tmp_path / "run")
    with pytest.raises(UsageError, match="GenEval results folder"):
        report.run(str(run_dir / "geneval"))
    (tmp_path / "dpg").mkdir()
    (tmp_path / "dpg" / "dpg_results.json").write_text("{}")
    with pytest.raises(UsageError, match="dpg benchmark results"):
        report.run(str(tmp_path / "dpg"))
    (tmp_path / "empty").mkdir()
    assert main.main(["report", "--path", str(tmp_path / "empty")]) == 2
    assert "not a run or sweep directory" in capsys.readouterr().err
    assert main.main(["report", str(run_dir), "--baselines", f"[untrained={tmp_path / 'nowhere'}]"]) == 2
    assert "baseline untrained:" in capsys.readouterr().err
    assert main.main(["report", str(run_dir), "--baselines", "[=x]"]) == 2
    assert "write name=path" in capsys.readouterr().err


CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const images = [...document.images].map(i => [i.getAttribute('src'), i.complete, i.naturalWidth, i.naturalHeight]);
  const ids = [...document.querySelectorAll('section')].map(s => [s.id, s.getBoundingClientRect().height]);
  const pre = document.createElement('pre'); pre.id = 'rendered';
  pre.textContent = JSON.stringify({images, ids}); document.body.appendChild(pre);
});
</script>"""


def chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason="headless Chromium is not installed (`make browser` installs it)")
def test_report_renders_in_headless_chromium(quick, tmp_path):
    root, trained, untrained, truth = quick
    out = root / "report"
    report.run(str(trained), out=str(out), baselines=[f"untrained={untrained}", f"ground_truth={truth}"],
               curves=str(root))
    page = (out / "report.html").read_text()
    (out / "check.html").write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
             "--virtual-time-budget=10000", "--window-size=1280,4000"]
    dom = subprocess.run([chromium(), *flags, "--dump-dom", (out / "check.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r"<pre id=\"rendered\">(.*?)</pre>", dom, re.S)
    assert found, f"the check script did not run; DOM head: {dom[:300]!r}"
    rendered = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    files = {p.name: Image.open(p).size for p in (out / "report_files").glob("*.png")}
    assert len(rendered["images"]) == len(files) == 5
    for src, complete, width, height in rendered["images"]:            # every <img> decoded at its file's size
        assert complete and (width, height) == files[src.split("/")[-1]], src
    heights = dict(rendered["ids"])
    assert set(heights) == {"warnings", "samples", "training-curves", "scores", "details-trained", "environment"}
    assert all(h > 40 for h in heights.values()), heights
    shot = out / "screenshot.png"
    subprocess.run([chromium(), *flags, f"--screenshot={shot}", (out / "report.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), float)
    assert pixels.shape == (4000, 1280) and pixels.std() > 20            # the page painted, not blank


def test_rl_section_compares_ar_with_ar_plus_rl(quick):
    root, trained, _untrained, _truth = quick
    rl_metrics = {"geneval": {"overall": 0.75, "tasks": {"single_object": 1.0, "counting": 0.5},
                              "seen": {"overall": 0.8}, "unseen": {"overall": 0.5}}, "dpg": {"dpg": 72.5}}
    rl_suite = make_suite(root / "validate_rl", rl_metrics, correct=lambda i, k: True, edits=False)
    write_csv(root / "rl" / "metrics.csv", ["step", "train/reward", "train/ShapesGenEvalReward/correct", "train/kl",
                                            "train/kl_scale_00", "train/loss"],
              [[s, 0.1 + 0.01 * s, 0.0, 0.001 * s, 0.002 * s, 0.5] for s in range(12)])
    report.run(str(trained), out=str(root / "out"), rl=str(rl_suite), rl_curves=str(root / "rl" / "metrics.csv"))
    md = (root / "out" / "report.md").read_text()
    names = sections(md)  # pictures first: the trained model's samples, then the comparison
    assert names.index("AR vs AR+RL (prefix-tuning GRPO)") == names.index("Samples") + 1
    assert "| metric | AR | AR+RL | difference |" in md
    assert "| geneval/overall | 0.5 | 0.75 | 0.25 |" in md and "| geneval/counting | 0.25 | 0.5 | 0.25 |" in md
    assert "| geneval/unseen/overall | 0.2 | 0.5 | 0.3 |" in md and "| dpg/score | 70 | 72.5 | 2.5 |" in md
    for name in ("rl_reward.png", "rl_kl.png", "rl_samples_counting.png"):
        with Image.open(root / "out" / "report_files" / name) as im:
            im.verify()
    assert "images judged correct: AR 2/4, AR+RL 4/4" in md


def make_unified_quickstart(root, unified_done):
    """The quickstart stages the unified section reads: validate (T2I-only suite), ar_fit and unified
    DONE.json records, checkpoints holding only global_step, the unified suite with its story strip."""
    import torch

    t2i = make_suite(root / "validate" / "benchmarks" / "validate",
                     {**METRICS, "understanding": {"overall": 0.0},
                      "suite": {"understanding_scenes": 8, "interleaved_videos": 0}}, edits=False)
    (root / "validate" / "DONE.json").write_text(json.dumps({"run_dir": str(t2i)}))
    (root / "ar_fit").mkdir(parents=True)
    torch.save({"global_step": 6}, root / "ar_fit" / "last.ckpt")
    (root / "ar_fit" / "DONE.json").write_text(json.dumps({"checkpoint": str(root / "ar_fit" / "last.ckpt")}))
    uni = make_suite(root / "unified" / "benchmarks" / "validate",
                     {"geneval": {"overall": 0.4, "seen": {"overall": 0.5}},
                      "editcanvas": {"overall": 4.5}, "understanding": {"overall": 0.625},
                      "interleaved": {"event_accuracy": 0.5, "object_persistence": 0.75, "events_stated": 4,
                                      "items": 2},
                      "suite": {"dpg_prompts": 0, "interleaved_videos": 2}}, edits=False)
    (uni / "interleaved").mkdir()
    Image.fromarray(np.full((40, 80, 3), 200, np.uint8)).save(uni / "interleaved" / "strip.png")
    (uni / "interleaved" / "interleaved.json").write_text(json.dumps({"records": [
        {"caption": "A red circle and a blue square.", "text": "The red circle moves left.",
         "events": [{"event": "move", "holds": True}], "persistence_hits": 2, "persistence_total": 2},
        {"caption": "A green star.", "text": "", "events": [], "persistence_hits": 0, "persistence_total": 1,
         "no_image": True},
        {"caption": "A blue cross.", "text": "x|y\nz" + "w" * 300, "events": [{"event": "unparsed"}],
         "persistence_hits": 0, "persistence_total": 1}]}))
    (root / "unified" / "fit").mkdir(parents=True)
    torch.save({"global_step": 2}, root / "unified" / "fit" / "last.ckpt")
    (root / "unified" / "fit" / "overlay.yaml").write_text(
        "data:\n  init_args:\n    mixture:\n    - {train_dir: /x/pretokenize/train64, weight: 0.35}\n"
        "    - {train_dir: /x/unified/edit, weight: 0.2}\n")
    (root / "unified" / "DONE.json").write_text(json.dumps(
        unified_done(checkpoint=str(root / "unified" / "fit" / "last.ckpt"), run_dir=str(uni))))
    return t2i


def test_unified_section_shows_every_task_the_ratio_and_the_story_strip(tmp_path):
    root = tmp_path / "quick"
    t2i = make_unified_quickstart(root, dict)
    report.run(str(t2i), out=str(root / "out"), curves=str(root))
    md = (root / "out" / "report.md").read_text()
    assert "Unified model (every task)" in sections(md)
    assert "| task | unified | T2I-only | target |" in md
    assert "| GenEval overall | 0.4 | 0.5 |  |" in md
    assert "| GenEval, prompts seen in training | 0.5 | 0.6 |  |" in md
    assert "| GenEval, unseen prompts | — | 0.2 |  |" in md
    assert "| DPG | — | 70 |  |" in md
    assert "| EditCanvas overall (oracle judge, 0-10) | 4.5 | 6.5 | >= 4 |" in md
    assert "| understanding exact match | 0.625 | 0 | >= 0.6 |" in md
    assert "| interleaved event accuracy | 0.5 | — | >= 0.5 |" in md
    assert "| interleaved object persistence | 0.75 | — | >= 0.7 |" in md
    assert "unified, DPG: its suite did not run dpg (suite.dpg_prompts = 0)." in md
    assert "T2I-only, interleaved event accuracy: its suite did not run interleaved (suite.interleaved_videos = 0)." in md
    assert "unified, GenEval, unseen prompts: the suite did not split prompts" in md
    assert "Unified / T2I-only GenEval overall: 0.800" in md and "unified 2 steps, T2I-only 6 steps" in md
    assert "**Warning:** not at equal steps" in md
    assert "train64: 0.35, edit: 0.2" in md
    assert "| A red circle and a blue square. | The red circle moves left. | 1/1 | 2/2 |" in md
    assert "| A green star. | (no text) | 0/0 | no frame |" in md
    assert f"| A blue cross. | x\\|y z{'w' * 154}… | 0/1 | 0/1 |" in md   # a model's '|' and newline stay in the cell
    assert "![generated stories (unified model)](report_files/unified_story_strip.png)" in md
    with Image.open(root / "out" / "report_files" / "unified_story_strip.png") as im:
        assert im.size == (80, 40)
    assert "unified_story_strip.png" in (root / "out" / "report.html").read_text()


def test_unified_section_absent_when_the_stage_was_skipped(tmp_path):
    root = tmp_path / "quick"
    t2i = make_unified_quickstart(root, lambda **kw: {"skipped": "Sizes.unified_steps is 0"})
    report.run(str(t2i), out=str(root / "out"), curves=str(root))
    md = (root / "out" / "report.md").read_text()
    assert "Unified model" not in md and "unified_story_strip" not in md
    assert not (root / "out" / "report_files" / "unified_story_strip.png").exists()
