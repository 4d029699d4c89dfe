"""GenEval scorer: the official rules pinned on hand-built detections, the official metadata file,
layout round trip, colour backends, RL partial credit, and sanity on rendered Shapes scenes."""
import json
from pathlib import Path

import numpy as np
import pytest

from shapes.geometry import geneval_relations
from shapes.prompts import geneval_prompts, scene_for_prompt
from shapes.render import render
from evaluation.clip_color import ClipColorClassifier, GENEVAL_COLORS, masked_crop
from evaluation.detectors import load_color_classifier, load_detector
from evaluation.geneval import (GenEvalResults, cluttered, evaluate_image, filter_detections, geneval_reward, load_metadata,
                                relative_position, render_ground_truth_layout, score_geneval, summarize,
                                write_geneval_layout)
from shapes.oracle import OracleDetector

OFFICIAL_METADATA = Path("/work/shared/data/geneval/evaluation_metadata.jsonl")
IMAGE = np.zeros((100, 100, 3), np.uint8)


class Fixed:
    """A detector that returns the same detections for any image."""

    def __init__(self, detections):
        self.detections = detections

    def detect(self, image):
        return self.detections


def det(cls, score=0.95, box=(10, 10, 20, 20), color="red"):
    return {"class": cls, "score": score, "bbox": list(box), "mask": None, "color": color}


def judge(metadata, detections):
    return evaluate_image(IMAGE, metadata, Fixed(detections))


# ----------------------------------------------------------------------------- thresholds
def test_threshold_is_strict_and_counting_uses_0_9():
    dets = [det("dog", 0.3), det("dog", 0.31), det("dog", 0.9), det("dog", 0.91)]
    assert [d["score"] for d in filter_detections(dets, "two_object")["dog"]] == [0.91, 0.9, 0.31]
    assert [d["score"] for d in filter_detections(dets, "counting")["dog"]] == [0.91]
    meta = {"tag": "counting", "include": [{"class": "dog", "count": 2}], "exclude": [{"class": "dog", "count": 3}]}
    assert judge(meta, dets)[0] is False                 # only one dog above 0.9
    assert judge(meta, dets + [det("dog", 0.95)])[0] is True


def test_at_most_16_per_class_best_first_and_no_nms():
    dets = [det("cup", 0.4 + 0.01 * k, box=(10, 10, 20, 20)) for k in range(20)]   # all on one box
    kept = filter_detections(dets, "single_object")["cup"]
    assert len(kept) == 16 and kept[0]["score"] == pytest.approx(0.59)
    meta = {"tag": "counting", "include": [{"class": "cup", "count": 2}], "exclude": [{"class": "cup", "count": 17}]}
    assert judge(meta, [det("cup", 0.95, (0, 0, 10, 10))] * 20)[0] is True   # 20 found, 16 kept < 17


# ----------------------------------------------------------------------------- include / exclude
def test_include_needs_count_and_exclude_fails_at_count():
    meta = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}]}
    two, three, four = ([det("cat")] * n for n in (2, 3, 4))
    ok, reason, details = judge(meta, two)
    assert not ok and reason == "expected cat>=3, found 2"
    assert judge(meta, three)[0] is True
    ok, reason, _ = judge(meta, four)
    assert not ok and reason == "expected cat<4, found 4"
    assert json.loads(json.dumps(judge(meta, three)[2])) == {"cat": [[10.0, 10.0, 20.0, 20.0, 0.95]] * 3}


def test_extra_objects_are_fine_outside_counting():
    meta = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]}
    assert judge(meta, [det("cat"), det("cat"), det("dog"), det("car")])[0] is True
    assert judge(meta, [det("cat"), det("car")])[1] == "expected dog>=1, found 0"


# ----------------------------------------------------------------------------- colour
def test_colour_is_judged_on_the_top_count_objects_only():
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}]}
    assert judge(meta, [det("car", 0.8, color="red")])[0] is True
    # The red car scores lower than a blue one: top-1 is blue, so the image fails.
    ok, reason, _ = judge(meta, [det("car", 0.8, color="blue"), det("car", 0.5, color="red")])
    assert not ok and reason == "expected red car>=1, found 0 red; and 1 blue"


def test_colour_needs_count_objects_in_colour():
    meta = {"tag": "color_attr", "include": [{"class": "car", "count": 2, "color": "green"}]}
    assert judge(meta, [det("car", color="green"), det("car", color="green")])[0] is True
    assert judge(meta, [det("car", 0.9, color="green"), det("car", 0.8, color="pink")])[0] is False


