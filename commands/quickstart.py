"""`python main.py quickstart`: the main job on the built-in Shapes world, end to end.

Each stage writes into its own folder under `--out` and finishes by writing `DONE.json`
(what it produced, how long it took); a second run reuses every finished stage, so an
interrupted quickstart resumes where it stopped. Training stages run the same
`python main.py fit --config ...` commands a user would type.
"""
from __future__ import annotations

import dataclasses

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Sizes:
    """How big each stage is. `default` fits the CPU budget (about 30 min on 2 cores);
    `toy` runs every stage for a few steps (the end-to-end test)."""

    train_scenes: int  # the tokenizer's 64 px training scenes
    ar_scenes: int  # the AR model's 64 px training scenes (square, part of them GenEval-template prompts)
    val_scenes: int
    geneval_images_per_prompt: int
    geneval_prompts: int | None  # None = all 553
    train128_scenes: int  # 128 px scenes: tokenizer stage-3 crops and the AR model's 128 px shards
    tokenizer_steps: tuple[int, int, int] | None  # None: the stage configs' own max_steps
    tokenizer_scale_drop: float  # ScaleDropping rate in stages 1-2 (the configs' own: NF's 0.5)
    ar_steps: int
    ar_minutes: int  # wall-clock guard on AR training (Trainer max_time)
    ar_switch_step: int | None  # curriculum: 64 px until here, then 128 px (None: 64 px throughout)
    ar_batches_per_epoch: int
    suite: dict  # evaluation.suite.SuiteConfig fields for validate
    ar_alpha: float = 0.9  # NF's scale-aware loss reweighting (0 = uniform over tokens)
    # the AR learning rate after warm-up: "constant" or "cosine", decayed over whichever of steps and
    # time ends the fit first (modules/common/lr_schedule.py)
    ar_lr_schedule: str = "constant"
    # ARConfig overrides of the shapes-small preset: a smaller model sees more samples in the CPU
    # budget (the README has the comparison); None keeps the preset
    ar_model: dict | None = None
    # trainer.precision of the AR fit and of the tokenizer stages; "auto": bf16-mixed where bf16
    # matmuls are native (a CPU with AVX512-BF16/AMX, a CUDA GPU), else 32-true
    # (modules/common/devices.py; README, "Where it stands", has the measurement)
    ar_precision: str = "32-true"
    tokenizer_precision: str = "32-true"
    # the whole quickstart's wall clock (None: no budget): the training fits share what the other
    # stages leave of it (`Budget`), so on a slow CPU they stop on time instead of on steps, and the
    # record says where each stopped
    budget_minutes: float | None = None
    prompt_mix: float = 0.5  # fraction of the AR model's 64 px scenes that realise GenEval-template prompts
    min_object_px: int = 24  # smallest object side in the 64 px scenes (3 tokens of the patch-8 tokenizer)
    # prefix-tuning GRPO after the AR stage (configs/experiment/rl_shapes_grpo.yaml): optimizer steps
    # and a wall-clock guard; prompts per step x group size images per rollout batch
    rl_steps: int = 60  # optimizer steps (2 per rollout batch: the config's inner_steps)
    rl_minutes: float = 6.0
    rl_prompts_per_step: int = 4
    rl_group_size: int = 4
    # GRPOModule init_args over the experiment config's (README: the RL settings measured)
    rl_overrides: dict | None = field(default_factory=lambda: {"lr": 3e-5})
    # the unified recipe (stage_unified): AR steps on the task mixture (0 = stage off) and edit /
    # video samples of each kind written for it
    unified_steps: int = 0
    unified_samples: int = 600
    # issue 14: {"steps", "minutes", "images"} per refiner fit / bench; steps 0 = stage off (a skipped
    # record; `quickstart --refiner_steps N` turns it on)
    refiner: dict | None = None

    @classmethod
    def named(cls, name: str) -> "Sizes":
        if name == "default":
            return cls(train_scenes=3000, ar_scenes=6000, val_scenes=256, train128_scenes=1500,
                       geneval_images_per_prompt=1,
                       # the tokenizer stages' own 900/1000/1200 steps: shortened to fit the refiner,
                       # the tokenizer loses agreement and PSNR (README), so the refiner is off by
                       # default (`--refiner_steps 2000` runs it: two fits capped at 5 minutes each,
                       # then its bench)
                       # AR steps: more than any 2-core CPU measured fits, so the budget's share ends
                       # the fit (README, "quickstart, end to end"); its 6,000 scenes keep a run of
                       # several thousand steps from revisiting each scene a dozen times
                       geneval_prompts=None, tokenizer_steps=None, ar_steps=8000, ar_minutes=15,
                       rl_steps=24, rl_minutes=2.5,
                       refiner={"steps": 0, "minutes": 5, "images": 256},
                       ar_model={"n_layer": 4, "n_embd": 192, "n_head": 6, "n_query_groups": 2,
                                 "intermediate_size": 512},
                       # no scale dropping in stages 1-2 (the stage configs keep NF's 0.5; the README, quickstart
                       # step 3, has the measurement behind this choice)
                       tokenizer_scale_drop=0.0,
                       # uniform token weights, not NF's alpha 0.9: on this 8-scale 64 px schedule
                       # alpha 0.9 leaves the 8x8 scale, which draws the outlines, 14 % of the vision
                       # loss and learns it slower (README, "What the finest scale needs")
                       ar_alpha=0.0,
                       # decayed to the end of the budget's share: a lower validation NLL than a
                       # constant rate at equal time (README, "Where it stands")
                       ar_lr_schedule="cosine",
                       ar_precision="auto", tokenizer_precision="auto",
                       # one resolution, 64 px, trained and scored: the budget allows no useful
                       # 128 px phase (README)
                       ar_switch_step=None,
                       ar_batches_per_epoch=40,
                       # 30 minutes on 2 cores with a margin, on CPUs slower than the one whose
                       # step counts these are (README, "quickstart, end to end")
                       budget_minutes=28.0,
                       # scored at 64 px, the resolution the AR model trains at (its scale embeddings
                       # and scale counts are the trained ones); objects are min_object_px wide there
                       suite={"geneval_limit": 96, "images_per_prompt": 2, "dpg_prompts": 8,
                              "editcanvas_per_task": 1, "understanding_scenes": 8, "width": 64, "height": 64,
                              "min_object_px": 24})
        if name == "toy":
            return cls(train_scenes=96, ar_scenes=96, val_scenes=64, train128_scenes=16, geneval_images_per_prompt=1,
                       geneval_prompts=24, tokenizer_steps=(3, 2, 2), tokenizer_scale_drop=0.5, ar_steps=6,
                       ar_minutes=5, ar_switch_step=4,
                       ar_batches_per_epoch=2, unified_steps=2, unified_samples=6,
                       refiner={"steps": 2, "minutes": 2, "images": 8},
                       suite={"geneval_limit": 6, "images_per_prompt": 1, "dpg_prompts": 2,
                              "editcanvas_per_task": 1, "understanding_scenes": 1},
                       rl_steps=2, rl_minutes=5.0, rl_prompts_per_step=2, rl_group_size=2, ar_precision="auto",
                       tokenizer_precision="auto")
        from commands import UsageError

        raise UsageError(f"unknown quickstart size {name!r}; choose 'default' or 'toy'")


