"""Shapes world: scenes, renderer, captions, GenEval prompts, DPG graphs, edits, videos, `world`."""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import tarfile

import numpy as np
import pytest

from shapes.captions import captions
from shapes.dpg import DPG_COLUMNS, dpg_items, read_dpg_csv, validate_graph, write_dpg_csv
from shapes.edits import EDIT_KINDS, make_edit, sample_edit, sample_subject_pair
from shapes.geometry import geneval_relations, signed_distance
from shapes.palette import BACKGROUND_KINDS, COLOR_NAMES, COLORS, SHAPES
from shapes.prompts import (DEFAULT_PROMPTS_PATH, TAG_COUNTS, dumps_prompts,
                                        geneval_prompts, load_prompts, scene_for_prompt)
from shapes.render import render, render_background
from shapes.scene import MIN_OBJECT_PX, Background, Scene, ShapeObject, gap_px, sample_scene
from shapes.video import make_video

CANVASES = [(64, 64), (128, 32), (32, 128), (96, 48), (48, 96)]   # 1:1, 4:1, 1:4, 2:1, 1:2


def rendered_detections(scene: Scene, rendered) -> list[dict]:
    """Perfect detections read off the *rendered* instance map (pixel boxes, xyxy)."""
    out = []
    for k, obj in enumerate(scene.objects):
        ys, xs = np.nonzero(rendered.instance_map == k + 1)
        out.append({"class": obj.shape, "color": obj.color, "score": 1.0,
                    "bbox": [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]})
    return out


def geneval_correct(meta: dict, detections: list[dict]) -> bool:
    """The GenEval scorer's own rule applied to perfect detections."""
    from evaluation.detectors import DetectionColor
    from evaluation.geneval_rules import check_clauses

    by_class: dict[str, list[dict]] = {}
    for det in detections:
        by_class.setdefault(det["class"], []).append(det)
    return check_clauses(None, by_class, meta, DetectionColor())[0]


# ----------------------------------------------------------------------------- scenes + renderer
def test_scenes_are_deterministic_per_seed():
    a = sample_scene(np.random.default_rng(7), 64, 64)
    b = sample_scene(np.random.default_rng(7), 64, 64)
    c = sample_scene(np.random.default_rng(8), 64, 64)
    assert a == b and a != c
    assert np.array_equal(render(a, 64, 64).image, render(b, 64, 64).image)
    assert Scene.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    rng1, rng2 = np.random.default_rng(3), np.random.default_rng(3)
    assert captions(a, rng1, 64, 64) == captions(a, rng2, 64, 64)


@pytest.mark.parametrize("width,height", CANVASES)
def test_layout_keeps_min_size_gap_and_counts(width, height):
    for seed in range(30):
        scene = sample_scene(np.random.default_rng(seed), width, height, max_count=6)
        assert 1 <= len(scene.objects) <= 8
        per_class = collections.Counter(o.shape for o in scene.objects)
        assert max(per_class.values()) <= 6
        boxes = [o.layout_box_px(width, height) for o in scene.objects]
        for o, (x0, y0, x1, y1) in zip(scene.objects, boxes):
            assert x1 - x0 >= MIN_OBJECT_PX - 1e-3
            assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
        gap = gap_px(width, height)
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                separation = max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])
                assert separation >= gap - 1e-3


def test_min_object_px_knob_raises_the_floor_and_keeps_the_default():
    for seed in range(20):
        default = sample_scene(np.random.default_rng(seed), 64, 64)
        assert sample_scene(np.random.default_rng(seed), 64, 64, min_object_px=MIN_OBJECT_PX) == default
        big = sample_scene(np.random.default_rng(seed), 64, 64, min_object_px=16)
        assert big.objects and all(o.side_px(64, 64) >= 16 - 1e-3 for o in big.objects)
        boxes = [o.layout_box_px(64, 64) for o in big.objects]
        assert all(x0 >= 0 and y0 >= 0 and x1 <= 64 and y1 <= 64 for x0, y0, x1, y1 in boxes)
    with pytest.raises(ValueError, match="min_object_px"):
        sample_scene(np.random.default_rng(0), 64, 64, min_object_px=40)


