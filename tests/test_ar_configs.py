"""Every AR experiment config (configs/experiment/ar_*.yaml) runs a fast_dev_run through the
Lightning CLI on synthetic pretokenised shards laid out at the config's data paths."""
from pathlib import Path

import pytest
import yaml

from test_ar_module import make_shards

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs/experiment").glob("ar_*.yaml"))


def run_cli(config: Path, *extra: str):
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    import datamodules  # noqa: F401
    import modules  # noqa: F401

    args = ["fit", "--config", str(config), "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu", "--model.init_args.tokenizer_ckpt=null",
            "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=2", *extra]
    return LightningCLI(LightningModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        args=args, parser_kwargs={"parser_mode": "omegaconf+"}, save_config_kwargs={"overwrite": True})


def test_configs_exist():
    names = {c.stem for c in CONFIGS}
    assert {"ar_shapes_t2i", "ar_shapes_i2t", "ar_shapes_t2i_noreweight", "ar_shapes_t2i_accumulated",
            "ar_shapes_t2i_noselfcorrect"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_fast_dev_run(config, tmp_path, monkeypatch):
    raw = yaml.safe_load(config.read_text())
    data = raw["data"]["init_args"]
    dirs = list((data.get("train_dirs") or {}).values()) + [data.get("train_dir"), data.get("val_dir")]
    i2t = "i2t" in config.stem
    for d in filter(None, dirs):
        make_shards(tmp_path / d, side=2, n=4, codebook=1024, i2t_every=1 if i2t else 0)
    monkeypatch.chdir(tmp_path)
    cli = run_cli(config)
    assert cli.trainer.global_step == 1
    m = cli.model
    assert m.config.name == raw["model"]["init_args"]["preset"]
    overrides = raw["model"]["init_args"].get("overrides") or {}
    assert m.config.visual_inputs == overrides.get("visual_inputs", "residual")
    assert m.hparams.self_correct == raw["model"]["init_args"]["self_correct"]