def _done_file(stage_dir: Path) -> Path:
    return stage_dir / "DONE.json"


def read_done(stage_dir: Path) -> dict[str, Any] | None:
    """The stage's recorded result, or None when it has not finished: no DONE.json, or one that is
    unreadable (a truncated write of an older version): the stage then runs again."""
    done = _done_file(stage_dir)
    if not done.is_file():
        return None
    try:
        result = json.loads(done.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as err:
        print(f"warning: {done} is unreadable ({type(err).__name__}); running stage {stage_dir.name} again",
              file=sys.stderr)
        return None
    if not isinstance(result, dict):
        print(f"warning: {done} does not hold a result object; running stage {stage_dir.name} again", file=sys.stderr)
        return None
    return result


def write_atomic(path: Path, text: str) -> None:
    """Write to a temp file in the same folder, then rename: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _clear_stage_temp(stage_dir: Path) -> None:
    """Temp files an interrupted run left: the children's TMPDIR (checkpoint writes go through a
    temp file there, see `run_main`) and an interrupted DONE.json write."""
    shutil.rmtree(stage_dir / STAGE_TMP, ignore_errors=True)
    (stage_dir / ".DONE.json.tmp").unlink(missing_ok=True)


STAGE_TMP = ".tmp"  # per-stage TMPDIR of the stage's child processes
_current_stage: list[Path] = []  # the stage folder run_main's children work for


def run_stage(name: str, out: Path, body: Callable[[Path], dict[str, Any]], log: list[dict]) -> dict[str, Any]:
    """Run `body(stage_dir)` unless the stage finished before; record the result either way
    (with "reused": True when it was not run again). DONE.json is written atomically; an
    unreadable one counts as "not finished", and a "skipped" record (a stage a setting turned
    off) is decided again, since this run's settings may turn it on."""
    from rich.console import Console

    console = Console()
    stage_dir = out / name
    result = read_done(stage_dir)
    if result is not None and "skipped" in result:
        result = None
    if result is not None:
        console.print(f"[dim]✓ {name}: reusing {stage_dir} (finished earlier)[/dim]")
        result = {**result, "reused": True}
    else:
        console.rule(f"[bold]{name}")
        stage_dir.mkdir(parents=True, exist_ok=True)
        _clear_stage_temp(stage_dir)
        start = time.perf_counter()
        _current_stage.append(stage_dir)
        try:
            result = body(stage_dir)
        finally:
            _current_stage.pop()
        result["seconds"] = round(time.perf_counter() - start, 1)
        write_atomic(_done_file(stage_dir), json.dumps(result, indent=1))
        _clear_stage_temp(stage_dir)
        console.print(f"[green]✓ {name}[/green] in {result['seconds']} s")
    log.append({"stage": name, **result})
    return result


def write_overlay(path: Path, overlay: dict[str, Any]) -> str:
    """A YAML config layered after the experiment's own (`--config base --config overlay`):
    the exact settings a stage ran with stay next to its outputs."""
    import yaml

    path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    return str(path)


_children: set[subprocess.Popen] = set()  # running children, killed when the quickstart ends


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the quickstart dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def kill_children(timeout: float = 10.0) -> None:
    """Terminate every running child (SIGTERM, then SIGKILL after `timeout` s)."""
    for child in list(_children):
        if child.poll() is None:
            child.terminate()
    for child in list(_children):
        try:
            child.wait(timeout)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        _children.discard(child)


def _resume_args(args: tuple[str, ...], stage_dir: Path | None) -> list[str]:
    """`fit` resumes from the stage's last.ckpt when an interrupted run left one."""
    last = stage_dir / "last.ckpt" if stage_dir is not None else None
    if args and args[0] == "fit" and "--ckpt_path" not in args and last is not None and last.is_file():
        print(f"resuming from {last}", flush=True)
        return ["--ckpt_path", str(last)]
    return []