@pytest.mark.parametrize("width,height", CANVASES)
def test_label_maps_agree_with_image(width, height):
    for seed in range(10):
        scene = sample_scene(np.random.default_rng(seed), width, height)
        out = render(scene, width, height)
        assert out.image.shape == (height, width, 3) and out.class_map.shape == (height, width)
        background = render_background(scene.background, width, height)
        for k, obj in enumerate(scene.objects):
            mask = out.instance_map == k + 1
            assert mask.sum() >= 0.3 * MIN_OBJECT_PX ** 2   # every object visible (star is the thinnest)
            assert np.all(out.class_map[mask] == SHAPES.index(obj.shape) + 1)
            assert np.all(out.color_map[mask] == COLOR_NAMES.index(obj.color) + 1)
            color = np.array(COLORS[obj.color], float)
            # Labelled pixels have coverage >= 0.5: at most half-way between object and background.
            error = np.abs(out.image[mask].astype(float) - color)
            assert np.all(error <= 0.5 * np.abs(background[mask] - color) + 1.0)
            # The label is exactly "pixel centre inside the outline"; pixels at least half a pixel
            # inside are fully covered and carry the exact palette colour.
            xs, ys = (np.arange(width) + 0.5)[None, :], (np.arange(height) + 0.5)[:, None]
            distance = signed_distance(obj.shape, xs, ys, *obj.center_px(width, height), obj.side_px(width, height))
            assert np.array_equal(mask, distance <= 0)
            inner = distance <= -0.5
            assert inner.sum() >= 0.15 * MIN_OBJECT_PX ** 2 and np.all(out.image[inner] == COLORS[obj.color])
        unlabelled = out.instance_map == 0
        assert np.all((out.class_map == 0) == unlabelled) and np.all((out.color_map == 0) == unlabelled)


def test_render_any_aspect_and_resolution_independent_layout():
    scene = sample_scene(np.random.default_rng(0), 128, 32)
    small, large = render(scene, 128, 32), render(scene, 512, 128)
    # The same scene at 4x resolution has the same objects in the same places (4x pixel counts).
    for k in range(len(scene.objects)):
        ratio = (large.instance_map == k + 1).sum() / (small.instance_map == k + 1).sum()
        assert 12 < ratio < 20
    for width, height in [(16, 64), (64, 16), (33, 47)]:
        assert render(scene, width, height).image.shape == (height, width, 3)
    with pytest.raises(ValueError, match="aspect"):
        render(scene, 65, 16)
    with pytest.raises(ValueError, match=">= 1 px"):
        render(scene, 0, 16)


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_backgrounds_stay_far_from_palette(kind):
    palette = np.array(list(COLORS.values()), float)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        tones = rng.choice(["slate", "sand", "sage", "stone", "mist", "ash"], size=2, replace=False)
        bg = render_background(Background(kind, str(tones[0]), str(tones[1]), seed), 96, 48)
        distance = np.linalg.norm(bg.reshape(-1, 1, 3) - palette[None], axis=-1).min()
        assert distance > 60, f"{kind} background comes within {distance:.0f} of a palette colour"
    textured = render_background(Background("texture", "ash", None, 1), 64, 64)
    assert 2 < np.ptp(textured) < 30   # visible but light


# ----------------------------------------------------------------------------- GenEval prompts
def test_prompt_set_has_official_proportions_and_structure():
    lines = geneval_prompts(0)
    assert collections.Counter(line["tag"] for line in lines) == TAG_COUNTS
    assert sum(TAG_COUNTS.values()) == 553
    for line in lines:
        assert list(line)[:2] == ["tag", "include"] and list(line)[-1] == "prompt"
        assert line["prompt"].startswith("a photo of ")
        assert all(c["class"] in SHAPES and c.get("color", "red") in COLOR_NAMES for c in line["include"])
        tag, include = line["tag"], line["include"]
        if tag == "counting":
            n = include[0]["count"]
            assert n in (2, 3, 4) and line["exclude"] == [{"class": include[0]["class"], "count": n + 1}]
        else:
            assert "exclude" not in line
        if tag == "position":
            assert include[0] == {"class": include[0]["class"], "count": 1}
            rel, ref = include[1]["position"]
            assert ref == 0 and rel in ("left of", "right of", "above", "below")
            assert line["prompt"] == f"a photo of a {include[1]['class']} {rel} a {include[0]['class']}"
        if tag in ("two_object", "position", "color_attr"):
            assert include[0]["class"] != include[1]["class"]
    orange = [line for line in lines if line["tag"] == "colors" and line["include"][0]["color"] == "orange"]
    assert orange and all(line["prompt"].startswith("a photo of an orange ") for line in orange)
    assert geneval_prompts(0) == lines and geneval_prompts(1) != lines


