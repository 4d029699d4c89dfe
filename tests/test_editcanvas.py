"""EditCanvas-style scoring: hand-built before/after pairs through the Shapes oracle judge (perfect
edit high, no-op low SC, over-edit below perfect), GEdit/OmniContext aggregation, the VLM judge's
prompt filling and score parsing, and the default set's determinism."""
import math

import numpy as np
import pytest

from shapes.render import render
from shapes.scene import Background, Scene, ShapeObject
from evaluation.backends import BackendError
from evaluation.editcanvas import (EditCanvasScorer, aggregate, load_results_folder, sample_images,
                                   shapes_editcanvas_set, write_sample_folder)
from evaluation.editcanvas_judges import VLMJudge, parse_scores

W = H = 64
RED = ShapeObject("circle", "red", 0.25, 0.25, 0.25)
BLUE = ShapeObject("square", "blue", 0.75, 0.3, 0.25)
GREEN = ShapeObject("triangle", "green", 0.5, 0.75, 0.25)
BG = Background("plain", "slate")


def edit_sample(source, target, task="recolor", instruction="Make the red circle yellow."):
    return {"id": f"{task}_x", "task": task, "kind": "editing", "group": "local", "width": W, "height": H,
            "instruction": instruction, "source": source.to_dict(), "target": target.to_dict()}


def image(scene):
    return render(scene, W, H).image


@pytest.fixture(scope="module")
def scorer():
    return EditCanvasScorer()


def test_recolor_perfect_noop_overedit(scorer):
    source = Scene((RED, BLUE, GREEN), BG)
    target = Scene((RED.__class__("circle", "yellow", 0.25, 0.25, 0.25), BLUE, GREEN), BG)
    over = Scene((target.objects[0], BLUE), BG)                             # also deletes the green triangle
    drift = Scene((target.objects[0], ShapeObject("square", "blue", 0.75, 0.6, 0.25), GREEN), BG)
    sample = edit_sample(source, target)
    rows = {name: scorer.score([sample], {sample["id"]: image(scene)})["samples"][0]
            for name, scene in [("perfect", target), ("noop", source), ("over", over), ("drift", drift)]}
    assert rows["perfect"]["sc"] == pytest.approx(10.0) and rows["perfect"]["overall"] > 9.0
    assert rows["noop"]["sc"] == pytest.approx(0.0) and rows["noop"]["overall"] == pytest.approx(0.0)
    # over-edit: the edit itself succeeds; preservation items = blue kept, green lost, background kept
    assert rows["over"]["parts"]["success"] == pytest.approx(10.0)
    assert rows["over"]["sc"] == pytest.approx(10 * 2 / 3)
    # a moved bystander: no credit at its old box and an extra object -> green + background of 4 items
    assert rows["drift"]["sc"] == pytest.approx(10 * 2 / 4)
    assert rows["perfect"]["overall"] > rows["over"]["overall"] > rows["noop"]["overall"]
    for r in rows.values():
        assert r["overall"] == pytest.approx(math.sqrt(r["sc"] * r["pq"]))


def test_background_edit_and_artifacts(scorer):
    source = Scene((RED, BLUE), BG)
    target = source.replace(background=Background("plain", "sand"))
    sample = edit_sample(source, target, task="background", instruction="Use a plain sand background.")
    good = scorer.score([sample], {sample["id"]: image(target)})["samples"][0]
    noop = scorer.score([sample], {sample["id"]: image(source)})["samples"][0]
    assert good["sc"] == pytest.approx(10.0) and noop["sc"] == pytest.approx(0.0)
    # artifacts: palette-coloured scribbles no detection explains lower PQ
    broken = image(target).copy()
    broken[40:42, 2:60] = (250, 140, 10)    # a 2 px orange line: thin, not an object
    broken[2:60, 30:31] = (35, 80, 220)
    bad = scorer.score([sample], {sample["id"]: broken})["samples"][0]
    assert bad["pq"] < good["pq"] - 1.0
    assert bad["parts"]["unexplained_fraction"] > 0.1


