"""`python main.py quickstart`: the main job on the built-in Shapes world, end to end.

Each stage writes into its own folder under `--out` and finishes by writing `DONE.json`
(what it produced, how long it took); a second run reuses every finished stage, so an
interrupted quickstart resumes where it stopped. Training stages run the same
`python main.py fit --config ...` commands a user would type.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    """How big each stage is. `default` fits the CPU budget; `toy` is for the end-to-end test."""

    train_scenes: int
    val_scenes: int
    resolution: int
    geneval_images_per_prompt: int
    geneval_prompts: int | None  # None = all 553

    @classmethod
    def named(cls, name: str) -> "Sizes":
        if name == "default":
            return cls(train_scenes=4000, val_scenes=256, resolution=64, geneval_images_per_prompt=4, geneval_prompts=None)
        if name == "toy":
            return cls(train_scenes=64, val_scenes=16, resolution=64, geneval_images_per_prompt=1, geneval_prompts=24)
        from commands import UsageError

        raise UsageError(f"unknown quickstart size {name!r}; choose 'default' or 'toy'")


def _done_file(stage_dir: Path) -> Path:
    return stage_dir / "DONE.json"


def run_stage(name: str, out: Path, body: Callable[[Path], dict[str, Any]], log: list[dict]) -> dict[str, Any]:
    """Run `body(stage_dir)` unless the stage finished before; record the result either way."""
    from rich.console import Console

    console = Console()
    stage_dir = out / name
    done = _done_file(stage_dir)
    if done.exists():
        result = json.loads(done.read_text())
        console.print(f"[dim]✓ {name}: reusing {stage_dir} (finished earlier)[/dim]")
    else:
        console.rule(f"[bold]{name}")
        stage_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        result = body(stage_dir)
        result["seconds"] = round(time.perf_counter() - start, 1)
        done.write_text(json.dumps(result, indent=1))
        console.print(f"[green]✓ {name}[/green] in {result['seconds']} s")
    log.append({"stage": name, **result})
    return result


def run_main(*args: str) -> None:
    """Run `python main.py <args>` as a subprocess, streaming its output; fail loudly."""
    cmd = [sys.executable, str(ROOT / "main.py"), *args]
    print("$ " + " ".join(cmd[1:]), flush=True)
    completed = subprocess.run(cmd, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"quickstart step failed (exit {completed.returncode}): {' '.join(cmd[1:])}")


# ----------------------------------------------------------------------------- stages
def stage_world(sizes: Sizes) -> Callable[[Path], dict[str, Any]]:
    def body(stage_dir: Path) -> dict[str, Any]:
        from commands.world import run as world

        r = sizes.resolution
        # Training scenes in several aspect ratios (buckets), square validation scenes.
        world(kind="scenes", out=str(stage_dir / "train"), num_samples=sizes.train_scenes, width=r, height=r,
              aspect_ratios=[0.5, 1.0, 2.0], seed=0, samples_per_shard=500)
        world(kind="scenes", out=str(stage_dir / "val"), num_samples=sizes.val_scenes, width=r, height=r,
              seed=10_000, samples_per_shard=500)
        return {"train": str(stage_dir / "train"), "val": str(stage_dir / "val")}

    return body


def stage_preview(world_dir: Path) -> Callable[[Path], dict[str, Any]]:
    def body(stage_dir: Path) -> dict[str, Any]:
        from evaluation.grids import write_caption_grid

        path = write_caption_grid(world_dir / "val", stage_dir / "preview.png", num=16)
        return {"preview": str(path)}

    return body


def stage_geneval_ground_truth(sizes: Sizes) -> Callable[[Path], dict[str, Any]]:
    """The scorer's sanity check: the world's own renders of the default prompts must score
    near 1 with the oracle detector."""

    def body(stage_dir: Path) -> dict[str, Any]:
        from evaluation.geneval import render_ground_truth_layout, score_geneval

        layout = render_ground_truth_layout(stage_dir / "images", images_per_prompt=sizes.geneval_images_per_prompt,
                                            limit=sizes.geneval_prompts, size=sizes.resolution * 2)
        summary = score_geneval(layout)
        return {"layout": str(layout), "overall": summary["overall"], "per_task": summary["per_task"]}

    return body


def run(out: str = "runs/quickstart", size: str = "default") -> dict[str, Any]:
    """Run the main job on the Shapes world: data, preview, GenEval sanity check (resumable).

    Args:
        out: folder for every stage's outputs; rerunning reuses finished stages.
        size: `default` (the CPU budget) or `toy` (seconds; for tests).
    """
    from rich.console import Console
    from rich.table import Table

    sizes = Sizes.named(size)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    world = run_stage("world", out_dir, stage_world(sizes), log)
    preview = run_stage("preview", out_dir, stage_preview(Path(world["train"]).parent), log)
    geneval = run_stage("geneval_ground_truth", out_dir, stage_geneval_ground_truth(sizes), log)

    (out_dir / "quickstart.json").write_text(json.dumps(log, indent=1))
    table = Table(title="quickstart: where everything went", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("where / score")
    table.add_row("training scenes (shards)", world["train"])
    table.add_row("validation scenes (shards)", world["val"])
    table.add_row("preview grid", preview["preview"])
    table.add_row("GenEval layout (ground-truth renders)", geneval["layout"])
    table.add_row("GenEval overall, oracle detector", f"{geneval['overall']:.3f}")
    for task, score in geneval["per_task"].items():
        table.add_row(f"  {task}", f"{score:.3f}")
    table.add_row("stage log", str(out_dir / "quickstart.json"))
    Console().print(table)
    return {"stages": log}
