"""Resolution curriculum: switch the training data's resolution at configured steps (NF §4.1:
256 → 512 → 1024 at scale; 64 → 128 → 256 px on Shapes), optionally turning on scale-aware
reweighting at a switch (NF §4.3: α = 0.9 introduced at the 512 stage).

Lightning has no public API to swap the training dataloader mid-fit (REFERENCE.md pitfalls);
the working pattern: this callback sets the phase on the datamodule
(`PretokenizedDataModule.set_phase`) at the end of a (virtual) epoch, and the trainer runs with
`reload_dataloaders_every_n_epochs=1`, so the next epoch's loader reads the new shards. Switches
therefore land on epoch boundaries: keep epochs short (`limit_train_batches`).

Resume: the phase is recomputed from the checkpoint's global step and loop state, the way an
uninterrupted run would have it: a checkpoint written after the last batch of an epoch (e.g. by
`ModelCheckpoint(every_n_train_steps=...)` at the switch step, before the epoch-end switch ran)
resumes with the next epoch, in `phase_index_for(global_step)`; one written mid-epoch resumes that
epoch in the phase it started with (`phase_index_for(step at the epoch's start)`). `on_fit_start`
(after the checkpoint is restored, before the first loader is built) applies it, α included.
"""
from __future__ import annotations

import logging
from typing import Any

import lightning.pytorch as pl

from modules.common.errors import ConfigError

log = logging.getLogger(__name__)


class ResolutionCurriculum(pl.Callback):
    """Args:
        phases: list of {"at_step": int, "phase": str (a key of the datamodule's train_dirs),
            "alpha": float (optional: set the module's reweighting exponent at this switch)}.
            Sorted by at_step; the first must start at step 0.
    """

    def __init__(self, phases: list[dict[str, Any]]):
        super().__init__()
        if not phases:
            raise ConfigError("ResolutionCurriculum needs at least one phase")
        self.phases = sorted(({"at_step": int(p["at_step"]), "phase": str(p["phase"]), "alpha": p.get("alpha")}
                              for p in phases), key=lambda p: p["at_step"])
        if self.phases[0]["at_step"] != 0:
            raise ConfigError(f"the first curriculum phase must start at step 0, got {self.phases[0]['at_step']}")
        self.current: int | None = None  # index into phases
        self.epoch_start_step = 0  # global step at the start of the running epoch
        self._restored: int | None = None
        self._checkpoint: dict[str, Any] | None = None

    def phase_index_for(self, step: int) -> int:
        return max(i for i, p in enumerate(self.phases) if p["at_step"] <= step)

    def _apply(self, trainer: pl.Trainer, pl_module: pl.LightningModule, index: int) -> None:
        p = self.phases[index]
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "set_phase"):
            raise ConfigError("ResolutionCurriculum needs a datamodule with set_phase(phase) "
                             "(datamodules.pretokenized_dm.PretokenizedDataModule)")
        dm.set_phase(p["phase"])
        for q in self.phases[: index + 1]:  # alpha = the last one set at or before this phase
            if q["alpha"] is not None:
                pl_module.alpha = float(q["alpha"])
        if self.current != index:
            log.info("curriculum: phase %s from step %d (alpha %s)", p["phase"], trainer.global_step,
                     getattr(pl_module, "alpha", None))
        self.current = index

    def on_fit_start(self, trainer, pl_module):
        if trainer.reload_dataloaders_every_n_epochs != 1 and len(self.phases) > 1:
            log.warning("ResolutionCurriculum switches data at epoch ends; run the Trainer with "
                        "reload_dataloaders_every_n_epochs=1 or the switch never reaches the loader")
        self._apply(trainer, pl_module, self._restored if self._restored is not None else 0)

    def on_train_epoch_start(self, trainer, pl_module):
        self.epoch_start_step = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):
        index = self.phase_index_for(trainer.global_step)
        if index != self.current:
            self._apply(trainer, pl_module, index)

    def state_dict(self) -> dict[str, Any]:
        return {"current": self.current, "phases": self.phases, "epoch_start_step": self.epoch_start_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_start = state_dict.get("epoch_start_step")
        self._restored = (self.resume_index(self._checkpoint, saved_start) if self._checkpoint is not None
                          else state_dict.get("current"))

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        """Runs before `load_state_dict`: keeps the checkpoint's step and loop state for it."""
        self._checkpoint = {"global_step": checkpoint.get("global_step", 0), "loops": checkpoint.get("loops")}

    def resume_index(self, checkpoint: dict[str, Any], saved_epoch_start: int | None = None) -> int:
        """The phase an uninterrupted run is in right after the step `checkpoint` was written at."""
        step = int(checkpoint.get("global_step", 0))
        batches = ((checkpoint.get("loops") or {}).get("fit_loop") or {}).get("epoch_loop.batch_progress") or {}
        if batches.get("is_last_batch", True):  # the epoch was over (or unknown): the next starts at `step`
            return self.phase_index_for(step)
        if saved_epoch_start is None:  # older checkpoints: one optimizer step per batch
            saved_epoch_start = step - int((batches.get("current") or {}).get("completed", 0))
        self.epoch_start_step = int(saved_epoch_start)
        return self.phase_index_for(max(0, self.epoch_start_step))