def run_main(*args: str) -> None:
    """Run `python main.py <args>` as a subprocess, streaming its output; fail loudly. The child
    dies with the quickstart (and is killed when it exits or is signalled); its temp files go to
    the stage's own TMPDIR, cleared by `run_stage`; an interrupted `fit` resumes from last.ckpt."""
    stage_dir = _current_stage[-1] if _current_stage else None
    cmd = [sys.executable, str(ROOT / "main.py"), *args, *_resume_args(args, stage_dir)]
    env = dict(os.environ)
    if stage_dir is not None:
        (stage_dir / STAGE_TMP).mkdir(parents=True, exist_ok=True)
        env["TMPDIR"] = str(stage_dir / STAGE_TMP)
    print("$ " + " ".join(cmd[1:]), flush=True)
    child = subprocess.Popen(cmd, cwd=ROOT, env=env,
                             preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    _children.add(child)
    try:
        returncode = child.wait()
    finally:
        kill_children()
    if returncode != 0:  # its own error is printed above; finished stages stay reusable
        print(f"error: quickstart step failed (exit {returncode}): {' '.join(cmd[1:])}", file=sys.stderr)
        raise SystemExit(returncode)


class OutputLock:
    """One quickstart per output folder: an exclusive `flock` on <out>/.quickstart.lock, held
    while the quickstart runs and released by the kernel when it exits or is killed."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / ".quickstart.lock"
        self._file = None

    def __enter__(self) -> "OutputLock":
        import fcntl

        from commands import UsageError

        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise UsageError(f"another quickstart (pid {holder}) is running in {self.path.parent}; wait for it "
                             "to finish, stop it, or pass another --out") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()


def _on_signal(signum, frame) -> None:
    """SIGTERM / SIGHUP to the quickstart: stop its children too, then exit (128 + signal)."""
    kill_children()
    raise SystemExit(128 + signum)


# ----------------------------------------------------------------------------- wall-clock budget
# Each training stage's share of the training time, in the minutes it takes where its steps bind
# (README, "quickstart, end to end"); the AR fit's steps bind nowhere now, its 10 keep the split the
# slow CPU had (there the tokenizer stages are stopped by the clock too).
TRAINING_WEIGHTS = {"tokenizer_stage1": 3.0, "tokenizer_stage2": 3.0, "tokenizer_stage3": 3.0, "ar_fit": 10.0,
                    "rl": 1.5}
# Minutes each stage outside the training fits took on the slowest 2-core CPU measured (fp32, no
# AVX-512; README, "quickstart, end to end"): the budget holds back what the stages still to run
# will take, these minutes scaled by how fast the finished ones ran on this machine.
# world and pretokenize: measured with 3,000 AR scenes, scaled by what 6,000 cost on the CPU
# with AVX512-BF16 (README, "quickstart, end to end").
OTHER_STAGE_MINUTES = {"world": 3.2, "geneval_ground_truth": 0.3, "tokenizer_val128": 1.2, "pretokenize": 2.3,
                       "validate": 1.0, "validate_rl": 1.0, "validate_untrained": 1.1, "baselines": 0.3,
                       "report": 0.2}
MARGIN_MINUTES = 1.5  # process start-up, checkpoint writes, stages not in the table
MIN_STAGE_SECONDS = 60  # a stage always trains this long, even past the budget


@dataclass
class Budget:
    """The quickstart's wall clock: `minutes` in all, from when it starts. Before each training fit,
    `seconds_for` gives it its weight's share of the time left among itself and the fits after it,
    where the time left is the clock's remainder less a reserve for the other stages not yet run
    (`OTHER_STAGE_MINUTES` scaled by this machine's speed on the ones in `log`, the quickstart's
    stage records) and `MARGIN_MINUTES`; its own limit caps it. Where steps end a fit first (a fast
    CPU), the time it leaves goes to the later ones and nothing else changes; on a slower CPU every
    fit stops on time and records its steps. With `minutes` None only the fits' own limits apply."""

    minutes: float | None
    log: list[dict] = field(default_factory=list)
    started: float = field(default_factory=lambda: time.monotonic())

    def speed(self) -> float:
        """Seconds the finished other stages took here per second they took on the reference CPU
        (1 before any has run; reused stages, which took no time, do not count)."""
        ran = [row for row in self.log if row["stage"] in OTHER_STAGE_MINUTES and not row.get("reused")]
        reference = sum(OTHER_STAGE_MINUTES[row["stage"]] * 60 for row in ran)
        return min(2.0, max(0.25, sum(row.get("seconds", 0.0) for row in ran) / reference)) if reference else 1.0

    def reserve_seconds(self) -> float:
        """What the other stages not yet run will take on this machine, plus the margin."""
        done = {row["stage"] for row in self.log}
        todo = sum(m * 60 for name, m in OTHER_STAGE_MINUTES.items() if name not in done)
        return todo * self.speed() + MARGIN_MINUTES * 60

    def seconds_for(self, stage: str, own_limit_seconds: float | None = None) -> int | None:
        if self.minutes is None:
            return None if own_limit_seconds is None else int(own_limit_seconds)
        names = list(TRAINING_WEIGHTS)
        later = sum(TRAINING_WEIGHTS[n] for n in names[names.index(stage):])
        left = self.minutes * 60 - (time.monotonic() - self.started) - self.reserve_seconds()
        share = max(MIN_STAGE_SECONDS, left * TRAINING_WEIGHTS[stage] / later)
        return int(share if own_limit_seconds is None else min(share, own_limit_seconds))


def _last_logged_step(stage_dir: Path) -> dict[str, Any]:
    """The last step a training stage logged (within its log interval of where the budget stopped it)."""
    from modules.common.metrics_csv import last_metrics

    path = stage_dir / "metrics.csv"
    step = last_metrics(path).get("step") if path.is_file() else None
    return {} if step is None else {"last_logged_step": int(step)}


# ----------------------------------------------------------------------------- stages
EXPERIMENTS = ROOT / "configs" / "experiment"


def stage_world(sizes: Sizes) -> Callable[[Path], dict[str, Any]]:
    def body(stage_dir: Path) -> dict[str, Any]:
        from commands.world import run as world

        # Training scenes in three aspect ratios (buckets), square validation scenes; 64 px. Objects
        # are at least sizes.min_object_px (24 px: three 8-px tokens) so that the tokenizer keeps
        # their outlines and the AR model's coarse scales see them (24 px is the largest with which
        # every GenEval-template prompt, up to four objects, still lays out on 64x64). The
        # tokenizer trains on general scenes (like its validation set), its decoder also on 64 px
        # windows of the 128 px scenes (objects 4-6 tokens wide, as the AR model draws them); the AR
        # model's 64 px set has half its scenes realise GenEval-template prompts of another seed
        # (simple compositions a small AR model learns from in minutes). A shared, mixed set cost
        # the tokenizer's stage-2 agreement 0.64 -> 0.52.
        common = dict(samples_per_shard=500, size_multiple=8, min_object_px=sizes.min_object_px)
        big = {**common, "min_object_px": 32}
        world(kind="scenes", out=str(stage_dir / "train"), num_samples=sizes.train_scenes, width=64, height=64,
              aspect_ratios=[0.5, 1.0, 2.0], seed=0, **common)
        # square only: a left/right (above/below) prompt cannot place two objects of min_object_px
        # side by side on the 48 px side of a 48x88 canvas
        train_ar = world(kind="scenes", out=str(stage_dir / "train_ar"), num_samples=sizes.ar_scenes, width=64,
                         height=64, seed=1, prompt_mix=sizes.prompt_mix, **common)
        world(kind="scenes", out=str(stage_dir / "val"), num_samples=sizes.val_scenes, width=64, height=64,
              seed=777, **common)
        world(kind="scenes", out=str(stage_dir / "train128"), num_samples=sizes.train128_scenes, width=128,
              height=128, seed=2, **big)
        world(kind="scenes", out=str(stage_dir / "val128"), num_samples=sizes.val_scenes, width=128, height=128,
              seed=777, **big)
        return {**{name: str(stage_dir / name) for name in ("train", "train_ar", "val", "train128", "val128")},
                "eval_overlap": train_ar["eval_overlap"]}  # evaluation prompts among the AR captions

    return body


def stage_preview(world_dir: Path) -> Callable[[Path], dict[str, Any]]:
    def body(stage_dir: Path) -> dict[str, Any]:
        from commands.world import write_caption_grid

        path = write_caption_grid(world_dir / "val", stage_dir / "preview.png", num=16)
        return {"preview": str(path)}

    return body


def stage_geneval_ground_truth(sizes: Sizes) -> Callable[[Path], dict[str, Any]]:
    """The scorer's sanity check: the world's own renders of the default prompts must score
    near 1 with the oracle detector."""

    def body(stage_dir: Path) -> dict[str, Any]:
        from evaluation.geneval import render_ground_truth_layout, score_geneval

        layout = render_ground_truth_layout(stage_dir / "images", images_per_prompt=sizes.geneval_images_per_prompt,
                                            limit=sizes.geneval_prompts, size=sizes.suite.get("width", 64))
        results = score_geneval(layout)
        return {"layout": str(layout), "overall": results.overall, "per_task": results.task_scores}

    return body


def _precision(setting: str) -> str:
    """A Sizes precision: "auto" = bf16-mixed where bf16 is native on this machine, else 32-true."""
    from modules.common.devices import mixed_precision

    return mixed_precision() if setting == "auto" else setting


def _trainer_outputs(stage_dir: Path, callbacks: list[dict]) -> dict[str, Any]:
    """Trainer settings that send logs and the `last.ckpt` checkpoint into `stage_dir`."""
    return {"default_root_dir": str(stage_dir),
            "logger": {"class_path": "modules.common.loggers.AppendingCSVLogger",  # a resumed fit keeps its rows
                       "init_args": {"save_dir": str(stage_dir), "name": "", "version": ""}},
            "callbacks": [*callbacks, {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                       "init_args": {"dirpath": str(stage_dir), "save_last": True, "save_top_k": 0,
                                                     "enable_version_counter": False}}],
            "enable_progress_bar": False}


def stage_tokenizer(k: int, sizes: Sizes, world: dict, previous: str | None,
                    budget: Budget) -> Callable[[Path], dict[str, Any]]:
    """Tokenizer stage k of 3 (pixel branch; joint; 2x pixel decoder), from the previous stage.
    Stopped by the budget before its last step, it is validated afterwards (the configs validate
    at the last step only)."""

    def body(stage_dir: Path) -> dict[str, Any]:
        callbacks = [] if k == 3 else [{"class_path": "callbacks.scale_dropping.ScaleDropping",
                                        "init_args": {"drop_prob": sizes.tokenizer_scale_drop}}]
        # stage 3 (decoder only) also learns from 64 px windows of the 128 px scenes (its train_crop)
        train = [world["train"], world["train128"]] if k == 3 else world["train"]
        overlay = {"data": {"init_args": {"train_dir": train, "val_dir": world["val"]}},
                   "trainer": {**_trainer_outputs(stage_dir, callbacks),
                               "precision": _precision(sizes.tokenizer_precision)}}
        if sizes.tokenizer_steps is not None:
            steps = sizes.tokenizer_steps[k - 1]
            overlay["trainer"].update(max_steps=steps, val_check_interval=steps)
        seconds = budget.seconds_for(f"tokenizer_stage{k}")
        if seconds is not None:
            overlay["trainer"]["max_time"] = {"seconds": seconds}
        if previous is not None:
            overlay["model"] = {"init_args": {"init_ckpt": previous}}
        config = str(EXPERIMENTS / f"tokenizer_shapes_stage{k}.yaml")
        run_main("fit", "--config", config, "--config", write_overlay(stage_dir / "overlay.yaml", overlay))
        metrics = _last_val_metrics(stage_dir)
        if "val/agreement" not in metrics:  # stopped on time before the validation at its last step
            metrics = _validate_tokenizer(stage_dir, config, world["val"], str(stage_dir / "last.ckpt"))
        return {"checkpoint": str(stage_dir / "last.ckpt"), **metrics, **_last_logged_step(stage_dir),
                **({"budget_seconds": seconds} if seconds is not None else {})}

    return body


def stage_tokenizer_val128(world: dict, checkpoint: str) -> Callable[[Path], dict[str, Any]]:
    """The finished tokenizer's validation metrics on held-out 128 px scenes (objects at least
    32 px), next to its 64 px figures from stage 3."""

    def body(stage_dir: Path) -> dict[str, Any]:
        config = str(EXPERIMENTS / "tokenizer_shapes_stage3.yaml")
        return {"checkpoint": checkpoint, **_validate_tokenizer(stage_dir, config, world["val128"], checkpoint)}

    return body


def _validate_tokenizer(stage_dir: Path, config: str, val_dir: str, checkpoint: str) -> dict[str, float]:
    """`main.py validate` of a tokenizer checkpoint on `val_dir`; its val/* metrics (logged into stage_dir)."""
    overlay = {"data": {"init_args": {"train_dir": None, "val_dir": val_dir}},
               "model": {"init_args": {"init_ckpt": None}},  # all weights come from --ckpt_path
               "trainer": _trainer_outputs(stage_dir, [])}
    run_main("validate", "--config", config, "--config", write_overlay(stage_dir / "validate.yaml", overlay),
             "--ckpt_path", checkpoint)
    return _last_val_metrics(stage_dir)


def _last_val_metrics(stage_dir: Path) -> dict[str, float]:
    """The last logged value of every val/* column of the stage's CSV log."""
    from modules.common.metrics_csv import last_metrics

    path = stage_dir / "metrics.csv"
    return last_metrics(path, prefix="val") if path.is_file() else {}


def stage_pretokenize(world: dict, tokenizer_ckpt: str) -> Callable[[Path], dict[str, Any]]:
    """Encode once: 64 px (2 self-corrected variants) and 128 px training data, clean 64 px val."""

    def body(stage_dir: Path) -> dict[str, Any]:
        from commands.pretokenize import run as pretokenize

        out = {"64": str(stage_dir / "train64"), "128": str(stage_dir / "train128"), "val": str(stage_dir / "val64")}
        pretokenize(raw=world["train_ar"], checkpoint=tokenizer_ckpt, out=out["64"], variants=2)
        pretokenize(raw=world["train128"], checkpoint=tokenizer_ckpt, out=out["128"])
        pretokenize(raw=world["val"], checkpoint=tokenizer_ckpt, out=out["val"], self_correct=0.0)
        return out

    return body


def _ar_overlay(sizes: Sizes, data: dict, tokenizer_ckpt: str, stage_dir: Path, callbacks: list[dict],
                seconds: int | None = None) -> dict:
    model = {"tokenizer_ckpt": tokenizer_ckpt, "alpha": sizes.ar_alpha, "lr_schedule": sizes.ar_lr_schedule}
    if sizes.ar_model:
        model["overrides"] = {"visual_inputs": "residual", **sizes.ar_model}
    return {"model": {"init_args": model},
            "data": {"init_args": {"train_dirs": {"64": data["64"], "128": data["128"]}, "val_dir": data["val"],
                                   "batch_size": 8, "val_batch_size": 16}},
            "trainer": {"max_steps": sizes.ar_steps,
                        "max_time": {"seconds": seconds if seconds is not None else sizes.ar_minutes * 60},
                        "limit_train_batches": sizes.ar_batches_per_epoch,
                        **_trainer_outputs(stage_dir, callbacks)}}


def stage_ar_fit(sizes: Sizes, data: dict, tokenizer_ckpt: str,
                 budget: Budget) -> Callable[[Path], dict[str, Any]]:
    """Text-to-image AR training with the resolution curriculum: 64 px, then 128 px from
    `ar_switch_step` (the toy size exercises the switch; the full config goes on to 256 px)."""

    def body(stage_dir: Path) -> dict[str, Any]:
        phases = [{"at_step": 0, "phase": "64"}]
        if sizes.ar_switch_step is not None:
            phases.append({"at_step": sizes.ar_switch_step, "phase": "128", "alpha": 0.9})
        curriculum = {"class_path": "callbacks.curriculum.ResolutionCurriculum", "init_args": {"phases": phases}}
        seconds = budget.seconds_for("ar_fit", sizes.ar_minutes * 60)
        overlay = _ar_overlay(sizes, data, tokenizer_ckpt, stage_dir, [curriculum], seconds)
        overlay["trainer"]["precision"] = _precision(sizes.ar_precision)
        run_main("fit", "--config", str(EXPERIMENTS / "ar_shapes_t2i.yaml"),
                 "--config", write_overlay(stage_dir / "overlay.yaml", overlay))
        return {"checkpoint": str(stage_dir / "last.ckpt"), **_last_val_metrics(stage_dir),
                **_last_logged_step(stage_dir), "budget_seconds": seconds}

    return body


def stage_validate(sizes: Sizes, data: dict, tokenizer_ckpt: str, ar_ckpt: str | None) -> Callable[[Path], dict]:
    """`main.py validate` with the benchmark suite; ar_ckpt None = the untrained model (baseline)."""

    def body(stage_dir: Path) -> dict[str, Any]:
        bench = {"class_path": "callbacks.evaluation.BenchmarkCallback",
                 "init_args": {"validate_suite": {**sizes.suite, "train_captions": [data["64"], data["128"]]},
                               "out_dir": str(stage_dir),
                               "sampling": {"top_k": 8, "guidance": 5.0, "guidance_schedule": "constant",
                                            "seed": 0}}}
        overlay = _ar_overlay(sizes, data, tokenizer_ckpt, stage_dir, [bench])
        args = ["validate", "--config", str(EXPERIMENTS / "ar_shapes_t2i.yaml"),
                "--config", write_overlay(stage_dir / "overlay.yaml", overlay)]
        run_main(*args, *(["--ckpt_path", ar_ckpt] if ar_ckpt else []))
        metrics = json.loads((stage_dir / "benchmarks" / "validate" / "metrics.json").read_text())
        from evaluation.suite import headline

        return {"run_dir": str(stage_dir / "benchmarks" / "validate"), **headline(metrics)}

    return body


def stage_rl(sizes: Sizes, tokenizer_ckpt: str, ar_ckpt: str,
             budget: Budget) -> Callable[[Path], dict[str, Any]]:
    """Prefix-tuning GRPO (modules/rl) from the AR checkpoint, on training-split prompts (datamodules/prompts.py),
    rollouts at the evaluation's 64 px; `rl_steps` optimizer steps or `rl_minutes`, whichever ends first."""

    def body(stage_dir: Path) -> dict[str, Any]:
        seconds = budget.seconds_for("rl", sizes.rl_minutes * 60)
        model = {"policy_ckpt": ar_ckpt, "tokenizer_ckpt": tokenizer_ckpt, "group_size": sizes.rl_group_size,
                 "image_size": 64, **(sizes.rl_overrides or {})}
        overlay = {"model": {"init_args": model},
                   "data": {"init_args": {"batch_size": sizes.rl_prompts_per_step, "val_prompts": 0}},
                   "trainer": {"max_steps": sizes.rl_steps, "max_time": {"seconds": seconds},
                               "limit_val_batches": 0, "val_check_interval": None,
                               **_trainer_outputs(stage_dir, [])}}
        run_main("fit", "--config", str(EXPERIMENTS / "rl_shapes_grpo.yaml"),
                 "--config", write_overlay(stage_dir / "overlay.yaml", overlay))
        from modules.common.metrics_csv import last_metrics

        last = last_metrics(stage_dir / "metrics.csv", prefix="train")
        return {"checkpoint": str(stage_dir / "last.ckpt"), **_last_logged_step(stage_dir), "budget_seconds": seconds,
                **{k: last[k] for k in ("train/reward", "train/kl") if k in last}}

    return body


def stage_unified(sizes: Sizes, world: dict, data: dict, tokenizer_ckpt: str) -> Callable[[Path], dict[str, Any]]:
    """The unified recipe (configs/experiment/ar_shapes_unified.yaml): edit, subject and video
    shards, every task pretokenised, one AR model fit on the mixture for `unified_steps`, then the
    suite with interleaved stories. Off (a skipped record) while `unified_steps` is 0."""

    def body(stage_dir: Path) -> dict[str, Any]:
        if sizes.unified_steps <= 0:
            return {"skipped": "Sizes.unified_steps is 0"}
        from commands.pretokenize import run as pretokenize
        from commands.world import run as world_run

        n = sizes.unified_samples
        common = dict(width=64, height=64, samples_per_shard=500, min_object_px=sizes.min_object_px)
        for kind, seed in (("edits", 11), ("subject", 12), ("videos", 13)):
            world_run(kind=kind, out=str(stage_dir / f"raw_{kind}"), num_samples=n, seed=seed, num_frames=6, **common)
        sources = {"understand": world["train_ar"], "edit": stage_dir / "raw_edits",
                   "subject": stage_dir / "raw_subject", "interleaved": stage_dir / "raw_videos"}
        for task, raw in sources.items():
            pretokenize(raw=str(raw), checkpoint=tokenizer_ckpt, out=str(stage_dir / task), task=task,
                        self_correct=0.0 if task == "understand" else 0.6)
        weights = {"understand": 0.25, "edit": 0.2, "subject": 0.05, "interleaved": 0.15}
        mixture = [{"train_dir": data["64"], "weight": 0.35}] + [
            {"train_dir": str(stage_dir / t), "weight": w} for t, w in weights.items()]
        fit_dir = stage_dir / "fit"
        fit_dir.mkdir(parents=True, exist_ok=True)
        overlay = _ar_overlay(sizes, data, tokenizer_ckpt, fit_dir, [])
        overlay["data"]["init_args"] = {"mixture": mixture, "train_dirs": None, "val_dir": data["val"],
                                        "batch_size": 8, "val_batch_size": 16}
        overlay["trainer"]["max_steps"] = sizes.unified_steps
        experiment = str(EXPERIMENTS / "ar_shapes_unified.yaml")
        run_main("fit", "--config", experiment, "--config", write_overlay(fit_dir / "overlay.yaml", {
            **overlay, "trainer": {**overlay["trainer"], "precision": _precision(sizes.ar_precision)}}))
        bench = {"class_path": "callbacks.evaluation.BenchmarkCallback",
                 "init_args": {"validate_suite": {**sizes.suite, "interleaved_videos": sizes.suite.get(
                     "understanding_scenes", 4), "train_captions": [data["64"]]}, "out_dir": str(stage_dir),
                     "sampling": {"top_k": 8, "guidance": 5.0, "guidance_schedule": "constant", "seed": 0}}}
        overlay["trainer"] = {**overlay["trainer"], **_trainer_outputs(stage_dir / "validate", [bench])}
        run_main("validate", "--config", experiment, "--config", write_overlay(stage_dir / "validate.yaml", overlay),
                 "--ckpt_path", str(fit_dir / "last.ckpt"))
        metrics = json.loads((stage_dir / "benchmarks" / "validate" / "metrics.json").read_text())
        from evaluation.suite import headline

        return {"checkpoint": str(fit_dir / "last.ckpt"), "run_dir": str(stage_dir / "benchmarks" / "validate"),
                **headline(metrics)}

    return body


def stage_baselines(sizes: Sizes, data: dict) -> Callable[[Path], dict[str, Any]]:
    """The suite, with the trained model's settings, on the random-scenes floor and the ground-truth
    ceiling (evaluation/baselines.py): <stage_dir>/{random_scenes,ground_truth}/metrics.json."""

    def body(stage_dir: Path) -> dict[str, Any]:
        from commands.baselines import run as baselines

        scores = baselines(out=str(stage_dir), suite=sizes.suite, train_captions=[data["64"], data["128"]])
        return {name: {"run_dir": str(stage_dir / name), **s} for name, s in scores.items()}

    return body


def stage_refiner(sizes: Sizes, world: dict, tokenizer_ckpt: str) -> Callable[[Path], dict[str, Any]]:
    """The diffusion refiner (issue 14) on the finished tokenizer: the flow refiner and its regression
    control (same network), then their metric table and crops on the held-out scenes
    (benchmarks/refiner.py) into <stage>/bench/{table.json,crops.png}."""
    size = {"steps": 400, "minutes": 3, "images": 256, **(sizes.refiner or {})}

    def body(stage_dir: Path) -> dict[str, Any]:
        from benchmarks.refiner import bench_refiner

        if size["steps"] <= 0:
            return {"skipped": "the refiner's steps are 0 (quickstart --refiner_steps N runs it)"}
        ckpts = {}
        for objective in ("flow", "regression"):
            run_dir = stage_dir / objective
            run_dir.mkdir(parents=True, exist_ok=True)
            overlay = {"model": {"init_args": {"tokenizer_ckpt": tokenizer_ckpt, "objective": objective}},
                       "data": {"init_args": {"train_dir": world["train"], "val_dir": world["val"]}},
                       "trainer": {"max_steps": size["steps"], "max_time": {"seconds": int(size["minutes"] * 60)},
                                   "limit_val_batches": 1, **_trainer_outputs(run_dir, [])}}
            run_main("fit", "--config", str(EXPERIMENTS / "refiner_shapes.yaml"),
                     "--config", write_overlay(run_dir / "overlay.yaml", overlay))
            ckpts[objective] = str(run_dir / "last.ckpt")
        tables = bench_refiner(ckpts["flow"], ckpts["regression"], world["val"], world["val128"],
                               max_images=size["images"], max_images_128=max(1, size["images"] // 2),
                               out=str(stage_dir / "bench"))
        return {"checkpoint": ckpts["flow"], "regression_checkpoint": ckpts["regression"],
                "table": str(stage_dir / "bench" / "table.json"), "crops": str(stage_dir / "bench" / "crops.png"),
                "tables": tables}

    return body


def stage_report(trained: dict, untrained: dict, rl: dict | None = None) -> Callable[[Path], dict[str, Any]]:
    """The report of the trained suite next to its baselines (the untrained model, and the random
    scenes and ground-truth suites under <out>/baselines/ when they exist), with the training curves
    of every stage under <out>."""

    def body(stage_dir: Path) -> dict[str, Any]:
        from commands.report import run as report

        root = stage_dir.parent
        baselines = [f"untrained={untrained['run_dir']}"]
        for name in ("random_scenes", "ground_truth"):
            folder = root / "baselines" / name
            suites = sorted((p.parent for p in folder.rglob("metrics.json")), key=lambda p: len(p.parts))
            if suites:   # the suite folder itself, or the shallowest one below it
                baselines.append(f"{name}={suites[0]}")
        path = report(path=trained["run_dir"], out=str(stage_dir), baselines=baselines, curves=str(root),
                      title="NextFlow quickstart on the Shapes world", rl=rl["run_dir"] if rl else None,
                      rl_curves=str(root / "rl" / "metrics.csv") if rl else None)
        return {"report": str(path)}

    return body


def run(out: str = "runs/quickstart", size: str = "default", unified_steps: int | None = None,
        refiner_steps: int | None = None, budget_minutes: float | None = None) -> dict[str, Any]:
    """Run the main job on the Shapes world end to end: data, tokenizer (3 stages), pretokenise, AR fit, validate, report.

    Every stage is resumable: a second run reuses the stages that finished.

    Args:
        out: folder for every stage's outputs.
        size: `default` (about 30 min on a 2-core CPU) or `toy` (a few steps each; for tests).
        unified_steps: also run the unified recipe (stage `unified`: every task pretokenised, one AR
            model fit on the task mixture for this many steps, then the suite with interleaved
            stories); default: the size's (off in `default`, whose 30 minutes it does not fit).
        refiner_steps: run the refiner stage with this many steps per objective (flow refiner and
            regression control; 0 = off); default: the size's (off in `default`: with it the
            30 minutes leave the tokenizer too few steps).
        budget_minutes: the whole run's wall clock; training stages stop on time when their steps
            would overrun it (each records its last step); default: the size's (28 in `default`);
            0 = no budget (every stage runs its steps, however long that takes).
    """
    import signal

    out_dir = Path(out).resolve()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        from commands import UsageError

        raise UsageError(f"cannot create --out {out_dir}: {err.strerror}; pass a writable folder") from None
    import threading

    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers only there
    handlers = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGHUP)} if main_thread else {}
    try:
        with OutputLock(out_dir):
            return _run_unlocked(out, size, unified_steps, refiner_steps, budget_minutes)
    finally:
        kill_children()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _run_unlocked(out: str, size: str, unified_steps: int | None = None,
                  refiner_steps: int | None = None, budget_minutes: float | None = None) -> dict[str, Any]:
    """`run`'s stages, run while `run` holds the output folder's lock."""
    from rich.console import Console
    from rich.table import Table

    sizes = Sizes.named(size)
    if unified_steps is not None:
        if unified_steps < 0:
            from commands import UsageError

            raise UsageError(f"--unified_steps {unified_steps} must be >= 0 (0 = no unified stage)")
        sizes = dataclasses.replace(sizes, unified_steps=unified_steps)
    if refiner_steps is not None:
        if refiner_steps < 0:
            from commands import UsageError

            raise UsageError(f"--refiner_steps {refiner_steps} must be >= 0 (0 = no refiner stage)")
        sizes = dataclasses.replace(sizes, refiner={**(sizes.refiner or {}), "steps": refiner_steps})
    if budget_minutes is not None:
        if budget_minutes < 0:
            from commands import UsageError

            raise UsageError(f"--budget_minutes {budget_minutes} must be >= 0 (0 = no budget)")
        sizes = dataclasses.replace(sizes, budget_minutes=budget_minutes or None)
    out_dir = Path(out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    budget = Budget(sizes.budget_minutes, log)
    world = run_stage("world", out_dir, stage_world(sizes), log)
    preview = run_stage("preview", out_dir, stage_preview(Path(world["train"]).parent), log)
    geneval_gt = run_stage("geneval_ground_truth", out_dir, stage_geneval_ground_truth(sizes), log)
    previous = None
    tokenizer_stages = []
    for k in (1, 2, 3):
        result = run_stage(f"tokenizer_stage{k}", out_dir, stage_tokenizer(k, sizes, world, previous, budget), log)
        tokenizer_stages.append(result)
        previous = result["checkpoint"]
    tokenizer_val128 = run_stage("tokenizer_val128", out_dir, stage_tokenizer_val128(world, previous), log)
    data = run_stage("pretokenize", out_dir, stage_pretokenize(world, previous), log)
    ar = run_stage("ar_fit", out_dir, stage_ar_fit(sizes, data, previous, budget), log)
    trained = run_stage("validate", out_dir, stage_validate(sizes, data, previous, ar["checkpoint"]), log)
    rl = run_stage("rl", out_dir, stage_rl(sizes, previous, ar["checkpoint"], budget), log)
    rl_scores = run_stage("validate_rl", out_dir, stage_validate(sizes, data, previous, rl["checkpoint"]), log)
    run_stage("unified", out_dir, stage_unified(sizes, world, data, previous), log)
    untrained = run_stage("validate_untrained", out_dir, stage_validate(sizes, data, previous, None), log)
    baselines = run_stage("baselines", out_dir, stage_baselines(sizes, data), log)
    run_stage("refiner", out_dir, stage_refiner(sizes, world, previous), log)
    if not all(row.get("reused") or "skipped" in row for row in log):  # a stage ran now: the report shows it
        _done_file(out_dir / "report").unlink(missing_ok=True)
    report = run_stage("report", out_dir, stage_report(trained, untrained, rl_scores), log)
    (out_dir / "quickstart.json").write_text(json.dumps(log, indent=1))

    table = Table(title="quickstart: where everything went", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("where / score")
    table.add_row("Shapes shards (train / val)", f"{world['train']}\n{world['val']}")
    if "eval_overlap" in world:
        table.add_row("evaluation prompts in the AR captions", "{in_captions} of {prompts} ({unseen_by_rule} held "
                      "out, {unseen_in_captions} of them in captions)".format(**world["eval_overlap"]))
    table.add_row("preview grid", preview["preview"])
    table.add_row("GenEval of the world's own renders (oracle)", f"{geneval_gt['overall']:.3f}")
    for k, stage in enumerate(tokenizer_stages, 1):
        psnr, ssim = stage.get("val/psnr"), stage.get("val/ssim")
        scores = f"PSNR {psnr:.2f} SSIM {ssim:.3f}" if psnr is not None and ssim is not None else ""
        if "val/agreement" in stage:
            scores += f" oracle agreement {stage['val/agreement']:.3f}"
        table.add_row(f"tokenizer stage {k}", f"{stage['checkpoint']}\n{scores}")
    if "val/agreement" in tokenizer_val128:
        table.add_row("tokenizer at 128 px (held out)", f"oracle agreement {tokenizer_val128['val/agreement']:.3f} "
                      f"PSNR {tokenizer_val128['val/psnr']:.2f} SSIM {tokenizer_val128['val/ssim']:.3f}")
    table.add_row("AR checkpoint", ar["checkpoint"])
    for key in ("geneval/overall", "dpg/score", "editcanvas/overall", "understanding/overall"):
        if key in trained:
            table.add_row(f"{key}: trained vs untrained", f"{trained[key]:.3f} vs {untrained.get(key, float('nan')):.3f}")
    for key in ("geneval/overall", "geneval/seen/overall", "geneval/unseen/overall", "geneval/held_out/overall"):
        if key in trained:
            runs = (trained, baselines["random_scenes"], baselines["ground_truth"])
            table.add_row(f"{key}: trained / random scenes / ground truth",
                          " / ".join(f"{r.get(key, float('nan')):.3f}" for r in runs))
    for key in ("geneval/overall", "geneval/held_out/overall", "dpg/score"):
        if key in trained and key in rl_scores:
            table.add_row(f"{key}: AR vs AR+RL", f"{trained[key]:.3f} vs {rl_scores[key]:.3f}")
    table.add_row("report", report["report"])
    Console().print(table)
    return {"stages": log, "report": report["report"]}