# ----------------------------------------------------------------------------- tie order (official)
def test_tied_scores_the_later_listed_detection_wins_as_in_the_official_code():
    """GenEval orders a class's detections by np.argsort(scores)[::-1]: of two tied detections the
    later-listed comes first, so the red car below is the top-1 car and the image is correct."""
    meta = {"tag": "colors", "include": [{"class": "car", "count": 1, "color": "red"}],
            "prompt": "a photo of a red car"}
    assert judge(meta, [det("car", 0.8, color="blue"), det("car", 0.8, color="red")])[0] is True
    ok, reason, _ = judge(meta, [det("car", 0.8, color="red"), det("car", 0.8, color="blue")])
    assert not ok and reason == "expected red car>=1, found 0 red; and 1 blue"
    kept = filter_detections([det("star", 1.0, color=c) for c in ("red", "green", "blue")], "position")["star"]
    assert [d["color"] for d in kept] == ["blue", "green", "red"]


def _numpy1_argsort(values):
    """numpy 1.x `np.argsort(values)` (default kind, npysort/quicksort.cpp aquicksort_) for
    len(values) <= 17: no partitioning step runs (`while (pr - pl) > SMALL_QUICKSORT`, 16), only its
    insertion sort, transcribed here. (GenEval's environment predates numpy's SIMD argsort, whose
    tie order differs.)"""
    assert len(values) <= 17
    order = list(range(len(values)))
    for i in range(1, len(order)):
        vi, j = order[i], i
        while j > 0 and values[vi] < values[order[j - 1]]:
            order[j] = order[j - 1]
            j -= 1
        order[j] = vi
    return np.array(order, dtype=np.int64)


def _official_filter(detections, tag, classnames):
    """GenEval evaluate_images.py evaluate_image's detection loop, transcribed: mmdet's per-class
    N x 5 float32 arrays in the detector's order, ordering, threshold, MAX_OBJECTS, NMS off."""
    from evaluation.geneval import COUNTING_THRESHOLD, MAX_OBJECTS, THRESHOLD

    nms_threshold = 1.0
    confidence_threshold = THRESHOLD if tag != "counting" else COUNTING_THRESHOLD
    detected = {}
    for classname in classnames:
        rows = [d for d in detections if d["class"] == classname]
        bbox = np.array([[*d["bbox"], d["score"]] for d in rows], dtype=np.float32).reshape(-1, 5)
        ordering = _numpy1_argsort(bbox[:, 4])[::-1]
        ordering = ordering[bbox[ordering, 4] > confidence_threshold]
        ordering = ordering[:MAX_OBJECTS].tolist()
        detected[classname] = []
        while ordering:
            max_obj = ordering.pop(0)
            detected[classname].append(rows[max_obj])
            ordering = [obj for obj in ordering if nms_threshold == 1]
        if not detected[classname]:
            del detected[classname]
    return detected


def test_ordering_matches_a_transcription_of_the_official_code_on_random_cases():
    """400 random cases, scores from a few values (ties everywhere, none near a threshold), up to 17
    raw detections per class: the kept detections (and their order) and the verdict agree."""
    from evaluation.geneval import TASKS

    rng = np.random.default_rng(0)
    classes, colors = ["car", "dog", "cup"], ["red", "blue", "green"]
    scores = [0.2, 0.5, 0.8, 0.95, 1.0]
    disagreements = 0
    for case in range(400):
        dets = []
        for name in classes:
            for _ in range(int(rng.integers(0, 18))):
                x, y = (int(v) for v in rng.integers(0, 90, size=2))
                dets.append(det(name, scores[int(rng.integers(len(scores)))], (x, y, x + 10, y + 10),
                                colors[int(rng.integers(len(colors)))]))
        order = rng.permutation(len(dets))
        dets = [dets[i] for i in order]
        tag = TASKS[case % len(TASKS)]
        ours, official = filter_detections(dets, tag), _official_filter(dets, tag, classes)
        assert {k: [id(d) for d in v] for k, v in ours.items()} == {k: [id(d) for d in v] for k, v in official.items()}
        a, b = rng.choice(classes, size=2, replace=False)
        relation = str(rng.choice(["left of", "above"]))
        meta = {"tag": tag, "include": [
            {"class": str(a), "count": int(rng.integers(1, 3)), "color": str(rng.choice(colors))},
            {"class": str(b), "count": 1, "position": [relation, 0]}]}
        from evaluation.detectors import DetectionColor
        from evaluation.geneval_rules import check_clauses

        disagreements += check_clauses(IMAGE, ours, meta, DetectionColor())[0] != \
            check_clauses(IMAGE, official, meta, DetectionColor())[0]
    assert disagreements == 0


