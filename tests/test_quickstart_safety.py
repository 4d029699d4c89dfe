"""Quickstart process safety: one quickstart per output folder, DONE.json written atomically and a
corrupt one re-runs its stage, children die with the quickstart, resumed runs append to
metrics.csv, stage temp files are cleared."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from commands import UsageError
from commands.quickstart import OutputLock, read_done, run_stage
from main import main
from modules.common.loggers import AppendingCSVLogger

ROOT = Path(__file__).resolve().parents[1]


def test_second_quickstart_on_the_same_folder_refuses(tmp_path, capsys):
    with OutputLock(tmp_path):
        assert main(["quickstart", "--out", str(tmp_path), "--size", "toy"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"another quickstart (pid {os.getpid()}) is running in {tmp_path}" in lines[0]
        with pytest.raises(UsageError, match="another quickstart"):
            OutputLock(tmp_path).__enter__()
    with OutputLock(tmp_path):  # released on exit
        pass


def test_lock_held_by_another_process_and_released_when_it_is_killed(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from commands.quickstart import OutputLock; from pathlib import Path;"
                               "l = OutputLock(Path(sys.argv[2])).__enter__(); print('held', flush=True);"
                               "time.sleep(60)", str(ROOT), str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match=f"pid {holder.pid}"):
            OutputLock(tmp_path).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(tmp_path):  # the kernel released the dead holder's lock
        pass


def test_done_json_is_atomic_and_a_corrupt_one_reruns_the_stage(tmp_path):
    calls = []

    def body(stage_dir):
        calls.append(stage_dir)
        return {"value": len(calls)}

    log = []
    assert run_stage("s", tmp_path, body, log)["value"] == 1
    done = tmp_path / "s" / "DONE.json"
    assert json.loads(done.read_text())["value"] == 1
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["DONE.json"]  # no temp files left
    assert run_stage("s", tmp_path, body, log)["value"] == 1 and len(calls) == 1  # reused
    done.write_text('{"value": 1, "seco')  # a truncated write
    assert read_done(tmp_path / "s") is None
    assert run_stage("s", tmp_path, body, log)["value"] == 2 and len(calls) == 2  # ran again
    done.write_text("[1, 2]")
    assert read_done(tmp_path / "s") is None
    (tmp_path / "s" / ".tmp").mkdir()
    (tmp_path / "s" / ".tmp" / "tmpabc123").write_bytes(b"half a checkpoint")
    run_stage("s", tmp_path, body, log)
    assert not (tmp_path / "s" / ".tmp").exists()  # an interrupted child's temp files are cleared


def _children_of(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_child_dies_with_a_killed_quickstart(tmp_path):
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from commands.quickstart import run_main;"
              "run_main('world', '--out', sys.argv[2], '--num_samples', '1000000', '--samples_per_shard', '1000000')")
    parent = subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(tmp_path / "w")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, children = time.time() + 60, []
    while time.time() < deadline and not children:
        children = _children_of(parent.pid)
        time.sleep(0.2)
    assert children, "the quickstart never started its child"
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{c}").exists() and "zombie" not in
                                         Path(f"/proc/{c}/status").read_text().lower() for c in children):
        time.sleep(0.2)
    alive = [c for c in children if Path(f"/proc/{c}").exists()
             and "zombie" not in Path(f"/proc/{c}/status").read_text().lower()]
    for c in alive:
        os.kill(c, signal.SIGKILL)
    assert not alive, "the child outlived its killed parent"


def test_appending_csv_logger_keeps_earlier_rows(tmp_path):
    first = AppendingCSVLogger(str(tmp_path), name="", version="")
    first.log_metrics({"train/loss": 1.0}, step=0)
    first.log_metrics({"train/loss": 0.5}, step=1)
    first.finalize("success")
    resumed = AppendingCSVLogger(str(tmp_path), name="", version="")  # Lightning's CSVLogger deletes here
    resumed.log_metrics({"train/loss": 0.25}, step=2)
    resumed.log_metrics({"val/psnr": 20.0}, step=2)  # a new column widens the header, rows kept
    resumed.finalize("success")
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["0", "1", "2", "2"]
    assert [r["train/loss"] for r in rows] == ["1.0", "0.5", "0.25", ""] and rows[3]["val/psnr"] == "20.0"


def test_refiner_stage_is_opt_in_and_skipped_with_a_record(tmp_path):
    """The default quickstart leaves the refiner off (its minutes go to the tokenizer); the stage then
    writes a skipped record instead of training, and a negative --refiner_steps is one clear error."""
    from commands.quickstart import Sizes, stage_refiner

    default = Sizes.named("default")
    assert default.refiner["steps"] == 0 and default.tokenizer_steps is None   # the stage configs' own steps
    assert Sizes.named("toy").refiner["steps"] > 0                            # the toy run still covers it
    record = stage_refiner(default, {"train": "unused", "val": "unused", "val128": "unused"}, "unused")(tmp_path)
    assert "skipped" in record and not any(tmp_path.iterdir())
    with pytest.raises(UsageError, match="--refiner_steps -1 must be >= 0"):
        from commands.quickstart import _run_unlocked

        _run_unlocked(str(tmp_path / "qs"), "toy", refiner_steps=-1)


def test_a_skipped_stage_is_decided_again_and_a_finished_one_reused(tmp_path):
    """A stage a setting turned off ("skipped" record) runs when a later run's settings turn it on
    (quickstart --unified_steps / --refiner_steps on a finished folder); a finished stage is reused
    and marked so."""
    calls = []

    def body(skip):
        def run(stage_dir):
            calls.append(skip)
            return {"skipped": "off"} if skip else {"value": 1}
        return run

    log = []
    assert "skipped" in run_stage("refiner", tmp_path, body(True), log)
    assert run_stage("refiner", tmp_path, body(False), log)["value"] == 1    # decided again: runs now
    again = run_stage("refiner", tmp_path, body(False), log)
    assert again["value"] == 1 and again["reused"] and calls == [True, False]


def test_budget_shares_the_time_left_among_the_training_stages(monkeypatch):
    """Each fit gets its weight's share of the clock's remainder, less a reserve for the other
    stages still to run, among itself and the fits after it; its own limit caps it; once the time
    is spent it still trains MIN_STAGE_SECONDS."""
    from commands import quickstart as qs

    now = [1000.0]
    monkeypatch.setattr(qs.time, "monotonic", lambda: now[0])
    log: list[dict] = []
    budget = qs.Budget(minutes=28.0, log=log)
    reference = sum(qs.OTHER_STAGE_MINUTES.values()) * 60
    assert budget.speed() == 1.0 and budget.reserve_seconds() == pytest.approx(reference + qs.MARGIN_MINUTES * 60)
    total = sum(qs.TRAINING_WEIGHTS.values())
    left = 28 * 60 - reference - qs.MARGIN_MINUTES * 60
    assert abs(budget.seconds_for("tokenizer_stage1") - left * qs.TRAINING_WEIGHTS["tokenizer_stage1"] / total) <= 1

    # the world ran at half the reference time: the other stages are expected to, too
    now[0] += 0.5 * qs.OTHER_STAGE_MINUTES["world"] * 60
    log.append({"stage": "world", "seconds": 0.5 * qs.OTHER_STAGE_MINUTES["world"] * 60})
    assert budget.speed() == pytest.approx(0.5)
    rest = reference - qs.OTHER_STAGE_MINUTES["world"] * 60
    assert budget.reserve_seconds() == pytest.approx(0.5 * rest + qs.MARGIN_MINUTES * 60)
    first = budget.seconds_for("tokenizer_stage1")
    assert abs(first - (28 * 60 - 0.5 * reference - qs.MARGIN_MINUTES * 60)
               * qs.TRAINING_WEIGHTS["tokenizer_stage1"] / total) <= 1
    log.append({"stage": "tokenizer_stage1", "seconds": first})
    now[0] += first                                    # the fit used its share: the next gets the same
    assert abs(budget.seconds_for("tokenizer_stage2") - first) <= 1
    log.append({"stage": "tokenizer_stage2", "seconds": 60})
    now[0] += 60                                       # its steps ran out early: its time goes to the later fits
    assert budget.seconds_for("tokenizer_stage3") > first
    assert budget.seconds_for("ar_fit", own_limit_seconds=120) == 120  # the stage's own guard binds
    log.append({"stage": "pretokenize", "seconds": 0.0, "reused": True})  # reused: done, not timed
    assert budget.speed() == pytest.approx(0.5)
    now[0] += 3600                                     # past the budget
    assert budget.seconds_for("rl") == qs.MIN_STAGE_SECONDS
    # no budget: only the stage's own limit
    assert qs.Budget(minutes=None).seconds_for("ar_fit", 600) == 600
    assert qs.Budget(minutes=None).seconds_for("tokenizer_stage1") is None
