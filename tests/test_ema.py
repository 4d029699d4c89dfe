"""EMA of the weights (callbacks/ema.py on Lightning's EMAWeightAveraging): checkpoints hold the
EMA weights in state_dict and the raw ones in current_model_state (different after training), a
resumed fit restores both, `validate --ckpt_path` runs on the EMA weights, counters are copied,
not averaged, and the configs overlay onto the AR, tokenizer and RL experiments."""
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from callbacks.ema import EMA
from commands.lightning_cli import parse_config
from datamodules.pretokenized_dm import PretokenizedDataModule
from modules.ar.module import ARModule
from test_ar_module import TINY, make_shards

ROOT = Path(__file__).resolve().parents[1]


class Spy(pl.Callback):
    """At the start of fit: the module's weights and the EMA copy's (after any restore)."""

    def on_train_start(self, trainer, module):
        ema = next(c for c in trainer.callbacks if isinstance(c, EMA))
        self.raw = {k: v.clone() for k, v in module.state_dict().items()}
        self.ema = {k[len("module."):]: v.clone() for k, v in ema._average_model.state_dict().items()
                    if k.startswith("module.")}


def fit(root: Path, data: str, max_steps: int, ckpt_path=None, callbacks=()):
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(root), max_steps=max_steps,
                         limit_val_batches=0, num_sanity_val_steps=0,
                         callbacks=[EMA(decay=0.5), *callbacks])
    module = ARModule(overrides=TINY, warmup_steps=0, lr=1e-2)
    trainer.fit(module, PretokenizedDataModule(train_dir=data, batch_size=2), ckpt_path=ckpt_path)
    return trainer, module


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    data = make_shards(root / "data", side=2, n=16)
    ckpts = ModelCheckpoint(dirpath=str(root / "ckpt"), every_n_train_steps=2, save_top_k=-1, save_last=True,
                            filename="{step}", enable_version_counter=False)
    fit(root, data, 4, callbacks=[ckpts])
    return root, data


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def differing(a: dict, b: dict) -> list[str]:
    return [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]


def test_checkpoints_hold_ema_and_raw_weights_which_differ(run):
    root, _ = run
    params = {n for n, _ in ARModule(overrides=TINY).named_parameters()}
    for name in ("step=2.ckpt", "last.ckpt"):  # the final one too: raw weights not overwritten
        ckpt = load(root / "ckpt" / name)
        assert int(ckpt["averaging_state"]["n_averaged"]) == int(ckpt["global_step"])
        assert set(differing(ckpt["state_dict"], ckpt["current_model_state"])) == params  # buffers: equal


def test_resume_restores_raw_and_ema_weights(run, tmp_path):
    root, data = run
    ckpt = load(root / "ckpt" / "step=2.ckpt")
    spy = Spy()
    fit(tmp_path, data, 3, ckpt_path=str(root / "ckpt" / "step=2.ckpt"), callbacks=[spy])
    for key, value in ckpt["current_model_state"].items():
        assert torch.equal(spy.raw[key], value), key
    for key, value in ckpt["state_dict"].items():
        assert torch.equal(spy.ema[key], value), key


def test_validate_runs_on_the_ema_weights(run, tmp_path):
    root, data = run
    ckpt = load(root / "ckpt" / "last.ckpt")
    module = ARModule(overrides=TINY)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         default_root_dir=str(tmp_path), limit_val_batches=1)
    trainer.validate(module, PretokenizedDataModule(train_dir=data, val_dir=data, batch_size=2),
                     ckpt_path=str(root / "ckpt" / "last.ckpt"))
    assert not differing(module.state_dict(), ckpt["state_dict"])


def test_buffers_are_copied_not_averaged():
    from modules.tokenizer import TokenizerModule
    from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn

    from _tokenizer_data import tiny_config

    module = TokenizerModule(tiny_config(), val_oracle=False, rfid_extractor=None)
    ema = EMA(decay=0.5)
    average = AveragedModel(module, avg_fn=get_ema_avg_fn(0.5), use_buffers=ema._use_buffers)
    for step in range(1, 4):
        module.train_steps.fill_(step)
        average.update_parameters(module)
    assert int(average.module.train_steps) == 3


def test_decay_outside_unit_interval_is_refused():
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\), got 1.5"):
        EMA(decay=1.5)


@pytest.mark.parametrize("experiment", ["ar_shapes_t2i", "tokenizer_shapes_stage1", "rl_shapes_grpo"])
def test_ema_overlay_appends_to_each_experiment(experiment):
    base = parse_config(["fit", "--config", str(ROOT / f"configs/experiment/{experiment}.yaml")])
    cfg = parse_config(["fit", "--config", str(ROOT / f"configs/experiment/{experiment}.yaml"),
                        "--config", str(ROOT / "configs/callbacks/ema.yaml")])
    paths = [c["class_path"] for c in cfg["trainer"]["callbacks"]]
    assert paths == [c["class_path"] for c in base["trainer"]["callbacks"]] + ["callbacks.ema.EMA"]
    assert cfg["trainer"]["callbacks"][-1]["init_args"]["decay"] == 0.999