# ----------------------------------------------------------------------------- position
def test_relative_position_margin_and_no_relation_cases():
    a, b = (0, 0, 10, 10), (30, 0, 40, 10)
    assert relative_position(a, b) == {"left of"} and relative_position(b, a) == {"right of"}
    assert relative_position((0, 30, 10, 40), (0, 0, 10, 10)) == {"below"}
    # Offset 2 px < 0.1 * (10 + 10): shrunk to 0 on both axes -> no relation at all (< 1e-3 rule).
    assert relative_position((2, 0, 12, 10), (0, 0, 10, 10)) == set()
    assert relative_position(a, a) == set()          # identical boxes: zero offset, no division
    # Offset 2.5 px: revised 0.5, |unit| = 0.5/2.5 = 0.2 < 0.5 -> still no relation
    assert relative_position((2.5, 0, 12.5, 10), (0, 0, 10, 10)) == set()
    # Diagonal: offset (30, 30), revised (28, 28)/42.4 = 0.66 on both axes -> two relations.
    assert relative_position((30, 30, 40, 40), (0, 0, 10, 10)) == {"right of", "below"}
    # Mostly horizontal with a small vertical part: only the horizontal relation.
    assert relative_position((30, 8, 40, 18), (0, 0, 10, 10)) == {"right of"}


def test_relative_position_matches_the_world_reference():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        xy = rng.uniform(0, 100, size=(2, 2))
        wh = rng.uniform(1, 40, size=(2, 2))
        a, b = [np.r_[xy[i], xy[i] + wh[i]].tolist() for i in range(2)]
        assert relative_position(a, b) == geneval_relations(a, b)


def test_position_rule_every_pair_and_missing_target():
    meta = {"tag": "position", "include": [{"class": "tree", "count": 1},
                                           {"class": "bird", "count": 1, "position": ["above", 0]}]}
    tree, bird_above, bird_below = det("tree", box=(40, 60, 60, 80)), det("bird", box=(40, 0, 60, 20)), \
        det("bird", box=(40, 85, 60, 99))
    assert judge(meta, [tree, bird_above])[0] is True
    ok, reason, _ = judge(meta, [tree, bird_below])
    assert not ok and reason == "expected bird above target, found below target"
    ok, reason, _ = judge(meta, [bird_above])
    assert not ok and reason.splitlines() == ["expected tree>=1, found 0", "no target for bird to be above"]
    # Only the top-1 bird is judged: a lower-scored bird in the wrong place does not matter.
    assert judge(meta, [tree, bird_above, {**bird_below, "score": 0.5}])[0] is True


# ----------------------------------------------------------------------------- aggregation
def test_summary_is_unweighted_mean_over_tasks():
    records = [{"tag": "single_object", "correct": c, "metadata": "a"} for c in (True, True, True, False)] + \
              [{"tag": "counting", "correct": c, "metadata": m} for c, m in ((True, "b"), (False, "c"))]
    results = summarize(records)
    assert results.task_scores == {"single_object": 0.75, "counting": 0.5}
    assert results.overall == pytest.approx(0.625)           # not the image mean 4/6
    assert results.image_accuracy == pytest.approx(4 / 6)
    assert results.prompt_accuracy == pytest.approx(2 / 3)   # prompts a, b correct (any image), c not
    assert "Overall score (avg. over tasks): 0.62500" in results.summary_text()


def test_clutter_is_an_object_the_prompt_did_not_ask_for():
    """Clutter rate (issue 13's drift measure): an image is cluttered when its kept detections hold
    a class no include clause names or more of a class than the clauses' counts add up to."""
    one = {"tag": "single_object", "include": [{"class": "cube", "count": 1}]}
    two_cubes = {"tag": "color_attr", "include": [{"class": "cube", "count": 1, "color": "red"},
                                                  {"class": "cube", "count": 1, "color": "blue"}]}
    three = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}]}
    kept = lambda meta, dets: json.loads(json.dumps(judge(meta, dets)[2]))  # noqa: E731  the results row's details
    assert not cluttered(kept(one, [det("cube")]), one)
    assert not cluttered(kept(one, []), one)                                  # missing is not clutter
    assert cluttered(kept(one, [det("cube"), det("cube", box=(50, 50, 60, 60))]), one)
    assert cluttered(kept(one, [det("cube"), det("sphere")]), one)             # a class not named
    assert not cluttered(kept(one, [det("cube"), det("sphere", 0.3)]), one)    # below GenEval's threshold
    assert not cluttered(kept(two_cubes, [det("cube"), det("cube", color="blue")]), two_cubes)
    assert cluttered(kept(two_cubes, [det("cube")] * 3), two_cubes)
    assert not cluttered(kept(three, [det("cat")] * 3 + [det("cat", 0.8)]), three)  # counting keeps > 0.9 only
    assert cluttered(kept(three, [det("cat")] * 4), three)
    # the summary's rate over the records that carry details; None without any
    rows = [(one, [det("cube")]), (one, [det("cube"), det("sphere")]), (three, [det("cat")] * 4),
            (two_cubes, [det("cube")] * 2)]
    records = [{"tag": m["tag"], "correct": False, "metadata": json.dumps(m), "details": json.dumps(judge(m, d)[2])}
               for m, d in rows]
    assert summarize(records).summary()["clutter_rate"] == pytest.approx(0.5)
    assert summarize([{k: v for k, v in r.items() if k != "details"} for r in records]).clutter_rate is None