def test_default_prompt_file_regenerates_byte_for_byte():
    assert DEFAULT_PROMPTS_PATH.read_bytes() == dumps_prompts(geneval_prompts(seed=0)).encode()
    assert len(load_prompts()) == 553


@pytest.mark.parametrize("width,height", [(64, 64), (128, 32)])
def test_scenes_for_prompts_satisfy_them_and_not_other_prompts(width, height):
    lines = load_prompts()
    passed = wrong_passed = 0
    for i, meta in enumerate(lines):
        scene = scene_for_prompt(meta, np.random.default_rng([0, i]), width, height)
        detections = rendered_detections(scene, render(scene, width, height))
        passed += geneval_correct(meta, detections)
        wrong_passed += geneval_correct(lines[(i + 277) % len(lines)], detections)
    assert passed == len(lines)
    assert wrong_passed / len(lines) < 0.1


def test_position_scenes_hold_with_margin():
    for i, meta in enumerate(line for line in load_prompts() if line["tag"] == "position"):
        scene = scene_for_prompt(meta, np.random.default_rng(i), 64, 64)
        ref, obj = scene.objects
        rel = meta["include"][1]["position"][0]
        assert rel in geneval_relations(obj.box_px(64, 64), ref.box_px(64, 64), threshold=0.65)


# ----------------------------------------------------------------------------- DPG
def test_dpg_graphs_are_valid_and_csv_round_trips(tmp_path):
    items = dpg_items(40, seed=0)
    categories = collections.Counter()
    for item in items:
        questions = item["questions"]
        validate_graph(questions)
        assert all(q["answer"] == "yes" and q["question"].endswith("?") for q in questions)
        categories.update(q["category_broad"] for q in questions)
        scene = Scene.from_dict(item["scene"])
        # Every (colour, shape) group has exactly one colour question, and it follows its class entity.
        colour_qs = [q for q in questions if q["category_detailed"] == "attribute - color"]
        assert len(colour_qs) == len(scene.counts())
        for q in colour_qs:
            parent = questions[int(q["dependency"]) - 1]
            assert parent["category_detailed"] == "entity - whole"
    assert set(categories) == {"global", "entity", "attribute", "other", "relation"}
    path = tmp_path / "dpg.csv"
    write_dpg_csv(items, path)
    assert path.read_text().splitlines()[0] == ",".join(DPG_COLUMNS)
    back = read_dpg_csv(path)
    assert list(back) == [item["item_id"] for item in items]
    assert [q["question"] for q in back["shapes_00003"]["questions"]] == [q["question"] for q in items[3]["questions"]]


def test_dpg_relation_questions_are_true():
    with_relations = 0
    for item in dpg_items(30, seed=1):
        scene = Scene.from_dict(item["scene"])
        names = {o.name: o for o in scene.objects}
        for q in item["questions"]:
            if q["category_broad"] == "relation":
                a, b, rel = q["tuple"].split("(")[1].rstrip(")").split(", ")
                assert rel in geneval_relations(names[a].box_px(64, 64), names[b].box_px(64, 64))
                assert f"The {a} is {rel} the {b}" in item["prompt"]
                with_relations += 1
    assert with_relations > 5


# ----------------------------------------------------------------------------- edits
def _changed_fields(before: ShapeObject, after: ShapeObject) -> set[str]:
    return {f.name for f in dataclasses.fields(ShapeObject) if getattr(before, f.name) != getattr(after, f.name)}


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_each_edit_changes_exactly_what_it_says(kind):
    rng = np.random.default_rng(0)
    for _ in range(15):
        pair = sample_edit(rng, 64, 64, kinds=[kind])
        src, tgt, meta = pair.source.objects, pair.target.objects, pair.meta
        assert pair.kind == kind and pair.instruction.endswith(".")
        if kind == "background":
            assert src == tgt and pair.source.background != pair.target.background
            continue
        assert pair.source.background == pair.target.background
        i = meta["object_index"]
        if kind == "add":
            assert len(tgt) == len(src) + 1 and tgt[:-1] == src and i == len(src)
            assert tgt[i].name in pair.instruction
            continue
        assert pair.source.counts()[(src[i].color, src[i].shape)] == 1   # the name is unambiguous
        assert src[i].name in pair.instruction
        if kind == "remove":
            assert len(tgt) == len(src) - 1 and tgt == src[:i] + src[i + 1:]
            continue
        assert len(tgt) == len(src) and tgt[:i] == src[:i] and tgt[i + 1:] == src[i + 1:]
        changed = _changed_fields(src[i], tgt[i])
        if kind == "move":
            assert changed and changed <= {"cx", "cy"}
            assert np.array_equal(_mask_crop(pair.source, i), _mask_crop(pair.target, i))
        else:
            assert changed == {{"recolor": "color", "replace": "shape"}[kind]}
        assert meta["after"] == dataclasses.asdict(tgt[i])


