"""`python main.py world`: write Shapes-world data as webdataset shards."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from commands import UsageError
from shapes.captions import captions
from shapes.dpg import dpg_item, write_dpg_csv
from shapes.edits import EDIT_KINDS, sample_edit, sample_subject_pair
from shapes.palette import BACKGROUND_KINDS, COLOR_NAMES, SHAPES
from shapes.prompts import DEFAULT_PROMPTS_PATH, geneval_prompts, load_prompts, scene_for_prompt, write_prompts
from shapes.render import render
from shapes.scene import MAX_ASPECT, MIN_ASPECT, MIN_CANVAS_SIDE, MIN_OBJECT_PX, Scene, sample_scene
from shapes.split import (HELD_OUT_ITEMS, group_allowed, resample, sample_training_scene, split_of,
                          training_scene_for_prompt)
from shapes.video import make_video

Kind = Literal["scenes", "geneval", "dpg", "edits", "subject", "videos"]


def canvas_for_aspect(width: int, height: int, aspect: float, multiple: int) -> tuple[int, int]:
    """A width x height canvas of about the same area with width/height = aspect, sides rounded
    to `multiple` (the tokenizer's patch, so every image tiles into whole tokens)."""
    area = width * height
    w = max(multiple, round(math.sqrt(area * aspect) / multiple) * multiple)
    h = max(multiple, round(math.sqrt(area / aspect) / multiple) * multiple)
    return int(w), int(h)


def _check_choices(values: list[str] | None, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if values is None:
        return allowed
    if not values:
        raise UsageError(f"--{what} is empty; give at least one of: {', '.join(allowed)}")
    for value in values:
        if value not in allowed:
            raise UsageError(f"unknown {what[:-1]} {value!r} in --{what}; choose from: {', '.join(allowed)}")
    return tuple(values)


def _canvases(width: int, height: int, aspect_ratios: list[float] | None, multiple: int) -> list[tuple[int, int]]:
    if multiple < 1:
        raise UsageError(f"--size_multiple must be >= 1, got {multiple}")
    if aspect_ratios is None:
        canvases = [(width, height)]
    else:
        if not aspect_ratios:
            raise UsageError("--aspect_ratios is empty; give ratios width/height in [0.25, 4] or leave it unset")
        for ratio in aspect_ratios:
            if not MIN_ASPECT <= ratio <= MAX_ASPECT:
                raise UsageError(f"aspect ratio {ratio} in --aspect_ratios is outside [0.25, 4] (1:4 .. 4:1)")
        canvases = [canvas_for_aspect(width, height, r, multiple) for r in aspect_ratios]
    for w, h in [(width, height), *canvases]:
        if w < MIN_CANVAS_SIDE or h < MIN_CANVAS_SIDE:
            raise UsageError(f"canvas {w}x{h} px is too small: both sides must be >= {MIN_CANVAS_SIDE} px "
                             f"(objects are at least 10 px); raise --width/--height")
        if not MIN_ASPECT <= w / h <= MAX_ASPECT:
            raise UsageError(f"canvas {w}x{h} has aspect ratio {w / h:.3g}, outside [0.25, 4]")
    return canvases


def run(
    kind: Kind = "scenes",
    out: str = "data/shapes/scenes",
    num_samples: int = 1000,
    width: int = 64,
    height: int = 64,
    aspect_ratios: list[float] | None = None,
    seed: int = 0,
    samples_per_shard: int = 500,
    colors: list[str] | None = None,
    shapes: list[str] | None = None,
    backgrounds: list[str] | None = None,
    max_count: int = 6,
    max_groups: int = 3,
    max_objects: int = 8,
    min_object_px: float = MIN_OBJECT_PX,
    size_multiple: int = 16,
    prompts: str | None = None,
    edit_kinds: list[str] | None = None,
    num_frames: int = 8,
    prompt_mix: float = 0.0,
    holdout: bool = True,
) -> dict[str, Any]:
    """Write Shapes-world data as webdataset shards: scenes, GenEval/DPG renders, edits, subject pairs, videos.

    Sample i is drawn from numpy Generator([seed, i]), so any sample can be regenerated alone and
    an interrupted run resumes with identical shards.

    Args:
        kind: scenes (image + class/colour/instance maps + captions); geneval (renders of a
            GenEval-format prompt set, sample i realises prompt i mod N); dpg (dense prompt +
            question graph; also writes <out>/dpg_questions.csv); edits (src/tgt images +
            instruction); subject (subject-driven pairs); videos (frames f000.png... + event log).
        out: output directory for the shards.
        num_samples: number of samples.
        width: canvas width in px (with aspect_ratios: width*height is the area kept).
        height: canvas height in px.
        aspect_ratios: width/height ratios in [0.25, 4] drawn per sample; None = width x height only.
        seed: base seed.
        samples_per_shard: samples per .tar shard.
        colors: palette colours scenes may use (default: GenEval's ten).
        shapes: shape classes scenes may use (default: all six).
        backgrounds: background kinds (plain, gradient, texture).
        max_count: most objects of one shape class in a scene (1..6 typical).
        max_groups: most (colour, shape) groups in a scene.
        max_objects: most objects in a scene.
        min_object_px: smallest object box side in px (default 10, the world's floor); the
            Shapes tokenizer data uses 16 (two 8-px tokens) so shapes survive tokenisation.
        size_multiple: canvas sides are rounded to this multiple when aspect_ratios is set.
        prompts: GenEval-format .jsonl for kind=geneval (default: configs/prompts/geneval_shapes.jsonl,
            or a fresh set over --shapes/--colors when those are given).
        edit_kinds: edit kinds for kind=edits (add, remove, recolor, replace, move, background).
        num_frames: frames per video for kind=videos.
        prompt_mix: kind=scenes only: the fraction of samples that realise a GenEval-template
            prompt (single/two objects, counting, colours, position, colour attribute) drawn from
            a prompt set of seed `seed + 1`, captioned with that prompt; only prompts on the
            training side of the split (shapes/split.py) are used. Template scenes are simple
            (1-4 objects), so a small text-to-image model learns composition faster from them
            than from crowded scenes alone.
        holdout: training kinds (scenes, edits, subject, videos) show none of the held-out
            combinations of shapes/split.py (default); false writes the unsplit world. The
            evaluation kinds (geneval, dpg) are never split. For kind=scenes the shard index
            records how many evaluation prompts' texts appear among the written captions.
    """
    if num_samples < 0:
        raise UsageError(f"--num_samples must be >= 0, got {num_samples}")
    if samples_per_shard < 1:
        raise UsageError(f"--samples_per_shard must be >= 1, got {samples_per_shard}")
    for name, value in (("max_count", max_count), ("max_groups", max_groups), ("max_objects", max_objects),
                        ("num_frames", num_frames)):
        if value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    color_set = _check_choices(colors, COLOR_NAMES, "colors")
    shape_set = _check_choices(shapes, SHAPES, "shapes")
    background_set = _check_choices(backgrounds, BACKGROUND_KINDS, "backgrounds")
    edit_set = _check_choices(edit_kinds, EDIT_KINDS, "edit_kinds")
    canvases = _canvases(width, height, aspect_ratios, size_multiple)
    smallest = min(min(w, h) for w, h in canvases)
    if not MIN_OBJECT_PX <= min_object_px <= smallest / 2:
        raise UsageError(f"--min_object_px must be in [{MIN_OBJECT_PX}, {smallest / 2:g}] (half the shortest "
                         f"canvas side, {smallest} px), got {min_object_px}")
    scene_kwargs = dict(colors=color_set, shapes=shape_set, background_kinds=background_set,
                        max_count=max_count, max_groups=max_groups, max_objects=max_objects,
                        min_object_px=min_object_px)
    if not 0.0 <= prompt_mix <= 1.0:
        raise UsageError(f"--prompt_mix must be in [0, 1], got {prompt_mix}")
    if prompt_mix and kind != "scenes":
        raise UsageError(f"--prompt_mix applies to kind=scenes only, got kind={kind!r}")
    if holdout and kind in ("scenes", "edits", "subject", "videos") and \
            all((c, s) in HELD_OUT_ITEMS for c in color_set for s in shape_set):
        raise UsageError(f"every (colour, shape) of --colors {list(color_set)} x --shapes {list(shape_set)} is held "
                         f"out of training (shapes/split.py); add colours/shapes or pass --holdout false")
    mix_lines = geneval_prompts(seed + 1, shape_set, color_set) if prompt_mix else []
    if holdout:
        mix_lines = [m for m in mix_lines if split_of(m) == "seen"]
    scene_sampler = sample_training_scene if holdout else sample_scene
    mix_scene = training_scene_for_prompt if holdout else scene_for_prompt
    split_kwargs = {"allowed_group": group_allowed} if holdout else {}

    def split_resample(make: Callable[[], Any], scenes_of: Callable[[Any], list[Scene]], what: str) -> Any:
        return resample(make, scenes_of, what=what) if holdout else make()
    prompt_lines: list[dict] = []
    if kind == "geneval":
        if prompts is not None:
            if not Path(prompts).is_file():
                raise UsageError(f"prompt file {prompts} not found; pass a GenEval-format .jsonl or leave --prompts unset")
            prompt_lines = load_prompts(prompts)
        elif colors is not None or shapes is not None:
            prompt_lines = geneval_prompts(seed, shape_set, color_set)
        else:
            prompt_lines = load_prompts(DEFAULT_PROMPTS_PATH)

    def canvas(rng: np.random.Generator) -> tuple[int, int]:
        return canvases[int(rng.integers(len(canvases)))] if len(canvases) > 1 else canvases[0]

    def scene_fields(scene: Scene, rng: np.random.Generator, w: int, h: int) -> dict[str, Any]:
        rendered = render(scene, w, h)
        texts = captions(scene, rng, w, h)
        # "caption" is the training text the raw datamodule reads first: short and dense
        # captions half of the time each, so a model learns both styles (kinds below override).
        caption = texts["dense"] if rng.random() < 0.5 else texts["short"]
        return {"png": rendered.image, "cls.png": rendered.class_map, "col.png": rendered.color_map,
                "ins.png": rendered.instance_map,
                "json": {"kind": kind, "width": w, "height": h, "scene": scene.to_dict(),
                         "captions": texts, "caption": caption}}

    def prompt_sample(meta: dict, rng: np.random.Generator, w: int, h: int, scene_maker: Callable = scene_for_prompt,
                      **layout: Any) -> dict[str, Any]:
        """A scene realising a GenEval-format prompt line, captioned with the prompt."""
        sample = scene_fields(scene_maker(meta, rng, w, h, **layout), rng, w, h)
        sample["json"].update(prompt=meta["prompt"], caption=meta["prompt"], geneval=meta)
        return sample

    def make_scene(i: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, i])
        w, h = canvas(rng)
        if mix_lines and rng.random() < prompt_mix:
            return prompt_sample(mix_lines[int(rng.integers(len(mix_lines)))], rng, w, h, mix_scene,
                                 min_object_px=min_object_px)
        return scene_fields(scene_sampler(rng, w, h, **scene_kwargs), rng, w, h)

    def make_geneval(i: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, i])
        w, h = canvas(rng)
        sample = prompt_sample(prompt_lines[i % len(prompt_lines)], rng, w, h)
        sample["json"]["prompt_index"] = i % len(prompt_lines)
        return sample

    def dpg_parts(i: int) -> tuple[Scene, dict[str, Any], np.random.Generator, int, int]:
        rng = np.random.default_rng([seed, i])
        w, h = canvas(rng)
        scene = sample_scene(rng, w, h, **{**scene_kwargs, "max_groups": max(max_groups, 4)})
        return scene, dpg_item(scene, rng, w, h), rng, w, h

    def make_dpg(i: int) -> dict[str, Any]:
        scene, item, rng, w, h = dpg_parts(i)
        sample = scene_fields(scene, rng, w, h)
        sample["json"].update(item_id=f"shapes_{i:05d}", prompt=item["prompt"], caption=item["prompt"],
                              questions=item["questions"])
        return sample

    def make_edit_sample(i: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, i])
        w, h = canvas(rng)
        pair = split_resample(lambda: sample_edit(rng, w, h, kinds=edit_set, **scene_kwargs, **split_kwargs),
                              lambda p: [p.source, p.target], "edit pair")
        return {"src.png": render(pair.source, w, h).image, "tgt.png": render(pair.target, w, h).image,
                "json": {"kind": kind, "width": w, "height": h, **pair.to_dict(),
                         "source_captions": captions(pair.source, rng, w, h),
                         "target_captions": captions(pair.target, rng, w, h)}}

    def make_subject(i: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, i])
        w, h = canvas(rng)
        pair = split_resample(lambda: sample_subject_pair(rng, w, h, **scene_kwargs, **split_kwargs),
                              lambda p: [p.source, p.target], "subject pair")
        return {"src.png": render(pair.source, w, h).image, "tgt.png": render(pair.target, w, h).image,
                "json": {"kind": kind, "width": w, "height": h, **pair.to_dict()}}

    def make_video_sample(i: int) -> dict[str, Any]:
        rng = np.random.default_rng([seed, i])
        w, h = canvas(rng)
        video = split_resample(lambda: make_video(rng, num_frames, w, h), lambda v: list(v.frames), "video")
        sample: dict[str, Any] = {f"f{t:03d}.png": render(f, w, h).image for t, f in enumerate(video.frames)}
        sample["json"] = {"kind": kind, "width": w, "height": h, "num_frames": num_frames, **video.to_dict()}
        return sample

    makers: dict[str, Callable[[int], dict[str, Any]]] = {
        "scenes": make_scene, "geneval": make_geneval, "dpg": make_dpg, "edits": make_edit_sample,
        "subject": make_subject, "videos": make_video_sample}
    if kind not in makers:
        raise UsageError(f"unknown kind {kind!r}; choose one of: {', '.join(makers)}")
    from datamodules.shards import write_shards

    stats = write_shards(makers[kind], num_samples, out, samples_per_shard=samples_per_shard,
                         description=f"world {kind}", metadata={"kind": kind, "seed": seed, "width": width,
                                                                "height": height, "aspect_ratios": aspect_ratios,
                                                                "min_object_px": min_object_px,
                                                                "prompt_mix": prompt_mix, "holdout": holdout})
    result: dict[str, Any] = {}
    if kind == "scenes":
        result["eval_overlap"] = record_eval_overlap(out)
        overlap = result["eval_overlap"]
        print(f"evaluation prompts whose text appears among the written captions: {overlap['in_captions']} "
              f"of {overlap['prompts']} ({overlap['unseen_in_captions']} of the {overlap['unseen_by_rule']} "
              f"held-out ones)")
    if kind == "geneval":
        write_prompts(prompt_lines, Path(out) / "evaluation_metadata.jsonl")
    if kind == "dpg":
        items = []
        for i in range(num_samples):
            scene, item, *_ = dpg_parts(i)
            items.append({"item_id": f"shapes_{i:05d}", **item, "scene": scene.to_dict()})
        write_dpg_csv(items, Path(out) / "dpg_questions.csv")
    print(stats.summary())
    return {"out": str(out), "kind": kind, "samples_written": stats.samples_written,
            "shards_written": stats.shards_written, "shards_skipped": stats.shards_skipped, **result}


