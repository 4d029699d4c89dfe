"""The benchmark suite end to end with generators that need no training: the world's ground truth
for every prompt (evaluation/baselines.py; scores must be near perfect), empty backgrounds (near
zero) and random training scenes (the prompt-agnostic floor). Also: the layout it writes is what
`report` reads, and GenEval is reported on seen and unseen prompts."""
import json

import numpy as np
from PIL import Image
import pytest

from shapes.dpg import dpg_items
from shapes.prompts import DEFAULT_PROMPTS_PATH, scene_for_prompt
from shapes.render import render
from shapes.scene import Scene
from evaluation.editcanvas import sample_images, shapes_editcanvas_set
from evaluation.geneval import load_metadata
from evaluation.baselines import GroundTruthGenerator
from evaluation.suite import SuiteConfig, headline, run_suite
from evaluation.understanding import understanding_items

CFG = SuiteConfig(geneval_limit=12, images_per_prompt=1, dpg_prompts=3, editcanvas_per_task=1,
                  understanding_scenes=2, width=64, height=64)


class BlankGenerator:
    def text_to_image(self, prompts, height, width, seed):
        return [np.full((height, width, 3), 150, np.uint8) for _ in prompts]

    def edit(self, sources, instructions, seed):
        return [np.full_like(s, 150) for s in sources]

    def answer(self, images, questions):
        return ["" for _ in images]