def test_edit_refuses_what_it_cannot_do():
    lone = Scene((ShapeObject("circle", "red", 0.5, 0.5, 0.3),), Background())
    assert make_edit(lone, "remove", np.random.default_rng(0), 64, 64) is None
    twins = Scene((ShapeObject("circle", "red", 0.25, 0.5, 0.2), ShapeObject("circle", "red", 0.75, 0.5, 0.2)))
    assert make_edit(twins, "recolor", np.random.default_rng(0), 64, 64) is None
    with pytest.raises(ValueError, match="unknown edit kind"):
        make_edit(lone, "rotate", np.random.default_rng(0), 64, 64)


def test_subject_pairs_keep_the_subject():
    rng = np.random.default_rng(0)
    for _ in range(20):
        pair = sample_subject_pair(rng, 64, 64)
        subject = pair.target.objects[pair.target_index]
        original = pair.source.objects[pair.source_index]
        assert (subject.shape, subject.color, subject.size) == (original.shape, original.color, original.size)
        assert pair.subject == {"shape": subject.shape, "color": subject.color, "size": subject.size}
        assert pair.target.counts()[(subject.color, subject.shape)] == 1
        assert len(pair.target.objects) >= 2 and subject.name in pair.prompt
        # Whole-pixel shift: the subject's rendered mask is identical, not just similar.
        assert np.array_equal(_mask_crop(pair.source, pair.source_index), _mask_crop(pair.target, pair.target_index))


def _mask_crop(scene: Scene, index: int, width: int = 64, height: int = 64) -> np.ndarray:
    mask = render(scene, width, height).instance_map == index + 1
    ys, xs = np.nonzero(mask)
    return mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


# ----------------------------------------------------------------------------- videos
def test_video_event_log_matches_frames():
    seen = collections.Counter()
    for seed in range(12):
        video = make_video(np.random.default_rng(seed), num_frames=10, p_appear=0.3, p_disappear=0.2, p_recolor=0.3)
        assert len(video.frames) == len(video.captions) == len(video.object_ids) == 10
        for t in range(1, 10):
            events = [e for e in video.events if e["frame"] == t]
            seen.update(e["event"] for e in events)
            before = dict(zip(video.object_ids[t - 1], video.frames[t - 1].objects))
            after = dict(zip(video.object_ids[t], video.frames[t].objects))
            by_kind = collections.defaultdict(dict)
            for e in events:
                by_kind[e["event"]][e["object"]] = e
            assert set(after) - set(before) == set(by_kind["appear"])
            assert set(before) - set(after) == set(by_kind["disappear"])
            for oid in set(before) & set(after):
                a, b = before[oid], after[oid]
                assert ((a.cx, a.cy) != (b.cx, b.cy)) == (oid in by_kind["move"])
                assert (a.color != b.color) == (oid in by_kind["recolor"])
                if oid in by_kind["recolor"]:
                    assert by_kind["recolor"][oid]["to"] == b.color
                assert (a.shape, a.size) == (b.shape, b.size)
            assert (video.captions[t] == "Nothing changes.") == (not events)
            render(video.frames[t], 64, 64)   # every frame is a valid scene
    assert set(seen) == {"move", "appear", "disappear", "recolor"}


# ----------------------------------------------------------------------------- world command
def _read_tar(path) -> dict[str, dict[str, bytes]]:
    samples: dict[str, dict[str, bytes]] = collections.defaultdict(dict)
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            samples[key][ext] = tar.extractfile(member).read()
    return samples


