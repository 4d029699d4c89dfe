"""GenEval for a list of sampling configs on one AR checkpoint (e.g. constant vs VAR's linear CFG
ramp, and the guidance strength), each through the benchmark suite (evaluation/suite.py), with
the same prompts, images per prompt and seeds, so only the sampling config differs:

    python -m benchmarks.sampling_geneval --ckpt runs/quickstart/ar_fit/last.ckpt \\
        --sampling '[configs/sampling/shapes_cfg_constant.yaml, configs/sampling/shapes_cfg_linear.yaml]' \\
        --vary '{guidance: [1.0, 2.0, 4.0]}' --width 128 --height 128 --out runs/sampling_geneval

Points: every file of `sampling` × every combination of `vary` (SamplingConfig keys -> values,
applied over the file). Each point writes the suite's layout and metrics.json under
<out>/<point>/ (GenEval only: DPG, EditCanvas and understanding are off), is skipped when its
metrics.json exists (resumable), and <out>/summary.json plus the printed table hold every point's
GenEval scores (`evaluation.suite.headline`).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import re
from pathlib import Path
from typing import Any

import torch


class InputError(ValueError):
    """Bad input to this script (a missing file, an unknown key): one line, exit 2."""


def sampling_points(sampling: list[str], vary: dict[str, list] | None = None) -> list[tuple[str, Any]]:
    """(point name, SamplingConfig) for every file × every combination of `vary`; a file that is
    missing or a key that SamplingConfig does not have raises InputError naming it."""
    import yaml

    from modules.ar.sampler import SamplingConfig

    vary = dict(vary or {})
    for key, values in vary.items():
        if not isinstance(values, (list, tuple)) or not values:
            raise InputError(f"--vary {key!r} must map to a non-empty list of values, got {values!r}")
    points, names = [], set()
    for path in sampling:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InputError(f"sampling config not found at {p}; see configs/sampling/ for examples")
        base = yaml.safe_load(p.read_text()) or {}
        for combo in itertools.product(*vary.values()):
            over = dict(zip(vary, combo))
            try:
                cfg = SamplingConfig.from_dict({**base, **over})
            except (TypeError, ValueError) as err:
                raise InputError(f"{p}: {err}") from None
            name = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join([p.stem, *(f"{k}={v}" for k, v in over.items())]))
            if name in names:
                raise InputError(f"two sampling points are both named {name!r}: give the files distinct names")
            names.add(name)
            points.append((name, cfg))
    if not points:
        raise InputError("no sampling configs: pass --sampling '[configs/sampling/a.yaml, ...]'")
    return points


def load_checkpoint(ckpt: str, tokenizer_ckpt: str | None = None, device: str = "cpu"):
    """(AR decoder, its tokenizer, its text tokenizer) from an AR checkpoint; a missing or
    mismatched file raises InputError with the loader's one-line message."""
    from modules.ar.generator import load_ar_and_tokenizer
    from modules.common.errors import ConfigError
    from modules.text.tokenizers import build_text_tokenizer

    try:
        model, meta, tokenizer, _ = load_ar_and_tokenizer(ckpt, tokenizer_ckpt, device)
    except ConfigError as err:
        raise InputError(str(err)) from None
    text = build_text_tokenizer(meta.get("text_tokenizer") or "bytes", meta.get("text_tokenizer_path"),
                                model.config.text_vocab_size)
    return model, tokenizer, text


def run(ckpt: str, sampling: list[str], vary: dict[str, list] | None = None, out: str = "runs/sampling_geneval",
        tokenizer_ckpt: str | None = None, geneval_prompts: str | None = None, geneval_limit: int | None = None,
        images_per_prompt: int = 4, width: int = 64, height: int = 64, seed: int = 0, batch_size: int = 8,
        device: str = "cpu") -> dict:
    """Score GenEval for each sampling point on one AR checkpoint; prints and returns the scores.

    Args:
        ckpt: AR checkpoint (ARModule Lightning checkpoint or a save_generator file).
        sampling: sampling config files (configs/sampling/*.yaml).
        vary: SamplingConfig key -> list of values, crossed with every file.
        out: output folder (one sub-folder per point, summary.json).
        tokenizer_ckpt: TokenizerModule checkpoint (default: the one the AR checkpoint records).
        geneval_prompts: GenEval jsonl (default: the world's prompts).
        geneval_limit: every k-th prompt so that this many remain (tags' proportions kept).
        images_per_prompt: images per prompt (official GenEval: 4).
        width: image width in pixels (score at the resolution the model trained at).
        height: image height in pixels.
        seed: suite seed (the same for every point).
        batch_size: prompts per sampling call.
        device: cpu or cuda.
    """
    from evaluation.suite import SuiteConfig, headline, run_suite
    from modules.ar.generator import ARGenerator

    points = sampling_points(list(sampling), vary)  # every file and key checked before any work
    model, tokenizer, text = load_checkpoint(ckpt, tokenizer_ckpt, device)
    suite = SuiteConfig(geneval_prompts=geneval_prompts, geneval_limit=geneval_limit,
                        images_per_prompt=images_per_prompt, dpg_prompts=0, editcanvas_per_task=0,
                        understanding_scenes=0, width=width, height=height, seed=seed)
    root, scores = Path(out), {}
    for name, cfg in points:
        folder = root / name
        done = folder / "metrics.json"
        if done.is_file() and "geneval" in json.loads(done.read_text()):
            metrics = json.loads(done.read_text())
        else:
            gen = ARGenerator(model, tokenizer, text, sampling=cfg, batch_size=batch_size)
            with torch.no_grad():
                metrics = run_suite(gen, folder, suite, extra={"ckpt": str(ckpt), "sampling": dataclasses.asdict(cfg)})
        scores[name] = headline(metrics)
    root.mkdir(parents=True, exist_ok=True)
    summary = {"ckpt": str(ckpt), "suite": dataclasses.asdict(suite), "scores": scores,
               "sampling": {name: dataclasses.asdict(cfg) for name, cfg in points}}
    (root / "summary.json").write_text(json.dumps(summary, indent=1))
    print_geneval_table(scores, f"GenEval per sampling config: {ckpt}, {width}x{height} px, "
                                f"{images_per_prompt} images per prompt (all columns: {root / 'summary.json'})",
                        first_column="sampling")
    return summary


def print_geneval_table(scores: dict[str, dict[str, float]], title: str, first_column: str = "") -> None:
    """One row per point: overall, the six tasks and seen / unseen / held-out overall (the full
    per-split task breakdown stays in the summary JSON: it does not fit a terminal)."""
    from rich.console import Console
    from rich.table import Table

    keys = {k for s in scores.values() for k in s if k.startswith("geneval/")}
    cols = sorted((k for k in keys if k.count("/") == 1 and not k.endswith("_accuracy")),
                  key=lambda k: (k != "geneval/overall", k))
    cols += [k for k in ("geneval/seen/overall", "geneval/unseen/overall", "geneval/held_out/overall") if k in keys]
    table = Table(title=title)
    table.add_column(first_column)
    for col in cols:
        table.add_column(col.removeprefix("geneval/").removesuffix("/overall"), justify="right")
    for name, s in scores.items():
        table.add_row(name, *(f"{s[c]:.3f}" if c in s else "-" for c in cols))
    Console(width=200).print(table)


if __name__ == "__main__":
    from benchmarks import run_cli

    run_cli(run, InputError)
