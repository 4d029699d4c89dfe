"""The benchmark suite end to end with two generators that need no training: one that draws the
world's ground truth for every prompt (scores must be near perfect) and one that draws empty
backgrounds (scores must be near zero). Also: the layout it writes is what `report` reads."""
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
from evaluation.suite import SuiteConfig, headline, run_suite
from evaluation.understanding import understanding_items

CFG = SuiteConfig(geneval_limit=12, images_per_prompt=1, dpg_prompts=3, editcanvas_per_task=1,
                  understanding_scenes=2, width=64, height=64)


class GroundTruthGenerator:
    """Looks up the scene behind each prompt / edit / question and answers perfectly."""

    def __init__(self, cfg: SuiteConfig):
        w, h = cfg.width, cfg.height
        self.size = (w, h)
        self.scenes = {m["prompt"]: scene_for_prompt(m, np.random.default_rng(i), w, h)
                       for i, m in enumerate(load_metadata(DEFAULT_PROMPTS_PATH))}
        self.scenes.update({it["prompt"]: Scene.from_dict(it["scene"])
                            for it in dpg_items(cfg.dpg_prompts, seed=cfg.seed, width=w, height=h)})
        self.edits = {}
        for s in shapes_editcanvas_set(seed=cfg.seed, per_task=cfg.editcanvas_per_task, width=w, height=h):
            images = sample_images(s)
            self.edits[(images["source"].tobytes(), s.get("instruction") or s["prompt"])] = images["target"]
        self.answers = {(it["image"].tobytes(), it["question"]): it["answer"]
                        for it in understanding_items(cfg.understanding_scenes, seed=cfg.seed, width=w, height=h)}

    def text_to_image(self, prompts, height, width, seed):
        return [render(self.scenes[p], width, height).image for p in prompts]

    def edit(self, sources, instructions, seed):
        return [self.edits[(s.tobytes(), i)] for s, i in zip(sources, instructions)]

    def answer(self, images, questions):
        return [self.answers[(im.tobytes(), q)] for im, q in zip(images, questions)]


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
