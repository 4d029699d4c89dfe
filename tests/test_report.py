"""`main.py report`: renders from a tiny synthetic run (metrics.csv + metrics.json + a GenEval-layout
folder + an edit sample) and a synthetic sweep; its PNGs open with PIL and show something; the
HTML is self-contained; other benchmarks' folders and non-run folders give a clear error."""
import json

import numpy as np
import pytest
from PIL import Image

import main
from commands import UsageError
from commands import report

METRICS = {
    "geneval": {"overall": 0.5, "tasks": {"single_object": 1.0, "counting": 0.25}},
    "dpg": {"dpg": 70.0, "categories_broad": {"entity": 80.0, "relation": 50.0}},
    "editcanvas": {"overall": 6.5, "groups": {"local": {"sc": 7.0, "pq": 9.0, "overall": 7.9, "n": 5}}},
    "fid_clip": {"fid": {"status": "skipped", "reason": "no Inception weights"}, "clip_score": {"status": "ok", "value": 25.0}},
}


def make_run(root, metrics=METRICS, loss_scale=1.0):
    logs = root / "lightning_logs" / "version_0"
    logs.mkdir(parents=True)
    lines = ["step,epoch,train/loss,train/loss_scale_00,train/loss_scale_01,val/geneval_overall"]
    for step in range(0, 50, 5):
        loss = loss_scale * 3.0 * np.exp(-step / 20)
        lines.append(f"{step},0,{loss:.4f},{loss * 0.5:.4f},{loss * 1.5:.4f},")
        if step % 20 == 0:
            lines.append(f"{step},0,,,,{step / 100:.2f}")
    (logs / "metrics.csv").write_text("\n".join(lines) + "\n")
    (root / "metrics.json").write_text(json.dumps(metrics))
    rng = np.random.default_rng(0)
    for index, (tag, prompt) in enumerate([("single_object", "a photo of a red circle"),
                                           ("counting", "a photo of three blue stars")]):
        folder = root / "geneval" / f"{index:05d}"
        (folder / "samples").mkdir(parents=True)
        (folder / "metadata.jsonl").write_text(json.dumps({"tag": tag, "include": [], "prompt": prompt}) + "\n")
        for k in range(4):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "samples" / f"{k:04d}.png")
    (root / "geneval" / "results.jsonl").write_text("".join(      # evaluation/geneval.py's per-image rows
        json.dumps({"filename": f"elsewhere/geneval/{i:05d}/samples/{k:04d}.png", "correct": k % 2 == 0}) + "\n"
        for i in range(2) for k in range(4)))
    edit = root / "editcanvas" / "recolor_0000"
    edit.mkdir(parents=True)
    (edit / "sample.json").write_text(json.dumps({"id": "recolor_0000", "task": "recolor",
                                                  "instruction": "Make the red circle blue."}))
    for name in ("source", "result", "target"):
        Image.fromarray(np.full((32, 32, 3), 100, np.uint8)).save(edit / f"{name}.png")
    return root


def test_run_report(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    report.run(str(run_dir))
    md = (run_dir / "report.md").read_text()
    assert "| geneval/overall | 0.5 |" in md and "| fid_clip/clip_score | 25 |" in md
    assert "| counting | 0.25 |" in md and "| relation | 50 |" in md
    assert "| local | 7 | 9 | 7.9 | 5 |" in md                       # per-group table with its fields
    assert "skipped" in md                                         # skipped metrics say so
    files = sorted(p.name for p in (run_dir / "report_files").glob("*.png"))
    assert files == ["benchmarks.png", "edits.png", "geneval_counting.png",
                     "geneval_single_object.png", "loss.png", "loss_scales.png"]
    for name in files:
        assert f"report_files/{name}" in md
        with Image.open(run_dir / "report_files" / name) as im:
            im.verify()
        pixels = np.asarray(Image.open(run_dir / "report_files" / name).convert("L"), float)
        assert pixels.std() > 5                                    # not a blank canvas
    grid = np.asarray(Image.open(run_dir / "report_files" / "geneval_counting.png").convert("RGB")).astype(int)
    assert (grid[20:30, 0:2] == (0, 170, 0)).all() and (grid[20:30, 96:98] == (220, 0, 0)).all()  # correct / wrong
    page = (run_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(files) and "report_files/" not in page
    assert "torch" in md and "git_commit" in md
    assert "geneval/overall" in capsys.readouterr().out           # the rich table


def test_sweep_report_and_baseline(tmp_path):
    sweep = tmp_path / "sweep"
    make_run(sweep / "000_a", {"geneval": {"overall": 0.4}})
    make_run(sweep / "001_b", {"geneval": {"overall": 0.7}}, loss_scale=0.5)
    (sweep / "002_c").mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"kind": "sweep", "name": "t", "base": ["x.yaml"], "points": [
        {"dir": "000_a", "name": "000_a", "status": "done", "wall_s": 1.5, "overrides": {"model.init_args.lr": 0.1}},
        {"dir": "001_b", "name": "001_b", "status": "done", "wall_s": 2.0, "overrides": {"model.init_args.lr": 0.2}},
        {"dir": "002_c", "name": "002_c", "status": "failed", "wall_s": 0.1, "error": "exit status 3\nboom",
         "overrides": {"model.init_args.lr": 0.3}}]}))
    report.run(str(sweep))
    md = (sweep / "report.md").read_text()
    # run, status, wall_s, swept lr, geneval overall, last train/loss, last val/geneval_overall
    assert "| run | status | wall_s | lr | geneval overall | last train loss | last val geneval_overall |" in md
    assert "| 000_a | done | 1.5 | 0.1 | 0.4 | 0.3162 | 0.4 |" in md
    assert "| 001_b | done | 2 | 0.2 | 0.7 | 0.1581 | 0.4 |" in md
    assert "| 002_c | failed | 0.1 | 0.3 |  |  |  |" in md and "boom" in md
    # the summary table first: swept keys and the headline metrics only
    assert md.index("| run | status | wall_s | lr | geneval/overall |") < md.index("| run | status | wall_s | lr | geneval overall |")
    assert "| 001_b | done | 2 | 0.2 | 0.7 |\n" in md
    for name in ("sweep_metrics.png", "sweep_losses.png", "000_a_loss.png", "001_b_loss_scales.png"):
        with Image.open(sweep / "report_files" / name) as im:
            im.verify()
    report.run(str(sweep / "001_b"), baseline=str(sweep / "000_a"), out=str(tmp_path / "cmp"))
    assert "| geneval/overall | 0.7 | 0.4 |" in (tmp_path / "cmp" / "report.md").read_text()


def test_wrong_directories_give_clear_errors(tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    with pytest.raises(UsageError, match="GenEval results folder"):
        report.run(str(run_dir / "geneval"))
    (tmp_path / "dpg").mkdir()
    (tmp_path / "dpg" / "dpg_results.json").write_text("{}")
    with pytest.raises(UsageError, match="dpg benchmark results"):
        report.run(str(tmp_path / "dpg"))
    (tmp_path / "empty").mkdir()
    assert main.main(["report", "--path", str(tmp_path / "empty")]) == 2
    assert "not a run or sweep directory" in capsys.readouterr().err
