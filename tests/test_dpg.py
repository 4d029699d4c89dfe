"""DPG-Bench scorer: the dependency rule and aggregation on hand-built answers, the official CSV
layout and grid split, the Shapes oracle VQA on rendered scenes, and the backend adapter errors."""
import numpy as np
import pytest

from evaluation.backends import BackendError
from evaluation.dpg import (DPGScorer, LocalVQA, apply_dependencies, load_dpg_csv, prompts_from_items,
                            prompts_from_records, score_answers, split_grid)

# A hand-built graph: 1 entity; 2 attribute of 1; 3 attribute of 2 (chain); 4 relation on 1 and 2; 5 global.
ROWS = [
    (1, "0", "entity", "whole", "entity - whole (circle)", "Is there a circle?"),
    (2, "1", "attribute", "color", "attribute - color (circle, red)", "Is there a red circle?"),
    (3, "2", "attribute", "size", "attribute - size (red circle, large)", "Is the red circle large?"),
    (4, "1,2", "relation", "spatial", "relation - spatial (red circle, blue star, left of)",
     "Is the red circle left of the blue star?"),
    (5, "0", "global", "", "global - (plain background)", "Is the background plain?"),
]


def records(item_id="p0"):
    return [dict(item_id=item_id, text="a prompt", keywords="", proposition_id=i, dependency=d, category_broad=b,
                 category_detailed=c, tuple=t, question_natural_language=q) for i, d, b, c, t, q in ROWS]


# Answers per image (cell value 0..3 of a 2x2 grid): see the expected scores in the test.
SCRIPT = {
    0: {},                                               # all "yes"                       -> 5/5
    1: {1: "no"},                                        # root fails: 2, 3, 4 zeroed        -> 1/5
    2: {2: "No."},                                       # 2 fails: 3 (chain) and 4 zeroed   -> 2/5
    3: {1: "Yes.", 5: "maybe"},                          # normalised "Yes." is yes; 5 fails -> 4/5
}


class ScriptedVQA:
    def __init__(self, prompts):
        self.by_question = {q.question: q.proposition_id for p in prompts.values() for q in p.questions}
        self.calls = 0

    def answer(self, image, question):
        self.calls += 1
        return SCRIPT[int(image[0, 0, 0])].get(self.by_question[question], "yes")


def grid_image(cell=4):
    cells = [np.full((cell, cell, 3), k, np.uint8) for k in range(4)]
    return np.concatenate([np.concatenate(cells[:2], 1), np.concatenate(cells[2:], 1)], 0)


def test_split_grid_official_order():
    assert [int(c[0, 0, 0]) for c in split_grid(grid_image())] == [0, 1, 2, 3]   # TL, TR, BL, BR


def test_dependency_rule_chains_and_counts_every_parent():
    prompt = prompts_from_records(records())["p0"]
    raw = {1: 1.0, 2: 0.0, 3: 1.0, 4: 1.0, 5: 1.0}
    assert apply_dependencies(prompt.questions, raw) == {1: 1.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 1.0}
    raw = {1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0, 5: 0.0}
    assert apply_dependencies(prompt.questions, raw) == {1: 0.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 0.0}
    strict = score_answers(prompt, {1: "Yes", 2: "yes", 3: "yes", 4: "yes", 5: "yes"}, strict=True)
    assert strict["score"] == pytest.approx(1 / 5)   # official exact match: "Yes" != "yes" kills 2-4