@pytest.mark.parametrize("kind,fields", [
    ("scenes", {"png", "cls.png", "col.png", "ins.png", "json"}),
    ("geneval", {"png", "cls.png", "col.png", "ins.png", "json"}),
    ("dpg", {"png", "cls.png", "col.png", "ins.png", "json"}),
    ("edits", {"src.png", "tgt.png", "json"}),
    ("subject", {"src.png", "tgt.png", "json"}),
    ("videos", {"f000.png", "f001.png", "f002.png", "json"}),
])
def test_world_writes_shards(tmp_path, kind, fields):
    from PIL import Image

    from commands.world import run

    result = run(kind=kind, out=str(tmp_path / kind), num_samples=6, samples_per_shard=4, seed=3,
                 aspect_ratios=[0.25, 4.0], num_frames=3)
    assert result["samples_written"] == 6 and result["shards_written"] == 2
    samples = _read_tar(tmp_path / kind / "shard-000000.tar")
    assert len(samples) == 4
    for sample in samples.values():
        assert set(sample) == fields
        meta = json.loads(sample["json"])
        image = Image.open(io.BytesIO(sample["png" if "png" in sample else fields.intersection({"src.png", "f000.png"}).pop()]))
        assert image.size == (meta["width"], meta["height"]) and image.size in [(128, 32), (32, 128)]
    if kind == "dpg":
        assert len(read_dpg_csv(tmp_path / kind / "dpg_questions.csv")) == 6
    # Same seed, fresh directory: identical content.
    run(kind=kind, out=str(tmp_path / "again"), num_samples=6, samples_per_shard=4, seed=3,
        aspect_ratios=[0.25, 4.0], num_frames=3)
    assert _read_tar(tmp_path / "again" / "shard-000000.tar") == samples


@pytest.mark.parametrize("kwargs,needle", [
    ({"colors": ["red", "teal"]}, "'teal'"),
    ({"shapes": ["hexagon"]}, "'hexagon'"),
    ({"max_count": -1}, "max_count"),
    ({"num_samples": -5}, "num_samples"),
    ({"width": 0}, "0x64"),
    ({"width": 256, "height": 32}, "256x32"),
    ({"aspect_ratios": [5.0]}, "5.0"),
    ({"width": 16, "height": 16}, "16x16"),
    ({"edit_kinds": ["rotate"]}, "'rotate'"),
    ({"kind": "geneval", "prompts": "/nonexistent.jsonl"}, "/nonexistent.jsonl"),
    ({"min_object_px": 4}, "min_object_px"),
    ({"min_object_px": 20, "aspect_ratios": [0.25]}, "min_object_px"),
    ({"prompt_mix": 1.5}, "prompt_mix"),
    ({"kind": "edits", "prompt_mix": 0.5}, "kind='edits'"),
])
def test_world_bad_input_raises_usage_error(tmp_path, kwargs, needle):
    from commands import UsageError
    from commands.world import run

    with pytest.raises(UsageError) as info:
        run(**{"out": str(tmp_path / "bad"), "num_samples": 1, **kwargs})
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert not (tmp_path / "bad").exists()


def test_world_prompt_mix_realises_template_prompts(tmp_path):
    """prompt_mix: that fraction of scenes realise a GenEval-template prompt (seed + 1 set),
    captioned with it; their renders score 1 with the oracle-backed GenEval rule, objects keep
    min_object_px; the rest stay general scenes."""
    from commands.world import run
    from shapes.scene import Scene
    from evaluation.geneval_rules import evaluate_image
    from PIL import Image

    run(kind="scenes", out=str(tmp_path / "mix"), num_samples=40, samples_per_shard=40, seed=0,
        prompt_mix=0.5, min_object_px=16)
    metas = [(json.loads(s["json"]), s["png"]) for s in _read_tar(tmp_path / "mix" / "shard-000000.tar").values()]
    templated = [(m, png) for m, png in metas if "geneval" in m]
    assert 10 <= len(templated) <= 30
    for meta, png in templated:
        assert meta["caption"] == meta["prompt"] == meta["geneval"]["prompt"]
        scene = Scene.from_dict(meta["scene"])
        assert min(o.side_px(64, 64) for o in scene.objects) >= 16
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        correct, reason, _ = evaluate_image(image, meta["geneval"])
        assert correct, (meta["prompt"], reason)
    assert all("geneval" not in m and m["caption"] in m["captions"].values() for m, _ in metas if "geneval" not in m)


# ----------------------------------------------------------------------------- held-out split
def test_split_rule_sizes_and_balance():
    from shapes.split import HELD_OUT_COUNTS, HELD_OUT_ITEMS, HELD_OUT_SHAPE_PAIRS

    assert len(HELD_OUT_SHAPE_PAIRS) == 3 and sorted(s for p in HELD_OUT_SHAPE_PAIRS for s in p) == sorted(SHAPES)
    assert len(HELD_OUT_ITEMS) == 12
    assert all(sum((c, s) in HELD_OUT_ITEMS for c in COLOR_NAMES) == 2 for s in SHAPES)
    assert ("red", "circle") in HELD_OUT_ITEMS and ("blue", "circle") not in HELD_OUT_ITEMS
    assert {n for _s, n in HELD_OUT_COUNTS} == {2, 3, 4} and len(HELD_OUT_COUNTS) == 4


