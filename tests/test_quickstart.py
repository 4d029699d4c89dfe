"""The quickstart end to end at toy size (a few steps per stage): every stage writes its outputs,
the report renders, and a second run reuses every finished stage."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_toy_end_to_end_and_resume(tmp_path):
    out = tmp_path / "qs"
    cmd = [sys.executable, str(ROOT / "main.py"), "quickstart", "--out", str(out), "--size", "toy"]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    stages = [row["stage"] for row in json.loads((out / "quickstart.json").read_text())]
    assert stages == ["world", "preview", "geneval_ground_truth", "tokenizer_stage1", "tokenizer_stage2",
                      "tokenizer_stage3", "tokenizer_val128", "pretokenize", "ar_fit", "validate", "rl", "validate_rl",
                      "unified", "validate_untrained", "baselines", "refiner", "report"]
    log = {row["stage"]: row for row in json.loads((out / "quickstart.json").read_text())}
    assert log["geneval_ground_truth"]["overall"] >= 0.97
    assert log["tokenizer_val128"]["val/agreement_orig"] >= 0.97  # 128 px held-out scenes, oracle-readable
    for key in ("geneval/overall", "dpg/score", "editcanvas/overall", "understanding/overall"):
        assert key in log["validate"] and key in log["validate_untrained"]
    assert log["world"]["eval_overlap"]["unseen_in_captions"] == 0    # held-out prompts never captioned
    for name in ("random_scenes", "ground_truth"):   # the baselines' suite folders, scored like the model's
        metrics = json.loads((out / "baselines" / name / "metrics.json").read_text())
        assert metrics["baseline"]["name"] == name and metrics["geneval"]["split"] == "captions"
    assert log["baselines"]["ground_truth"]["geneval/overall"] >= 0.95
    assert (out / "report" / "report.html").stat().st_size > 10_000
    assert set(log["refiner"]["tables"]["64 px"]) == {"decoder", "regression", "flow 1 step", "flow 2 steps",
                                                      "flow 4 steps", "flow 8 steps"}
    assert "Diffusion refiner" in (out / "report" / "report.md").read_text()
    assert (out / "ar_fit" / "last.ckpt").is_file()
    assert (out / "rl" / "last.ckpt").is_file() and "train/reward" in log["rl"]   # GRPO from the AR checkpoint
    assert "geneval/overall" in log["validate_rl"] and "dpg/score" in log["validate_rl"]
    assert "AR vs AR+RL" in (out / "report" / "report.md").read_text()
    second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0
    assert second.stdout.count("reusing") == len(stages)
