"""BenchmarkCallback: GenEval / DPG / EditCanvas / understanding during `fit` and `validate`.

During `fit` it runs a small suite every `every_n_steps` optimizer steps (a fixed prompt subset,
the same every time, so scores are comparable across steps) and logs the headline scores. In a
`validate` run (`python main.py validate --config ... --ckpt_path ...`) it runs the full suite
once and writes every benchmark's official layout plus `metrics.json` into the run folder.
Scores go to every logger (CSV always; TensorBoard also gets image grids).

Several processes (DDP): every rank enters the hook and generates its share of the suite's calls
with the unwrapped model (evaluation.suite.run_suite_sharded: the calls cut into batch-size pieces,
piece j on rank j % world, each seeded by its place in the whole call, so an image does not depend
on the rank that made it); the pieces are gathered with torch.distributed.all_gather_object, rank
zero writes and scores the suite exactly as one process would, and all ranks meet at a barrier
after it. A rank whose generation fails sends its error through the gather, so every rank raises
instead of one waiting forever. The scale check runs on every rank, so a refusal stops them all.
FSDP stays refused whenever the callback would generate (every_n_steps > 0 in fit, or validate):
ranks run different numbers of forwards (unequal shares, answers that stop at different lengths),
and an FSDP forward needs every rank in it; score an FSDP checkpoint with `main.py validate` on
one process or under DDP instead.

Guards (before any image is generated): the tokenizer's code embeddings must be the AR model's
(`ARDecoder.code_emb`), and in `validate` the suite's resolution must be one whose number of
scales the model trained on (`ARModule.trained_scale_counts`, from its checkpoint; an untrained
model records none and is allowed: it is the baseline). `allow_untrained_scales=True` lifts the
second; during `fit` it only records. metrics.json says "untrained_scales" (true/false), which
counts were untrained and which were trained.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.utilities import rank_zero_info

from evaluation.suite import SuiteConfig, headline, run_suite_sharded


def _all_gather(obj: Any) -> list[Any]:
    """[obj of rank 0, rank 1, ...] over the default process group (only called when world > 1)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


