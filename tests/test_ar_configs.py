"""Every AR experiment config (configs/experiment/ar_*.yaml) runs a fast_dev_run through the
project's Lightning CLI on synthetic pretokenised shards laid out at the config's data paths, and
holds the settings its name promises (text tokenizer, alpha, inputs, curriculum phases, output
folder); each ablation differs from the main experiment in exactly its own keys."""
from pathlib import Path

import pytest

from commands.lightning_cli import ProjectCLI, parse_config
from test_ar_module import make_shards

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs/experiment").glob("ar_*.yaml"))
T2I_PHASES = [(0, "64"), (300, "128"), (500, "256")]
MAIN = {"text_tokenizer": "shapes-words", "alpha": 0.9, "self_correct": True, "visual_inputs": "residual",
        "cond_dropout": 0.1, "phases": T2I_PHASES, "max_steps": 600}
EXPECTED = {
    "ar_shapes_t2i": MAIN,
    "ar_shapes_t2i_noreweight": {**MAIN, "alpha": 0.0},
    "ar_shapes_t2i_noselfcorrect": {**MAIN, "self_correct": False},
    "ar_shapes_t2i_accumulated": {**MAIN, "visual_inputs": "accumulated"},
    "ar_shapes_i2t": {**MAIN, "self_correct": False, "cond_dropout": 0.0, "phases": None, "max_steps": 400},
    "ar_shapes_unified": {**MAIN, "phases": None, "max_steps": 2000},
}
# Keys (flattened) where an ablation may differ from ar_shapes_t2i: its own setting and its output folder.
OUTPUT_KEYS = {"trainer.default_root_dir", "trainer.logger.init_args.save_dir", "trainer.callbacks.2.init_args.dirpath"}
ABLATION_KEYS = {"ar_shapes_t2i_noreweight": {"model.init_args.alpha"},
                 "ar_shapes_t2i_noselfcorrect": {"model.init_args.self_correct"},
                 "ar_shapes_t2i_accumulated": {"model.init_args.overrides.visual_inputs"}}


def flat(node, prefix=""):
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in flat(value, f"{prefix}{key}.").items()}
    if isinstance(node, list):
        return {k: v for i, value in enumerate(node) for k, v in flat(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: node}


def run_cli(config: Path, *extra: str):
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false",
            "--trainer.accelerator=cpu", "--model.init_args.tokenizer_ckpt=null",
            "--data.init_args.batch_size=2", "--data.init_args.val_batch_size=2", *extra]
    return ProjectCLI(args=args)


def test_configs_exist():
    assert {c.stem for c in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(ABLATION_KEYS))
def test_ablation_is_the_main_experiment_but_its_own_keys(name):
    main = flat(parse_config(["fit", "--config", str(ROOT / "configs/experiment/ar_shapes_t2i.yaml")]))
    ablation = flat(parse_config(["fit", "--config", str(ROOT / f"configs/experiment/{name}.yaml")]))
    differ = {k for k in set(main) | set(ablation) if main.get(k, "<absent>") != ablation.get(k, "<absent>")}
    assert differ == ABLATION_KEYS[name] | OUTPUT_KEYS, differ
    assert {ablation[k] for k in OUTPUT_KEYS} == {f"runs/{name}"}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_fast_dev_run(config, tmp_path, monkeypatch):
    expected = EXPECTED[config.stem]
    data = parse_config(["fit", "--config", str(config)])["data"]["init_args"]
    dirs = list((data.get("train_dirs") or {}).values()) + [data.get("train_dir"), data.get("val_dir")]
    dirs += [src.get(k) for src in data.get("mixture") or [] for k in ("train_dir", "val_dir")]
    i2t = "i2t" in config.stem
    for d in filter(None, dirs):
        make_shards(tmp_path / d, side=2, n=4, codebook=1024, i2t_every=1 if i2t else 0)
    monkeypatch.chdir(tmp_path)
    cli = run_cli(config)
    assert cli.trainer.global_step == 1
    m = cli.model
    assert m.config.name == "shapes-small"
    assert m.hparams.text_tokenizer == expected["text_tokenizer"]
    caption = "a red circle left of a blue square"      # one id per world word, not one per byte
    assert len(m.text_tokenizer.encode(caption)) == len(caption.split())
    assert m.alpha == expected["alpha"] and m.hparams.alpha == expected["alpha"]
    assert m.hparams.self_correct == expected["self_correct"] and m.hparams.cond_dropout == expected["cond_dropout"]
    assert m.config.visual_inputs == expected["visual_inputs"]
    assert cli.config.fit.trainer.max_steps == expected["max_steps"]
    curricula = [c for c in cli.trainer.callbacks if type(c).__name__ == "ResolutionCurriculum"]
    if expected["phases"] is None:
        assert curricula == []
    else:
        (curriculum,) = curricula
        assert [(p["at_step"], p["phase"]) for p in curriculum.phases] == expected["phases"]
        assert all(p["alpha"] is None for p in curriculum.phases)   # alpha holds: the model's, throughout
        assert cli.config.fit.trainer.reload_dataloaders_every_n_epochs == 1
    root = f"runs/{config.stem}"
    assert cli.config.fit.trainer.default_root_dir == root
    assert cli.config.fit.trainer.logger.init_args.save_dir == root
    (checkpoint,) = [c for c in cli.config.fit.trainer.callbacks if c.class_path.endswith("ModelCheckpoint")]
    assert checkpoint.init_args.dirpath == root and checkpoint.init_args.save_last