def record_eval_overlap(shard_dir: str | Path, prompts: str | Path = DEFAULT_PROMPTS_PATH) -> dict[str, Any]:
    """How many evaluation prompt lines' texts appear word for word among a shard directory's
    caption texts; recorded under metadata.eval_overlap of its index.json and returned."""
    import json

    from evaluation.geneval import caption_texts, prompt_overlap

    overlap = prompt_overlap(load_prompts(prompts), caption_texts([shard_dir]))
    index_path = Path(shard_dir) / "index.json"
    index = json.loads(index_path.read_text())
    index.setdefault("metadata", {})["eval_overlap"] = overlap
    index_path.write_text(json.dumps(index, indent=1, sort_keys=True))
    return overlap


def write_caption_grid(shard_dir: str | Path, out_png: str | Path, num: int = 16) -> Path:
    """Preview of a raw shard directory: the first `num` images with their short captions."""
    import json

    import webdataset as wds

    from datamodules.shards import decode_png, shard_urls
    from evaluation.grids import image_grid

    images, captions = [], []
    for sample in wds.WebDataset(shard_urls(shard_dir), shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"]) if "json" in sample else {}
        images.append(decode_png(sample["png"]))
        captions.append((meta.get("captions") or {}).get("short") or meta.get("prompt", ""))
        if len(images) == num:
            break
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, captions=captions, cell=128).save(out)
    return out