class BenchmarkCallback(pl.Callback):
    """Args:
        every_n_steps: run the periodic suite every N optimizer steps during fit (0 = never).
        fit_suite: SuiteConfig fields for the periodic suite (a subset).
        validate_suite: SuiteConfig fields for `validate` (the full suite).
        sampling: modules.ar.sampler.SamplingConfig fields.
        out_dir: where layouts go (default: the trainer's log_dir / "benchmarks").
        tokenizer_ckpt: tokenizer checkpoint used to decode (default: the module's own).
        allow_untrained_scales: in `validate`, score even at a number of scales the checkpoint never
            trained on (refused by default); metrics.json then records "untrained_scales": true.
        refiner: a RefinerModule checkpoint (issue 14): generated images are refined before they
            are scored; one that was trained on another tokenizer file is refused (one line).
        refiner_steps: flow steps of the refiner.
    """

    def __init__(self, every_n_steps: int = 0, fit_suite: dict[str, Any] | None = None,
                 validate_suite: dict[str, Any] | None = None, sampling: dict[str, Any] | None = None,
                 out_dir: str | None = None, tokenizer_ckpt: str | None = None, batch_size: int = 8,
                 allow_untrained_scales: bool = False, refiner: str | None = None, refiner_steps: int = 4):
        super().__init__()
        self.refiner, self.refiner_steps, self._refiner = refiner, refiner_steps, None
        self.allow_untrained_scales = allow_untrained_scales
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

    def _tokenizer_path(self, pl_module: pl.LightningModule) -> str:
        path = self.tokenizer_ckpt or getattr(pl_module.hparams, "tokenizer_ckpt", None)
        if path is None:
            raise ValueError("BenchmarkCallback needs a tokenizer to decode images: set the module's "
                             "`tokenizer_ckpt` or the callback's `tokenizer_ckpt`")
        return path

    def _load_tokenizer(self, pl_module: pl.LightningModule):
        """The tokenizer, checked once against the AR model's code embeddings."""
        from modules.ar.sampler import tokenizer_mismatch
        from modules.tokenizer import checkpoint_fingerprint, load_tokenizer

        if self._tokenizer is None:
            path = self._tokenizer_path(pl_module)
            tok = load_tokenizer(path, map_location=str(pl_module.device))
            why = tokenizer_mismatch(pl_module.model, tok.code_embeddings())
            if why is not None:
                trained = getattr(pl_module, "trained_tokenizer_fingerprint", None)
                raise ValueError(f"BenchmarkCallback: tokenizer {path} (file {checkpoint_fingerprint(path)}) does not "
                                 f"match the AR model: its {why}; the model was trained with "
                                 f"{'tokenizer file ' + trained if trained else 'another tokenizer'}: set the "
                                 "callback's or the module's tokenizer_ckpt to that one")
            self._tokenizer = tok
        return self._tokenizer

    def scale_check(self, pl_module: pl.LightningModule, cfg: SuiteConfig, refuse: bool) -> dict[str, Any]:
        """{"untrained_scales", "untrained_scale_counts", "trained_scale_counts"} for the suite's
        resolution; raises (one line) when `refuse` and the count is untrained and not allowed."""
        from modules.ar.sampler import describe_scale_counts, untrained_scale_counts
        from modules.common.scale_schedule import ScaleSchedule

        patch = self._load_tokenizer(pl_module).patch
        needed = ScaleSchedule.for_image(cfg.height, cfg.width, patch).num_scales
        trained = dict(getattr(pl_module, "trained_scale_counts", None) or {}) or None
        bad = untrained_scale_counts(trained, [needed])
        if bad and refuse and not self.allow_untrained_scales:
            raise ValueError(f"BenchmarkCallback: the suite's {cfg.width}x{cfg.height} px needs {needed} scales, but "
                             f"the AR checkpoint trained only on scale counts {describe_scale_counts(trained, patch)}; "
                             "set validate_suite's width/height to a trained resolution or the callback's "
                             "allow_untrained_scales: true to score it anyway (metrics.json then says so)")
        return {"untrained_scales": bool(bad), "untrained_scale_counts": bad,
                "trained_scale_counts": None if trained is None else {str(n): k for n, k in sorted(trained.items())}}

    def _generator(self, pl_module: pl.LightningModule):
        from modules.ar.generator import ARGenerator
        from modules.ar.sampler import SamplingConfig

        tok = self._load_tokenizer(pl_module)
        if self.refiner and self._refiner is None:
            from modules.refiner import load_refiner
            from modules.tokenizer import checkpoint_fingerprint

            self._refiner = load_refiner(self.refiner, tok.tokenizer, checkpoint_fingerprint(self._tokenizer_path(pl_module)),
                                         map_location=str(pl_module.device))
        return ARGenerator(pl_module.model, tok, getattr(pl_module, "text_tokenizer", None),
                           sampling=SamplingConfig.from_dict(self.sampling),
                           batch_size=self.batch_size, refiner=self._refiner, refiner_steps=self.refiner_steps)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule, cfg: SuiteConfig, tag: str) -> dict | None:
        """Every rank calls this (the generation is sharded); rank zero scores, logs and returns
        the metrics, the others return None."""
        scales = self.scale_check(pl_module, cfg, refuse=trainer.state.fn == "validate")
        progress = {"step": trainer.global_step, "epoch": trainer.current_epoch}  # what the scored weights trained
        if trainer.state.fn == "validate" and getattr(pl_module, "checkpoint_progress", None):
            progress = pl_module.checkpoint_progress
        was_training = pl_module.training
        pl_module.eval()
        try:
            metrics = run_suite_sharded(self._generator(pl_module), self._root(trainer) / tag, cfg,
                                        rank=trainer.global_rank, world=trainer.world_size, all_gather=_all_gather,
                                        extra={**progress, **scales})
        finally:
            pl_module.train(was_training)
        if metrics is None:
            return None
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

    def _run_on_every_rank(self, trainer, pl_module, cfg: SuiteConfig, tag: str) -> None:
        """Every rank calls this: all generate their shares, rank zero scores, all meet at a barrier."""
        try:
            self.run(trainer, pl_module, cfg, tag)
        finally:
            if trainer.world_size > 1:
                trainer.strategy.barrier(f"benchmark_{tag}")

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer, pl_module, stage):
        from lightning.pytorch.strategies import FSDPStrategy

        generates = self.every_n_steps > 0 if stage == "fit" else stage == "validate"
        if generates and isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError("BenchmarkCallback's ranks run different numbers of forwards, which deadlocks under FSDP "
                             "(sharded parameters need every rank in each forward): set its every_n_steps: 0 for FSDP fits "
                             "and run `main.py validate` on the checkpoint with the default single-process trainer")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            if getattr(self, "_last_step", None) != step:  # once per optimizer step under accumulation
                self._last_step = step
                self._run_on_every_rank(trainer, pl_module, self.fit_suite, f"step_{step:07d}")

    def on_validation_start(self, trainer, pl_module):
        if trainer.state.fn == "validate":  # refuse before the validation loop, on every rank alike
            self.scale_check(pl_module, self.validate_suite, refuse=True)

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.state.fn == "validate" and not trainer.sanity_checking:
            self._run_on_every_rank(trainer, pl_module, self.validate_suite, "validate")