def test_scores_and_aggregation_on_hand_built_answers():
    prompts = prompts_from_records(records("p0") + records("p1"))
    vqa = ScriptedVQA(prompts)
    scorer = DPGScorer(vqa)
    res = scorer.score({"p0": grid_image(), "p1": [grid_image()[:4, :4]] * 2}, prompts)
    p0, p1 = res["prompts"]
    assert [i["score"] for i in p0["images"]] == pytest.approx([1.0, 0.2, 0.4, 0.8])
    assert p0["score"] == pytest.approx(0.6) and p1["score"] == pytest.approx(1.0)
    assert res["dpg"] == pytest.approx(80.0)
    assert vqa.calls == 5 * 4 + 5 * 2
    # official categories: raw answers of each prompt's *last* image (p0: image 3, p1: image 0)
    assert res["categories_detailed"]["global"] == pytest.approx(50.0)       # p0 "maybe", p1 yes
    assert res["categories_broad"]["entity"] == pytest.approx(100.0)
    assert res["categories_broad"]["attribute"] == pytest.approx(100.0)
    # all_images: every image after the dependency rule; attribute = questions 2, 3 over 6 images
    res_all = DPGScorer(ScriptedVQA(prompts), category_mode="all_images").score(
        {"p0": grid_image(), "p1": [grid_image()[:4, :4]] * 2}, prompts)
    # p0 attribute scores per image: (1,1), (0,0), (0,0), (1,1); p1: (1,1) x 2 -> 8/12
    assert res_all["categories_broad"]["attribute"] == pytest.approx(100 * 8 / 12)
    assert res_all["dpg"] == pytest.approx(80.0)


def test_pic_num_limits_crops():
    prompts = prompts_from_records(records())
    res = DPGScorer(ScriptedVQA(prompts), pic_num=2).score({"p0": grid_image()}, prompts)
    assert res["dpg"] == pytest.approx(100 * (1.0 + 0.2) / 2)


def test_unknown_parent_and_csv_columns(tmp_path):
    bad = records()
    bad[1]["dependency"] = "9"
    with pytest.raises(ValueError, match="unknown proposition"):
        prompts_from_records(bad)
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_dpg_csv(tmp_path / "x.csv")


def test_shapes_oracle_vqa_on_world_graphs(tmp_path):
    from shapes.dpg import dpg_items, write_dpg_csv
    from shapes.render import render
    from shapes.scene import Scene
    from evaluation.shapes_vqa import ShapesOracleVQA

    items = dpg_items(3, seed=0, width=64, height=64)
    write_dpg_csv(items, tmp_path / "shapes_dpg.csv")
    prompts = load_dpg_csv(tmp_path / "shapes_dpg.csv")          # official CSV layout round trip
    assert prompts.keys() == prompts_from_items(items).keys()
    truth = {it["item_id"]: [render(Scene.from_dict(it["scene"]), 64, 64).image] for it in items}
    blank = {it["item_id"]: [render(Scene.from_dict(it["scene"]).replace(objects=()), 64, 64).image]
             for it in items}
    scorer = DPGScorer(ShapesOracleVQA())
    assert scorer.score(truth, prompts)["dpg"] == pytest.approx(100.0)
    empty = scorer.score(blank, prompts)
    # Only the background question can hold on an empty canvas; everything else hangs off entities.
    for result, prompt in zip(empty["prompts"], prompts.values()):
        assert result["score"] == pytest.approx(1 / len(prompt.questions))
    vqa = ShapesOracleVQA()
    image = truth[items[0]["item_id"]][0]
    with pytest.raises(ValueError, match="cannot parse"):
        vqa.answer(image, "Is the image a photograph?")
    assert ShapesOracleVQA(on_unknown="no").answer(image, "Is the image a photograph?") == "no"


def test_local_vqa_adapter_errors(tmp_path, monkeypatch):
    (tmp_path / "my_vqa.py").write_text(
        "class Echo:\n    def __init__(self, weights):\n        self.weights = weights\n"
        "    def answer(self, image, question):\n        return 'yes'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(BackendError, match="no attribute 'Missing'"):
        LocalVQA("my_vqa.Missing")
    with pytest.raises(BackendError, match="not importable"):
        LocalVQA("nowhere_pkg.Model")
    with pytest.raises(BackendError, match="/no/such/weights"):
        LocalVQA("my_vqa.Echo", {"weights": "/no/such/weights"})
    assert LocalVQA("my_vqa.Echo", {"weights": str(tmp_path)}).answer(np.zeros((4, 4, 3)), "q?") == "yes"
