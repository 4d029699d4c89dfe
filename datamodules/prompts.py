"""PromptDataModule: training prompts for RL (modules/rl GRPOModule), batches of metadata dicts.

Training prompts come from the world's generators with *training* seeds, minus every prompt of the
evaluation sets (`exclude_prompts`: the GenEval file the suite scores by default, plus any paths or
prompt strings given), deduplicated by text:
  - GenEval-format lines {tag, include, [exclude], prompt} (shapes.prompts.geneval_prompts(seed));
  - DPG items {item_id, prompt, questions} (shapes.dpg.dpg_items), minus the suite's DPG items
    (seed `eval_dpg_seed`, the first `eval_dpg_items`).
Validation: a spread of the evaluation GenEval file (held-out prompts: val/reward measures them).
DDP-safe: map-style datasets, so Lightning's DistributedSampler splits prompts across ranks with
equal batch counts (`drop_last` keeps every rank's step count equal).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from shapes.prompts import DEFAULT_PROMPTS_PATH


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


class PromptDataModule(pl.LightningDataModule):
    """Args:
        geneval_seeds: seeds of shapes.prompts.geneval_prompts to draw training lines from (the
            evaluation file is seed 0's draw; its prompts are excluded anyway).
        dpg_items / dpg_seed: number and seed of DPG training items (0: none); dpg_scene_size: the
            canvas their scenes are laid out on (the evaluation's image size).
        exclude_prompts: prompt files (jsonl/csv/txt) or prompt strings never trained on.
        eval_dpg_seed / eval_dpg_items: the suite's DPG items, excluded from training.
        val_prompts: held-out GenEval prompts for the validation loop (0: no validation).
        batch_size: prompts per step (each sampled group_size times by the module).
    """

    def __init__(self, geneval_seeds: Sequence[int] = (1, 2, 3, 4), dpg_items: int = 0, dpg_seed: int = 1,
                 dpg_scene_size: int = 64, exclude_prompts: Sequence[str] | None = (str(DEFAULT_PROMPTS_PATH),),
                 eval_dpg_seed: int = 0, eval_dpg_items: int = 64, val_prompts: int = 8,
                 val_file: str = str(DEFAULT_PROMPTS_PATH), batch_size: int = 4, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.train_set: list[dict] = []
        self.val_set: list[dict] = []

    def build_train_set(self) -> list[dict]:
        from shapes.dpg import dpg_items
        from shapes.prompts import geneval_prompts

        hp = self.hparams
        banned = excluded_texts(list(hp.exclude_prompts or ()))
        out, seen = [], set()
        for seed in hp.geneval_seeds:
            for line in geneval_prompts(seed=int(seed)):
                if line["prompt"] not in banned and line["prompt"] not in seen:
                    seen.add(line["prompt"])
                    out.append(line)
        if hp.dpg_items:
            if hp.dpg_seed == hp.eval_dpg_seed:
                raise ValueError(f"dpg_seed {hp.dpg_seed} is the evaluation DPG seed; choose another training seed")
            banned |= {it["prompt"] for it in dpg_items(hp.eval_dpg_items, seed=hp.eval_dpg_seed, width=hp.dpg_scene_size,
                                                        height=hp.dpg_scene_size)}
            for it in dpg_items(hp.dpg_items, seed=hp.dpg_seed, width=hp.dpg_scene_size, height=hp.dpg_scene_size):
                if it["prompt"] not in banned and it["prompt"] not in seen:
                    seen.add(it["prompt"])
                    out.append({k: it[k] for k in ("item_id", "prompt", "questions")})
        if not out:
            raise ValueError("no training prompts left after excluding the evaluation prompts; add geneval_seeds "
                             "or dpg_items")
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
