"""`python main.py baselines`: score the reference generators with the benchmark suite."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from commands import UsageError


def run(out: str = "runs/baselines", baselines: list[str] | None = None, suite: dict[str, Any] | None = None,
        train_captions: list[str] | None = None, prompt_mix: float = 0.5) -> dict[str, dict[str, float]]:
    """Score the baselines (random training-distribution scenes; the world's ground truth) with the suite.

    Each baseline gets a suite folder out/<name>/ in the layout of a model's validate run
    (metrics.json, geneval/, dpg/, editcanvas/, understanding.json), so `main.py report` and
    `main.py rescore` read it like a model's.

    Args:
        out: folder for the baselines' suite folders.
        baselines: which of random_scenes, ground_truth (default: both).
        suite: evaluation.suite.SuiteConfig fields (use the model's validate_suite to compare).
        train_captions: shard directories the model trained on: GenEval prompts whose text is
            among their captions count as "seen" (default: the world's split rule decides).
        prompt_mix: random_scenes only: the fraction of images realising a random seen
            GenEval-template prompt (the quickstart's AR data uses 0.5).
    """
    from evaluation.baselines import BASELINES, run_baselines
    from evaluation.suite import SuiteConfig, headline

    names = list(baselines) if baselines is not None else list(BASELINES)
    for name in names:
        if name not in BASELINES:
            raise UsageError(f"unknown baseline {name!r} in --baselines; choose from: {', '.join(BASELINES)}")
    if not 0.0 <= prompt_mix <= 1.0:
        raise UsageError(f"--prompt_mix must be in [0, 1], got {prompt_mix}")
    fields = dict(suite or {})
    unknown = sorted(set(fields) - set(SuiteConfig.__dataclass_fields__))
    if unknown:
        raise UsageError(f"unknown suite field(s) {', '.join(unknown)} in --suite; "
                         f"choose from: {', '.join(SuiteConfig.__dataclass_fields__)}")
    if train_captions is not None:
        for directory in train_captions:
            if not list(Path(directory).glob("*.tar")):
                raise UsageError(f"no .tar shards in {directory} (--train_captions): give the shard directories "
                                 f"the model trained on, or leave it unset to use the split rule")
        fields["train_captions"] = list(train_captions)
    cfg = SuiteConfig(**fields)
    results = run_baselines(out, cfg, names, prompt_mix=prompt_mix)
    scores = {name: headline(metrics) for name, metrics in results.items()}
    for name, score in scores.items():
        shown = ", ".join(f"{k} {v:.3f}" for k, v in score.items() if k.count("/") == 1 or k.endswith("/overall"))
        print(f"{name} ({Path(out) / name}): {shown}")
    return scores