def test_aggregation_per_group_then_over_groups():
    rows = [
        {"id": "a", "task": "add", "group": "local", "kind": "editing", "sc": 10, "pq": 10, "overall": 10.0},
        {"id": "b", "task": "remove", "group": "local", "kind": "editing", "sc": 4, "pq": 9, "overall": 6.0},
        {"id": "c", "task": "recolor", "group": "local", "kind": "editing", "sc": 0, "pq": 10, "overall": 0.0},
        {"id": "d", "task": "background", "group": "global", "kind": "editing", "sc": 9, "pq": 4, "overall": 6.0},
        {"id": "e", "task": "subject", "group": "object", "kind": "subject", "pf": 10, "consistency": 10,
         "overall": 10.0},
    ]
    res = aggregate(rows)
    assert res["groups"]["local"]["overall"] == pytest.approx(16 / 3)
    assert res["groups"]["local"]["sc"] == pytest.approx(14 / 3)
    assert res["groups"]["object"]["pf"] == pytest.approx(10)
    assert res["editing_overall"] == pytest.approx((16 / 3 + 6) / 2)
    assert res["overall"] == pytest.approx((16 / 3 + 6 + 10) / 3)      # groups, not samples, weigh equally
    assert "text" in res["not_covered"]["editing"]


def test_default_set_is_seeded_and_scores_ground_truth_high(tmp_path, scorer):
    a = shapes_editcanvas_set(seed=3, per_task=1)
    assert a == shapes_editcanvas_set(seed=3, per_task=1) and a != shapes_editcanvas_set(seed=4, per_task=1)
    assert {s["task"] for s in a} == {"add", "remove", "recolor", "replace", "move", "background", "subject"}
    for s in a:                                        # the on-disk layout round-trips
        write_sample_folder(tmp_path, s, sample_images(s)["target"])
    samples, results = load_results_folder(tmp_path)
    res = scorer.score(samples, results)
    assert res["overall"] > 9.0 and res["groups"]["object"]["consistency"] == pytest.approx(10.0)
    noop = scorer.score(samples, {s["id"]: sample_images(s)["source"] for s in samples})
    assert noop["editing_overall"] < 1.0


class ScriptedVLM:
    replies = []

    def __init__(self, weights):
        self.prompts = []

    def judge(self, images, prompt):
        self.prompts.append((len(images), prompt))
        return ScriptedVLM.replies.pop(0)


def test_vlm_judge_prompts_and_parsing(tmp_path, monkeypatch):
    assert parse_scores('{"score" : [7, 9], "reasoning": "ok"}', 2) == [7.0, 9.0]
    assert parse_scores("output score = [8.5, 6]", 2) == [8.5, 6.0]
    assert parse_scores("no numbers here", 2) is None
    with pytest.raises(BackendError, match="/missing/vlm"):
        VLMJudge("test_editcanvas.ScriptedVLM", {"weights": "/missing/vlm"})
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    judge = VLMJudge("test_editcanvas.ScriptedVLM", {"weights": str(tmp_path)})
    ScriptedVLM.replies[:] = ['{"score": [8, 6], "reasoning": "r"}', "garbage", "score = [9, 7]"]
    source = np.zeros((8, 8, 3), np.uint8)
    out = judge.score_edit(source, source, {"instruction": "Make the red circle yellow."})
    assert out["sc"] == 6 and out["pq"] == 7 and out["parts"]["unparsed"] == 0   # PQ parsed on retry
    (n_images, sc_prompt), (n_pq, pq_prompt) = judge.model.prompts[0], judge.model.prompts[1]
    assert n_images == 2 and n_pq == 1
    assert "Editing instruction: Make the red circle yellow." in sc_prompt and "<instruction>" not in sc_prompt
    assert "naturalness" in pq_prompt