# ----------------------------------------------------------------------------- official file
def _perfect_detections(meta):
    """Detections that satisfy a metadata line: objects on a grid, position clauses placed far."""
    dets, centres = [], []
    for k, clause in enumerate(meta["include"]):
        for j in range(clause["count"]):
            cx, cy = 200 + 60 * k + 15 * j, 200
            if "position" in clause:
                rel, ref = clause["position"]
                rx, ry = centres[ref]
                cx, cy = {"left of": (rx - 150, ry), "right of": (rx + 150, ry),
                          "above": (rx, ry - 150), "below": (rx, ry + 150)}[rel]
            dets.append(det(clause["class"], 0.99, (cx - 5, cy - 5, cx + 5, cy + 5), clause.get("color")))
        centres.append((200 + 60 * k, 200))
    return dets


@pytest.mark.skipif(not OFFICIAL_METADATA.exists(), reason="official metadata not present")
def test_official_metadata_parses_and_scores_unchanged():
    lines = load_metadata(OFFICIAL_METADATA)
    assert len(lines) == 553
    tags = [line["tag"] for line in lines]
    assert {t: tags.count(t) for t in set(tags)} == {"single_object": 80, "two_object": 99, "counting": 80,
                                                     "colors": 94, "position": 100, "color_attr": 100}
    for meta in lines:
        assert judge(meta, [])[0] is False
        ok, reason, _ = judge(meta, _perfect_detections(meta))
        assert ok, (meta, reason)


# ----------------------------------------------------------------------------- layout + backends
def test_layout_round_trip_writes_official_results(tmp_path):
    metas = [{"tag": "single_object", "include": [{"class": "square", "count": 1}], "prompt": "a photo of a square"},
             {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}]
    image = np.full((32, 32, 3), 150, np.uint8)
    image[8:24, 8:24] = (35, 80, 220)
    write_geneval_layout(tmp_path, metas, [[image, image], [image]])
    assert json.loads((tmp_path / "00001" / "metadata.jsonl").read_text()) == metas[1]
    assert sorted(p.name for p in (tmp_path / "00000" / "samples").iterdir()) == ["0000.png", "0001.png"]
    results = score_geneval(tmp_path, verbose=False)
    assert isinstance(results, GenEvalResults) and [r["correct"] for r in results.records] == [True, True, False]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert list(rows[0]) == ["filename", "tag", "prompt", "correct", "reason", "metadata", "details"]
    assert json.loads(rows[0]["metadata"]) == metas[0] and "square" in json.loads(rows[0]["details"])
    assert json.loads((tmp_path / "summary.json").read_text())["overall"] == pytest.approx(2 / 3)


def test_backend_loading_and_clear_errors(tmp_path):
    assert isinstance(load_detector(None), OracleDetector)
    assert isinstance(load_detector({"class_path": "shapes.oracle.OracleDetector"}), OracleDetector)
    with pytest.raises(ValueError, match="unknown detector 'yolo'"):
        load_detector("yolo")
    with pytest.raises(ValueError, match=r"'mask2former' is not built in: .*pip install mmdet.*local path"):
        load_detector("mask2former")
    with pytest.raises(ValueError, match="/models/x.pth"):   # class paths: shared loader checks local paths
        load_detector({"class_path": "shapes.oracle.OracleDetector",
                       "init_args": {"checkpoint_path": "/models/x.pth"}})
    with pytest.raises(FileNotFoundError, match="/no/clip/ViT-L-14.pt"):
        load_color_classifier({"class_path": "clip", "init_args": {"weights_path": "/no/clip/ViT-L-14.pt"}})


