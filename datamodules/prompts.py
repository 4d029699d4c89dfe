"""PromptDataModule: training prompts for RL (modules/rl GRPOModule), batches of metadata dicts.

Training prompts come from the training side of the world's split (shapes/split.py) and never
repeat an evaluation prompt's text:
  - GenEval-format lines {tag, include, [exclude], prompt} of every task (single_object,
    two_object, counting, colors, position, color_attr): every combination the split allows
    (no held-out shape pair, colour-shape item or shape count; `held_out_reasons` empty), each in
    the phrasings of the world's short captions (shapes.captions.SHORT_TEMPLATES without the
    background one: "a photo of X", "X", "an image with X", "a picture showing X"), minus the
    texts of the evaluation prompt files (`exclude_prompts`). The evaluation file states its
    seen combinations as "a photo of X", so those combinations are trained in the other
    phrasings only. `geneval_per_tag` lines per task are drawn from that pool (seeded, balanced
    over combinations), so every task weighs the same whatever its pool size;
  - DPG items {item_id, prompt, questions} over training scenes only (groups drawn among the
    allowed ones, scenes showing a held-out count dropped), minus the suite's DPG items (seed
    `eval_dpg_seed`, the first `eval_dpg_items`).
Validation: a spread of the evaluation GenEval file (val/reward measures the evaluation prompts).
DDP-safe: the set is a pure function of the arguments (every rank builds the same list in the same
order); map-style datasets, so Lightning's DistributedSampler splits prompts across ranks with
equal batch counts (`drop_last` keeps every rank's step count equal).
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
import numpy as np
from torch.utils.data import DataLoader

from shapes.prompts import DEFAULT_PROMPTS_PATH

TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
# shapes.captions.SHORT_TEMPLATES minus "{objects} on {background}" (a GenEval line states no background)
PHRASINGS = ("a photo of {}", "{}", "an image with {}", "a picture showing {}")


def read_prompt_texts(source: str | Path) -> set[str]:
    """Prompt texts of a GenEval jsonl (its "prompt" fields), a DPG csv ("text" column) or a plain
    text file (one prompt a line)."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"exclude_prompts: {path} not found; give a jsonl/csv/txt prompt file or the "
                                "prompts themselves")
    if path.suffix == ".csv":
        import csv

        with path.open(newline="") as f:
            return {row["text"] for row in csv.DictReader(f)}
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return {json.loads(ln)["prompt"] if ln.lstrip().startswith("{") else ln.strip() for ln in lines}


def excluded_texts(exclude: Sequence[str] | None) -> set[str]:
    out: set[str] = set()
    for item in exclude or ():
        looks_like_path = Path(item).suffix in (".jsonl", ".json", ".csv", ".txt") or "/" in item
        out |= read_prompt_texts(item) if looks_like_path else {item}
    return out


