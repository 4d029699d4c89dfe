"""Resolution curriculum resume: from every checkpoint of an uninterrupted run (one per step,
written by ModelCheckpoint(every_n_train_steps=1), so the one at the switch step is written
before the epoch-end switch), a resumed run is in the same phase (final grid) and α as the
uninterrupted run at every later step."""
import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.curriculum import ResolutionCurriculum
from datamodules.pretokenized_dm import PretokenizedDataModule
from modules.ar.module import ARModule
from test_ar_module import TINY, make_shards

# epochs of 2 batches; switches at step 2 (an epoch boundary) and at step 5 (mid-epoch: lands at
# the end of that epoch, step 6)
PHASES = [{"at_step": 0, "phase": "a", "alpha": 0.0}, {"at_step": 2, "phase": "b", "alpha": 0.9},
          {"at_step": 5, "phase": "c", "alpha": 0.5}]
MAX_STEPS = 8


class Spy(pl.Callback):
    def __init__(self):
        self.seen = {}

    def on_train_batch_start(self, trainer, module, batch, idx):
        grid = batch.images[0].schedule.final_grid  # collated in the loader by the model's batcher (IndexBatch)
        self.seen[trainer.global_step] = (grid, module.alpha)


def fit(tmp_path, dirs, ckpt=None, save_dir=None):
    torch.manual_seed(0)
    spy = Spy()
    callbacks = [ResolutionCurriculum(PHASES), spy]
    if save_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=str(save_dir), every_n_train_steps=1, save_top_k=-1,
                                         filename="{step}"))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), max_steps=MAX_STEPS,
                         limit_train_batches=2, reload_dataloaders_every_n_epochs=1, callbacks=callbacks,
                         num_sanity_val_steps=0)
    trainer.fit(ARModule(overrides=TINY, warmup_steps=1), PretokenizedDataModule(train_dirs=dirs, batch_size=2),
                ckpt_path=ckpt)
    return spy.seen


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("curr")
    dirs = {"a": make_shards(root / "a", side=2), "b": make_shards(root / "b", side=3),
            "c": make_shards(root / "c", side=4)}
    seen = fit(root, dirs, save_dir=root / "ckpts")
    return root, dirs, seen


def test_uninterrupted_run_switches_at_epoch_ends(uninterrupted):
    _, _, seen = uninterrupted
    assert [seen[s][0] for s in range(MAX_STEPS)] == [(2, 2)] * 2 + [(3, 3)] * 4 + [(4, 4)] * 2
    assert [seen[s][1] for s in range(MAX_STEPS)] == [0.0] * 2 + [0.9] * 4 + [0.5] * 2


@pytest.mark.parametrize("step", [1, 2, 3, 4, 5, 6, 7])
def test_resume_from_every_step_matches_the_uninterrupted_run(uninterrupted, step, tmp_path):
    root, dirs, seen = uninterrupted
    resumed = fit(tmp_path, dirs, ckpt=str(root / "ckpts" / f"step={step}.ckpt"))
    assert min(resumed) == step
    assert {s: resumed[s] for s in resumed} == {s: seen[s] for s in range(step, MAX_STEPS)}