@pytest.fixture(scope="module")
def perfect(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite_perfect")
    return out, run_suite(GroundTruthGenerator(CFG), out, CFG)


def test_ground_truth_images_score_near_perfect(perfect):
    _, metrics = perfect
    scores = headline(metrics)
    assert scores["geneval/overall"] >= 0.95
    assert scores["dpg/score"] >= 95.0
    assert scores["editcanvas/overall"] >= 9.0
    assert scores["understanding/overall"] >= 0.95
    assert scores["geneval/clutter_rate"] == 0.0  # the scenes hold exactly the objects asked for
    assert set(metrics["geneval"]["tasks"]) == {"single_object", "two_object", "counting", "colors",
                                                 "position", "color_attr"}


def test_blank_images_score_near_zero(tmp_path):
    scores = headline(run_suite(BlankGenerator(), tmp_path, CFG))
    assert scores["geneval/overall"] <= 0.05
    assert scores["dpg/score"] <= 20.0
    assert scores["editcanvas/overall"] <= 2.0
    assert scores["understanding/overall"] <= 0.05


def test_suite_writes_official_layouts_and_report_reads_them(perfect):
    out, metrics = perfect
    assert json.loads((out / "metrics.json").read_text())["geneval"]["overall"] == metrics["geneval"]["overall"]
    assert len(list((out / "geneval").glob("*/samples/0000.png"))) == CFG.geneval_limit
    assert (out / "geneval" / "results.jsonl").is_file()
    assert len(list((out / "dpg").glob("shapes_*.png"))) == CFG.dpg_prompts
    assert (out / "editcanvas" / "editcanvas_results.json").is_file()
    from commands.report import run as report

    report(path=str(out))
    assert (out / "report.md").is_file() and (out / "report.html").stat().st_size > 1000


def test_rescore_reproduces_scores_from_the_written_images(perfect, tmp_path):
    """rescore_suite reads the official layouts back (GenEval folder, DPG 2x2 grids + CSV,
    EditCanvas sample folders) and, with unchanged evaluators, gives the same numbers; an
    evaluator change shows up, the old scores kept under "previous"."""
    import shutil

    from commands import UsageError
    from commands.rescore import run as rescore
    from evaluation.suite import rescore_suite

    out, metrics = perfect
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    again = rescore_suite(copy)
    for key, value in headline(metrics).items():
        assert abs(headline(again)[key] - value) < 1e-9, key
    assert again["previous"]["geneval"]["overall"] == metrics["geneval"]["overall"]
    for png in (copy / "geneval").glob("*/samples/*.png"):  # blank every GenEval image: 0 now
        Image.fromarray(np.full((CFG.height, CFG.width, 3), 128, np.uint8)).save(png)
    scores = rescore(str(tmp_path))  # a second rescoring keeps the first-written scores as "previous"
    assert json.loads((copy / "metrics.json").read_text())["previous"]["geneval"]["overall"] == metrics["geneval"]["overall"]
    assert scores[str(copy)]["geneval/overall"] == 0.0 and scores[str(copy)]["dpg/score"] >= 95.0
    with pytest.raises(UsageError, match="no benchmark suite folders"):
        rescore(str(tmp_path / "copy" / "dpg"))


def test_geneval_is_reported_on_seen_and_unseen_prompts(perfect):
    """Without training shards the split rule decides: the seen and unseen parts partition the
    prompts (the subset has some of each) and score like the whole for the ground truth."""
    from shapes.split import split_of
    from evaluation.geneval import spread_subset

    _, metrics = perfect
    gen = metrics["geneval"]
    metas = spread_subset(load_metadata(DEFAULT_PROMPTS_PATH), CFG.geneval_limit)
    unseen = sum(split_of(m) == "unseen" for m in metas)
    assert gen["split"] == "rule" and 0 < unseen < len(metas)
    assert (gen["seen"]["prompts"], gen["unseen"]["prompts"]) == (len(metas) - unseen, unseen)
    assert gen["seen"]["images"] + gen["unseen"]["images"] == gen["images"]
    scores = headline(metrics)
    assert scores["geneval/seen/overall"] >= 0.95 and scores["geneval/unseen/overall"] >= 0.95
    assert gen["held_out"]["prompts"] == unseen and scores["geneval/held_out/overall"] >= 0.95


def test_seen_means_the_prompt_text_is_among_the_training_captions(tmp_path):
    """split_summaries with training captions: a prompt is seen iff its exact text was a caption;
    caption_texts reads every caption field of world shards."""
    from commands.world import run as world
    from shapes.split import split_of
    from evaluation.geneval import caption_texts, split_summaries

    world(kind="scenes", out=str(tmp_path / "w"), num_samples=8, samples_per_shard=4, seed=1, prompt_mix=1.0)
    texts = caption_texts([tmp_path / "w"])
    assert len(texts) >= 8
    metas = load_metadata(DEFAULT_PROMPTS_PATH)
    inside = list({m["prompt"]: m for m in metas if m["prompt"] in texts}.values())   # distinct texts
    outside = list({m["prompt"]: m for m in metas if m["prompt"] not in texts}.values())[:3]
    records = [{"tag": m["tag"], "prompt": m["prompt"], "correct": k % 2 == 0, "metadata": json.dumps(m)}
               for k, m in enumerate(inside[:2] + outside)]
    parts = split_summaries(records, texts)
    assert parts["source"] == "captions"
    assert (parts["seen"]["prompts"], parts["unseen"]["prompts"]) == (len(inside[:2]), 3)
    assert parts["held_out"]["prompts"] == sum(split_of(m) == "unseen" for m in inside[:2] + outside)
    empty = split_summaries(records[:1], set())
    assert empty["seen"]["overall"] is None and empty["unseen"]["images"] == 1
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        caption_texts([tmp_path])


def test_baselines_command_writes_suite_folders_floor_below_ceiling(tmp_path):
    from commands import UsageError
    from commands.baselines import run as baselines

    suite = {"geneval_limit": 12, "images_per_prompt": 2, "dpg_prompts": 2, "editcanvas_per_task": 1,
             "understanding_scenes": 1, "width": 64, "height": 64}
    scores = baselines(out=str(tmp_path), suite=suite)
    for name in ("random_scenes", "ground_truth"):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["baseline"]["name"] == name and metrics["suite"]["geneval_limit"] == 12
        assert (tmp_path / name / "geneval" / "results.jsonl").is_file() and "unseen" in metrics["geneval"]
    truth, floor = scores["ground_truth"], scores["random_scenes"]
    assert truth["geneval/overall"] >= 0.95 and truth["understanding/overall"] >= 0.95
    assert floor["geneval/overall"] <= truth["geneval/overall"] - 0.4
    assert floor["understanding/overall"] == 0.0 and floor["dpg/score"] < truth["dpg/score"]
    with pytest.raises(UsageError, match="'oracle'"):
        baselines(out=str(tmp_path), baselines=["oracle"])


def test_ground_truth_geneval_scenes_use_the_suites_object_size():
    """GroundTruthGenerator renders GenEval prompts with the suite's min_object_px (as the DPG and
    understanding scenes do), so the truth looks like the scenes the model was asked to learn."""
    import dataclasses

    from shapes.oracle import OracleDetector

    cfg = dataclasses.replace(CFG, min_object_px=24, dpg_prompts=0, editcanvas_per_task=0, understanding_scenes=0)
    gen = GroundTruthGenerator(cfg)
    prompts = [m["prompt"] for m in list(gen.metas.values())[:40]]
    sides = [min(d["bbox"][2] - d["bbox"][0], d["bbox"][3] - d["bbox"][1])
             for image in gen.text_to_image(prompts, 64, 64, seed=0) for d in OracleDetector().detect(image)]
    assert len(sides) >= 40 and min(sides) >= 22   # 24 px boxes, a pixel of anti-aliasing either side