def test_masked_crop_pastes_object_on_grey():
    image = np.zeros((20, 20, 3), np.uint8)
    image[:, :] = (200, 0, 0)
    mask = np.zeros((20, 20), bool)
    mask[5:10, 5:10] = True
    crop = np.asarray(masked_crop(image, [4, 4, 12, 12], mask))
    assert crop.shape == (8, 8, 3)
    assert tuple(crop[2, 2]) == (200, 0, 0) and tuple(crop[0, 0]) == (0x99, 0x99, 0x99)


def test_clip_colour_zero_shot_pipeline_with_a_stub_model():
    """Template averaging and argmax over GenEval's colours, with one-hot 'embeddings'."""
    import torch
    palette = torch.tensor([[220, 30, 35], [250, 140, 10], [245, 220, 25], [40, 165, 60], [35, 80, 220],
                            [135, 50, 180], [250, 135, 200], [125, 75, 35], [20, 20, 20], [250, 250, 250]]).float()

    class Stub:
        def encode_text(self, tokens):
            return torch.nn.functional.one_hot(tokens, 10).float()

        def encode_image(self, batch):
            return torch.nn.functional.one_hot(torch.cdist(batch, palette).argmin(1), 10).float()

    tokenizer = lambda texts: torch.tensor([next(i for i, c in enumerate(GENEVAL_COLORS) if f" {c}" in t)
                                            for t in texts])
    preprocess = lambda crop: torch.tensor(np.asarray(crop).reshape(-1, 3)).float().median(0).values
    clf = ClipColorClassifier.from_model(Stub(), preprocess, tokenizer)
    image = np.full((30, 30, 3), 150, np.uint8)
    image[2:12, 2:12], image[15:28, 15:28] = (40, 165, 60), (250, 135, 200)
    dets = [det("square", box=(2, 2, 12, 12)), det("square", box=(15, 15, 28, 28))]
    assert clf.classify(image, dets, "square") == ["green", "pink"]


def test_partial_credit_reward():
    meta = {"tag": "counting", "include": [{"class": "star", "count": 2}], "exclude": [{"class": "star", "count": 3}]}
    three = geneval_reward(IMAGE, meta, Fixed([det("star")] * 3))
    assert not three["correct"] and three["terms"] == [0.5] and three["reward"] == 0.5
    assert geneval_reward(IMAGE, meta, Fixed([det("star")] * 2))["reward"] == 1.0
    meta = {"tag": "position", "include": [{"class": "tree", "count": 1},
                                           {"class": "bird", "count": 1, "color": "red", "position": ["above", 0]}]}
    wrong = geneval_reward(IMAGE, meta, Fixed([det("tree", box=(40, 60, 60, 80)),
                                               det("bird", box=(40, 85, 60, 99), color="red")]))
    assert wrong["terms"] == [1.0, 1.0, 1.0, 0.0] and wrong["reward"] == 0.75


# ----------------------------------------------------------------------------- sanity on the Shapes world
def _sanity(tmp_path, n_prompts, size, shuffled, seed=0):
    metas = geneval_prompts(seed=0)
    rng = np.random.default_rng(seed)
    chosen = [metas[i] for i in rng.permutation(len(metas))[:n_prompts]]
    drawn = [metas[i] for i in rng.permutation(len(metas))[:len(chosen)]] if shuffled else chosen
    images = [[render(scene_for_prompt(m, rng, size, size), size, size).image for _ in range(1 + k % 4)]
              for k, m in enumerate(drawn)]
    write_geneval_layout(tmp_path, chosen, images)
    return score_geneval(tmp_path, verbose=True)


def test_ground_truth_layout_helper_scores_one(tmp_path):
    layout = render_ground_truth_layout(tmp_path / "gt", images_per_prompt=2, limit=6, size=64)
    results = score_geneval(layout, verbose=False)
    assert len(results.records) == 12 and results["overall"] == results.overall == 1.0
    assert results["per_task"] == results.task_scores


def test_geneval_sanity_on_rendered_prompts_fast(tmp_path):
    assert _sanity(tmp_path / "right", 40, 64, shuffled=False).overall >= 0.97
    assert _sanity(tmp_path / "wrong", 40, 64, shuffled=True).overall <= 0.3


@pytest.mark.slow
@pytest.mark.parametrize("size", [64, 128])
def test_geneval_sanity_all_553_prompts(tmp_path, size):
    assert _sanity(tmp_path / "right", 553, size, shuffled=False).overall >= 0.97
    assert _sanity(tmp_path / "wrong", 553, size, shuffled=True).overall <= 0.3
