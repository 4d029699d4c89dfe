"""Reference generators the suite scores exactly like a model (same text_to_image / edit / answer
interface as modules/ar/generator.py ARGenerator): the floor and the ceiling of every benchmark.

- RandomScenesGenerator ("random_scenes"): ignores the prompt and draws a scene from the training
  distribution of the world (commands/world.py kind=scenes with the split of shapes/split.py and a
  prompt mix: random scenes, and scenes realising random *training* GenEval-template prompts). It
  scores what a model that has learnt the images but not the text would score. Edits: a fresh
  random scene (it ignores the source and the instruction too). Answers: not supported (empty
  strings, scored 0).
- GroundTruthGenerator ("ground_truth"): the world's own renders of each prompt (a scene laid out
  to meet the GenEval prompt, a new layout per image; the DPG item's scene), the world's target
  image for each edit and the world's answer to each question: the scorers' ceiling.

`notes` on each class says what it does per benchmark; commands/baselines.py records it in the
suite's metrics.json under "baseline".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from shapes.prompts import DEFAULT_PROMPTS_PATH, geneval_prompts, load_prompts, scene_for_prompt
from shapes.render import render
from shapes.scene import MIN_OBJECT_PX, Scene
from shapes.split import sample_training_scene, split_of, training_scene_for_prompt

from evaluation.suite import SuiteConfig, scene_kwargs

BASELINES = ("random_scenes", "ground_truth")


class RandomScenesGenerator:
    """Prompt-agnostic: a training-distribution scene per image, whatever the prompt says.

    prompt_mix: the fraction of images realising a random seen GenEval-template prompt of
    `mix_seed` (the quickstart's AR data: prompt_mix 0.5 of the world's seed 1, i.e. prompts of
    seed 2). min_object_fraction: smallest object side as a fraction of the canvas' shorter side
    (the quickstart's AR data: 16 px on 64 px)."""

    notes = {"text_to_image": "random training-distribution scenes; the prompt is ignored",
             "edit": "a random training-distribution scene; source and instruction are ignored",
             "answer": "not supported: empty answers (scored 0)"}

    def __init__(self, prompt_mix: float = 0.5, mix_seed: int = 2, min_object_fraction: float = 0.25):
        if not 0.0 <= prompt_mix <= 1.0:
            raise ValueError(f"prompt_mix must be in [0, 1], got {prompt_mix}")
        self.prompt_mix, self.min_object_fraction = prompt_mix, min_object_fraction
        self.mix_lines = [m for m in geneval_prompts(mix_seed) if split_of(m) == "seen"]

    def _scene(self, rng: np.random.Generator, width: int, height: int) -> Scene:
        min_px = min(max(MIN_OBJECT_PX, self.min_object_fraction * min(width, height)), min(width, height) / 2)
        if rng.random() < self.prompt_mix:
            meta = self.mix_lines[int(rng.integers(len(self.mix_lines)))]
            return training_scene_for_prompt(meta, rng, width, height, min_object_px=min_px)
        return sample_training_scene(rng, width, height, min_object_px=min_px)

    def text_to_image(self, prompts: list[str], height: int, width: int, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 0])
        return [render(self._scene(rng, width, height), width, height).image for _ in prompts]

    def edit(self, sources: list[np.ndarray], instructions: list[str], seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 1])
        return [render(self._scene(rng, s.shape[1], s.shape[0]), s.shape[1], s.shape[0]).image for s in sources]

    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        return ["" for _ in questions]


class GroundTruthGenerator:
    """The world's answer to everything the suite asks, for the suite settings `cfg` (the DPG
    items, EditCanvas samples and understanding items are regenerated from cfg's seed and sizes
    and looked up by prompt / source image + instruction / image + question)."""

    notes = {"text_to_image": "the world's renders: a scene meeting each GenEval prompt (a new layout per "
                              "image), the DPG item's own scene",
             "edit": "the world's target image of each EditCanvas sample",
             "answer": "the world's answer to each understanding question"}

    def __init__(self, cfg: SuiteConfig):
        from shapes.dpg import dpg_items
        from evaluation.editcanvas import sample_images, shapes_editcanvas_set
        from evaluation.understanding import understanding_items

        w, h = cfg.width, cfg.height
        self.scene_kwargs = scene_kwargs(cfg)  # GenEval scenes with the suite's object sizes, like DPG's
        self.metas = {m["prompt"]: m for m in load_prompts(cfg.geneval_prompts or DEFAULT_PROMPTS_PATH)}
        self.dpg = {it["prompt"]: Scene.from_dict(it["scene"])
                    for it in dpg_items(cfg.dpg_prompts, seed=cfg.seed, width=w, height=h, **scene_kwargs(cfg))} if cfg.dpg_prompts else {}
        self.edits: dict[tuple[bytes, str], np.ndarray] = {}
        if cfg.editcanvas_per_task:
            for s in shapes_editcanvas_set(seed=cfg.seed, per_task=cfg.editcanvas_per_task, width=w, height=h):
                images = sample_images(s)
                self.edits[(images["source"].tobytes(), s.get("instruction") or s["prompt"])] = images["target"]
        self.answers = {(it["image"].tobytes(), it["question"]): it["answer"]
                        for it in understanding_items(cfg.understanding_scenes, seed=cfg.seed, width=w, height=h,
                                                    **scene_kwargs(cfg))} \
            if cfg.understanding_scenes else {}

    def text_to_image(self, prompts: list[str], height: int, width: int, seed: int) -> list[np.ndarray]:
        rng = np.random.default_rng([seed, 0])
        out = []
        for prompt in prompts:
            if prompt in self.metas:
                scene = scene_for_prompt(self.metas[prompt], rng, width, height, **self.scene_kwargs)
            elif prompt in self.dpg:
                scene = self.dpg[prompt]
            else:
                raise ValueError(f"ground truth has no scene for prompt {prompt!r}: it knows the suite's GenEval "
                                 f"prompts and DPG items only (build it with the suite's SuiteConfig)")
            out.append(render(scene, width, height).image)
        return out

    def edit(self, sources: list[np.ndarray], instructions: list[str], seed: int) -> list[np.ndarray]:
        try:
            return [self.edits[(s.tobytes(), i)] for s, i in zip(sources, instructions)]
        except KeyError as err:
            raise ValueError("ground truth has no target for an edit: build it with the suite's SuiteConfig") from err

    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        try:
            return [self.answers[(im.tobytes(), q)] for im, q in zip(images, questions)]
        except KeyError as err:
            raise ValueError("ground truth has no answer for a question: build it with the suite's "
                             "SuiteConfig") from err


def make_baseline(name: str, cfg: SuiteConfig, **options: float) -> RandomScenesGenerator | GroundTruthGenerator:
    """A baseline generator by name (BASELINES); options go to RandomScenesGenerator."""
    if name == "random_scenes":
        return RandomScenesGenerator(**options)
    if name == "ground_truth":
        return GroundTruthGenerator(cfg)
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")


def run_baselines(out_dir: str | Path, cfg: SuiteConfig, names: tuple[str, ...] | list[str] = BASELINES,
                  **options: float) -> dict[str, dict]:
    """Score each baseline with the suite into out_dir/<name>/ (the layout of a model's suite run:
    metrics.json, geneval/, dpg/, editcanvas/, understanding.json); returns name -> metrics."""
    from evaluation.suite import run_suite

    results = {}
    for name in names:
        gen = make_baseline(name, cfg, **options)
        results[name] = run_suite(gen, Path(out_dir) / name, cfg,
                                  extra={"baseline": {"name": name, "notes": gen.notes}})
    return results
