"""BenchmarkCallback: GenEval / DPG / EditCanvas / understanding during `fit` and `validate`.

During `fit` it runs a small suite every `every_n_steps` optimizer steps (a fixed prompt subset,
the same every time, so scores are comparable across steps) and logs the headline scores. In a
`validate` run (`python main.py validate --config ... --ckpt_path ...`) it runs the full suite
once and writes every benchmark's official layout plus `metrics.json` into the run folder.
Scores go to every logger (CSV always; TensorBoard also gets image grids). Rank zero only:
the suite is evaluation, not training, so other ranks need not wait on it beyond a barrier.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from evaluation.suite import SuiteConfig, headline, run_suite


class BenchmarkCallback(pl.Callback):
    """Args:
        every_n_steps: run the periodic suite every N optimizer steps during fit (0 = never).
        fit_suite: SuiteConfig fields for the periodic suite (a subset).
        validate_suite: SuiteConfig fields for `validate` (the full suite).
        sampling: modules.ar.sampler.SamplingConfig fields.
        out_dir: where layouts go (default: the trainer's log_dir / "benchmarks").
        tokenizer_ckpt: tokenizer checkpoint used to decode (default: the module's own).
    """

    def __init__(self, every_n_steps: int = 0, fit_suite: dict[str, Any] | None = None,
                 validate_suite: dict[str, Any] | None = None, sampling: dict[str, Any] | None = None,
                 out_dir: str | None = None, tokenizer_ckpt: str | None = None, batch_size: int = 8):
        super().__init__()
        self.every_n_steps = every_n_steps
        self.fit_suite = SuiteConfig(**{"geneval_limit": 24, "images_per_prompt": 1, "dpg_prompts": 4,
                                        "editcanvas_per_task": 1, "understanding_scenes": 4, **(fit_suite or {})})
        self.validate_suite = SuiteConfig(**(validate_suite or {}))
        self.sampling = dict(sampling or {})
        self.out_dir, self.tokenizer_ckpt, self.batch_size = out_dir, tokenizer_ckpt, batch_size
        self._tokenizer = None
        self.last_metrics: dict[str, Any] | None = None

    # ------------------------------------------------------------------ plumbing
    def _root(self, trainer: pl.Trainer) -> Path:
        return Path(self.out_dir or trainer.log_dir or trainer.default_root_dir) / "benchmarks"

    def _generator(self, pl_module: pl.LightningModule):
        from modules.ar.generator import ARGenerator
        from modules.ar.sampler import SamplingConfig
        from modules.tokenizer import load_tokenizer

        path = self.tokenizer_ckpt or getattr(pl_module.hparams, "tokenizer_ckpt", None)
        if path is None:
            raise ValueError("BenchmarkCallback needs a tokenizer to decode images: set the module's "
                             "`tokenizer_ckpt` or the callback's `tokenizer_ckpt`")
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(path, map_location=str(pl_module.device))
        return ARGenerator(pl_module.model, self._tokenizer, getattr(pl_module, "text_tokenizer", None),
                           sampling=SamplingConfig.from_dict(self.sampling),
                           batch_size=self.batch_size)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, cfg: SuiteConfig, tag: str) -> dict:
        was_training = pl_module.training
        pl_module.eval()
        try:
            metrics = run_suite(self._generator(pl_module), self._root(trainer) / tag, cfg,
                                extra={"step": trainer.global_step, "epoch": trainer.current_epoch})
        finally:
            pl_module.train(was_training)
        scores = headline(metrics)
        for logger in trainer.loggers:
            logger.log_metrics({f"bench/{k}": v for k, v in scores.items()}, step=trainer.global_step)
        self._log_images(trainer, self._root(trainer) / tag)
        rank_zero_info("benchmarks @ step %d: %s" % (trainer.global_step,
                       ", ".join(f"{k}={v:.3f}" for k, v in scores.items())))
        self.last_metrics = metrics
        return metrics

    def _log_images(self, trainer: pl.Trainer, folder: Path) -> None:
        """A grid of the first sample of each GenEval prompt to TensorBoard (the CSV logger keeps
        the PNGs on disk in the GenEval layout)."""
        from lightning.pytorch.loggers import TensorBoardLogger
        from PIL import Image

        from evaluation.grids import image_grid

        samples = sorted((folder / "geneval").glob("*/samples/0000.png"))[:32]
        if not samples:
            return
        grid = np.asarray(image_grid([np.asarray(Image.open(p).convert("RGB")) for p in samples], cell=64))
        Image.fromarray(grid).save(folder / "geneval_grid.png")
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("geneval/samples", grid, trainer.global_step, dataformats="HWC")

    # ------------------------------------------------------------------ hooks
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0 and trainer.is_global_zero:
            if getattr(self, "_last_step", None) != step:  # once per optimizer step under accumulation
                self._last_step = step
                self.run(trainer, pl_module, self.fit_suite, f"step_{step:07d}")

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == "validate" and not trainer.sanity_checking and trainer.is_global_zero:
            self.run(trainer, pl_module, self.validate_suite, "validate")