def geneval_training_pool(tag: str, phrasings: Sequence[str] = PHRASINGS) -> list[dict]:
    """Every GenEval-format line of `tag` the split allows for training, in every phrasing, in a
    fixed order (line format and clause order as shapes.prompts.geneval_prompts)."""
    from shapes.captions import noun_phrase
    from shapes.geometry import RELATIONS
    from shapes.palette import COLOR_NAMES, SHAPES
    from shapes.prompts import COUNTING_NUMBERS
    from shapes.split import held_out_reasons

    pairs = list(itertools.permutations(SHAPES, 2))
    combos: list[tuple[list[dict], str, list[dict] | None]] = []   # (include, objects text, exclude)
    if tag == "single_object":
        combos = [([{"class": s, "count": 1}], noun_phrase(1, None, s), None) for s in SHAPES]
    elif tag == "two_object":
        combos = [([{"class": a, "count": 1}, {"class": b, "count": 1}],
                   f"{noun_phrase(1, None, a)} and {noun_phrase(1, None, b)}", None) for a, b in pairs]
    elif tag == "counting":
        combos = [([{"class": s, "count": n}], noun_phrase(n, None, s), [{"class": s, "count": n + 1}])
                  for s in SHAPES for n in COUNTING_NUMBERS]
    elif tag == "colors":
        combos = [([{"class": s, "count": 1, "color": c}], noun_phrase(1, c, s), None)
                  for s in SHAPES for c in COLOR_NAMES]
    elif tag == "position":   # include[0] is the reference, include[1] "<rel> include[0]" (official order)
        combos = [([{"class": ref, "count": 1}, {"class": obj, "count": 1, "position": [rel, 0]}],
                   f"{noun_phrase(1, None, obj)} {rel} {noun_phrase(1, None, ref)}", None)
                  for (obj, ref) in pairs for rel in RELATIONS]
    elif tag == "color_attr":
        combos = [([{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                   f"{noun_phrase(1, ca, a)} and {noun_phrase(1, cb, b)}", None)
                  for a, b in pairs for ca, cb in itertools.permutations(COLOR_NAMES, 2)]
    else:
        raise ValueError(f"unknown GenEval task {tag!r}; choose from {', '.join(TASKS)}")
    out = []
    for include, objects, exclude in combos:
        if held_out_reasons({"include": include}):
            continue
        for phrasing in phrasings:
            line: dict = {"tag": tag, "include": include}
            if exclude is not None:
                line["exclude"] = exclude
            line["prompt"] = phrasing.format(objects)
            out.append(line)
    return out


def geneval_training_prompts(per_tag: int, seed: int = 0, banned: set[str] | frozenset[str] = frozenset(),
                             tasks: Sequence[str] = TASKS) -> list[dict]:
    """min(per_tag, pool size) distinct lines of each task from its training pool minus the `banned`
    texts, drawn with `seed` (a seeded permutation of the pool)."""
    rng = np.random.default_rng(seed)
    out = []
    for tag in tasks:
        pool = [line for line in geneval_training_pool(tag) if line["prompt"] not in banned]
        if not pool:
            raise ValueError(f"no training prompts of task {tag!r} are left after excluding the evaluation prompts")
        out += [pool[i] for i in rng.permutation(len(pool))[:per_tag]]
    return out


def dpg_training_items(num: int, seed: int, width: int, height: int, banned: set[str] | frozenset[str] = frozenset(),
                       max_tries: int = 50) -> list[dict]:
    """`num` DPG items {item_id, prompt, questions} over training scenes: shapes.dpg's item for a
    scene drawn among the allowed groups (shapes.split.group_allowed), items whose scene still shows
    a held-out combination (a count) or whose text is `banned` skipped; item i tries rng([seed, i, t])."""
    from shapes.dpg import dpg_item
    from shapes.scene import sample_scene
    from shapes.split import group_allowed, scene_held_out

    out = []
    for i in range(num):
        for t in range(max_tries):
            rng = np.random.default_rng([seed, i, t])
            scene = sample_scene(rng, width, height, max_groups=4, allowed_group=group_allowed)
            if scene_held_out(scene):
                continue
            item = dpg_item(scene, rng, width, height)
            if item["prompt"] not in banned:
                out.append({"item_id": f"train_{seed}_{i:05d}", "prompt": item["prompt"],
                            "questions": item["questions"], "scene": scene.to_dict()})
                break
    return out


class PromptDataModule(pl.LightningDataModule):
    """Args:
        geneval_per_tag: training GenEval-format lines per task (six tasks); geneval_seed draws them.
        dpg_items / dpg_seed: number and seed of DPG training items (0: none); dpg_scene_size: the
            canvas their scenes are laid out on (the evaluation's image size).
        exclude_prompts: prompt files (jsonl/csv/txt) or prompt strings never trained on.
        eval_dpg_seed / eval_dpg_items: the suite's DPG items, excluded from training.
        val_prompts: evaluation GenEval prompts for the validation loop (0: no validation).
        batch_size: prompts per step (each sampled group_size times by the module).
    """

    def __init__(self, geneval_per_tag: int = 64, geneval_seed: int = 1, dpg_items: int = 0, dpg_seed: int = 1,
                 dpg_scene_size: int = 64, exclude_prompts: Sequence[str] | None = (str(DEFAULT_PROMPTS_PATH),),
                 eval_dpg_seed: int = 0, eval_dpg_items: int = 64, val_prompts: int = 8,
                 val_file: str = str(DEFAULT_PROMPTS_PATH), batch_size: int = 4, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []

    def build_train_set(self) -> list[dict]:
        from shapes.dpg import dpg_items

        hp = self.hparams
        banned = excluded_texts(list(hp.exclude_prompts or ()))
        out = geneval_training_prompts(int(hp.geneval_per_tag), int(hp.geneval_seed), banned) \
            if hp.geneval_per_tag else []
        if hp.dpg_items:
            if hp.dpg_seed == hp.eval_dpg_seed:
                raise ValueError(f"dpg_seed {hp.dpg_seed} is the evaluation DPG seed; choose another training seed")
            banned |= {it["prompt"] for it in dpg_items(hp.eval_dpg_items, seed=hp.eval_dpg_seed, width=hp.dpg_scene_size,
                                                        height=hp.dpg_scene_size)}
            seen = {m["prompt"] for m in out}
            out += [{k: it[k] for k in ("item_id", "prompt", "questions")}
                    for it in dpg_training_items(hp.dpg_items, hp.dpg_seed, hp.dpg_scene_size, hp.dpg_scene_size,
                                                 banned | seen)]
        if not out:
            raise ValueError("no training prompts: set geneval_per_tag or dpg_items above 0")
        return out

    def setup(self, stage: str | None = None) -> None:
        if not self.train_set:
            self.train_set = self.build_train_set()
        if not self.val_set and self.hparams.val_prompts:
            from shapes.prompts import load_prompts

            lines = load_prompts(self.hparams.val_file)
            stride = max(1, len(lines) // self.hparams.val_prompts)
            self.val_set = lines[::stride][: self.hparams.val_prompts]

    def train_dataloader(self) -> DataLoader:
        # a list is a map-style dataset: under DDP Lightning swaps in a DistributedSampler
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, drop_last=True,
                          collate_fn=list, num_workers=self.hparams.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=list,
                          num_workers=self.hparams.num_workers)