def test_split_of_the_evaluation_prompts_per_task():
    """The 553 evaluation prompts keep their text; the rule makes 125 unseen, >= 10 in every task
    whose template allows one (single objects cannot be held out)."""
    from shapes.split import held_out_reasons, split_counts, split_of

    metas = load_prompts(DEFAULT_PROMPTS_PATH)
    assert len(metas) == 553
    assert split_counts(metas) == {
        "single_object": {"seen": 80, "unseen": 0}, "two_object": {"seen": 81, "unseen": 18},
        "counting": {"seen": 63, "unseen": 17}, "colors": {"seen": 75, "unseen": 19},
        "position": {"seen": 80, "unseen": 20}, "color_attr": {"seen": 49, "unseen": 51}}
    meta = {"tag": "color_attr", "include": [{"class": "circle", "count": 1, "color": "red"},
                                             {"class": "diamond", "count": 1, "color": "green"}], "prompt": "x"}
    assert held_out_reasons(meta) == ["item (red, circle)", "pair (circle, diamond)"]
    assert split_of({"tag": "counting", "include": [{"class": "star", "count": 2}], "prompt": "y"}) == "unseen"
    assert split_of({"tag": "counting", "include": [{"class": "star", "count": 3}], "prompt": "z"}) == "seen"


def test_training_scenes_show_no_held_out_combination():
    from shapes.split import sample_training_scene, scene_held_out, training_scene_for_prompt

    rng = np.random.default_rng(0)
    plain = [sample_scene(rng, 64, 64) for _ in range(60)]
    assert sum(bool(scene_held_out(s)) for s in plain) >= 10        # the rule bites on the unsplit world
    split = [sample_training_scene(rng, 64, 64) for _ in range(60)]
    assert not any(scene_held_out(s) for s in split)
    assert max(len(s.counts()) for s in split) == 3                 # multi-group scenes survive
    two = Scene((ShapeObject("star", "green", 0.2, 0.5, 0.2), ShapeObject("star", "green", 0.7, 0.5, 0.2)))
    assert scene_held_out(two) == ["count (star, 2)", "count (star, 2)"]
    unseen = {"tag": "colors", "include": [{"class": "circle", "count": 1, "color": "red"}],
              "prompt": "a photo of a red circle"}
    with pytest.raises(ValueError, match="held-out"):
        training_scene_for_prompt(unseen, rng)


def test_world_training_writers_hold_out_and_record_the_overlap(tmp_path):
    """kind=scenes (random and prompt-mix scenes) and edit pairs show no held-out combination and no
    held-out evaluation prompt's text; the index records the overlap; --holdout false writes the
    unsplit world (where the rule does bite)."""
    from commands.world import run
    from shapes.split import scene_held_out, split_of

    metas = load_prompts(DEFAULT_PROMPTS_PATH)
    unseen_texts = {m["prompt"] for m in metas if split_of(m) == "unseen"}
    result = run(kind="scenes", out=str(tmp_path / "s"), num_samples=60, samples_per_shard=60, seed=1, prompt_mix=0.5)
    samples = [json.loads(s["json"]) for s in _read_tar(tmp_path / "s" / "shard-000000.tar").values()]
    assert not any(scene_held_out(Scene.from_dict(m["scene"])) for m in samples)
    texts = {t for m in samples for t in [m["caption"], *m["captions"].values()]}
    assert not texts & unseen_texts
    overlap = json.loads((tmp_path / "s" / "index.json").read_text())["metadata"]["eval_overlap"]
    assert overlap == result["eval_overlap"] and overlap["unseen_in_captions"] == 0 and overlap["prompts"] == 553
    assert overlap["in_captions"] == sum(m["prompt"] in texts for m in metas) > 0
    run(kind="edits", out=str(tmp_path / "e"), num_samples=12, samples_per_shard=12, seed=1)
    for m in (json.loads(s["json"]) for s in _read_tar(tmp_path / "e" / "shard-000000.tar").values()):
        assert not scene_held_out(Scene.from_dict(m["source"])) and not scene_held_out(Scene.from_dict(m["target"]))
    run(kind="scenes", out=str(tmp_path / "u"), num_samples=60, samples_per_shard=60, seed=1, holdout=False)
    plain = [json.loads(s["json"]) for s in _read_tar(tmp_path / "u" / "shard-000000.tar").values()]
    assert any(scene_held_out(Scene.from_dict(m["scene"])) for m in plain)
