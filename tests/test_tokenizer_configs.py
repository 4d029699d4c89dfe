"""Every tokenizer experiment config runs a fast_dev_run through the project's Lightning CLI, each
stage loading the previous stage's checkpoint from the path in its config, and holds the settings
its stage promises (scale dropping, validation at the last step, its own output folder)."""
from pathlib import Path

import pytest
import torch
import yaml

from _tokenizer_data import write_raw_shards
from modules.tokenizer import TokenizerConfig, TokenizerModule

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {n: ROOT / f"configs/experiment/tokenizer_shapes_stage{n}.yaml" for n in (1, 2, 3)}


def run_cli(config: Path, *extra: str):
    from commands.lightning_cli import ProjectCLI

    args = ["fit", "--config", str(config), "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false",
            "--data.init_args.batch_size=4", "--data.init_args.val_batch_size=4", *extra]
    return ProjectCLI(args=args)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_config_settings(stage):
    """What each stage composes: scale dropping 0.5 (0.0 in the decoder-only stage 3), one
    validation at the last step, and logs plus last.ckpt in runs/tokenizer_shapes/stage<k>."""
    from commands.lightning_cli import parse_config

    config = parse_config(["fit", "--config", str(CONFIGS[stage])])
    model, trainer = config["model"]["init_args"], config["trainer"]
    assert model["stage"] == {1: "pixel", 2: "joint", 3: "decoder"}[stage]
    assert model["init_ckpt"] == (None if stage == 1 else f"runs/tokenizer_shapes/stage{stage - 1}/last.ckpt")
    assert model["tokenizer"]["codebook_size"] == 256 and model["edge_focus"] == 4.0
    assert trainer["max_steps"] == {1: 900, 2: 1000, 3: 1200}[stage] == trainer["val_check_interval"]
    root = f"runs/tokenizer_shapes/stage{stage}"
    assert trainer["default_root_dir"] == root == trainer["logger"]["init_args"]["save_dir"]
    by_class = {c["class_path"].rsplit(".", 1)[-1]: c["init_args"] for c in trainer["callbacks"]}
    assert set(by_class) == {"ScaleDropping", "ModelCheckpoint"}
    assert by_class["ScaleDropping"]["drop_prob"] == (0.0 if stage == 3 else 0.5)
    assert by_class["ModelCheckpoint"]["dirpath"] == root and by_class["ModelCheckpoint"]["save_last"]


def shapes_config() -> TokenizerConfig:
    raw = yaml.safe_load((ROOT / "configs/tokenizer/shapes_64.yaml").read_text())
    raw["ch_mult"] = tuple(raw["ch_mult"])
    return TokenizerConfig(**raw)


def fake_previous_stage(path: Path, stage: str, seed: int) -> dict:
    """A previous-stage checkpoint (state_dict only, what init_ckpt reads) with known weights."""
    torch.manual_seed(seed)
    m = TokenizerModule(tokenizer=shapes_config(), stage=stage, val_oracle=False, rfid_extractor=None)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": m.state_dict()}, path)
    return m.state_dict()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokcfg")
    sizes = [(64, 64)] * 8 + [(88, 48)] * 4  # two aspect-ratio buckets
    write_raw_shards(root / "data/shapes/tok64m16/train", sizes, seed=0)
    write_raw_shards(root / "data/shapes/tok64m16/val", [(64, 64)] * 4, seed=5)
    write_raw_shards(root / "data/shapes/tok128m32/train", [(128, 128)] * 4, seed=7)  # cropped to 64 px
    return root


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_stage_config_fast_dev_run(stage, workdir, monkeypatch):
    monkeypatch.chdir(workdir)  # configs use relative data/ and runs/ paths
    previous = None
    if stage > 1:
        previous = fake_previous_stage(workdir / f"runs/tokenizer_shapes/stage{stage - 1}/last.ckpt",
                                       "pixel" if stage == 2 else "joint", seed=stage)
    cli = run_cli(CONFIGS[stage])
    model = cli.model
    assert cli.trainer.global_step == 1
    assert model.stage == {1: "pixel", 2: "joint", 3: "decoder"}[stage]
    trainable = {n.split(".")[0] for n, p in model.tokenizer.named_parameters() if p.requires_grad}
    if stage == 1:
        assert trainable == {"pixel_encoder", "quantizer", "pixel_decoder"}
        assert not model.tokenizer.quantizer.sem_codes.requires_grad
    elif stage == 2:
        assert trainable == {"pixel_encoder", "semantic_encoder", "quantizer", "pixel_decoder", "semantic_decoder"}
    else:
        assert trainable == {"pixel_decoder"}
    state = model.state_dict()
    if previous is not None:  # frozen/encoder weights come from the previous stage's checkpoint
        key = "tokenizer.semantic_encoder.embed.weight"
        if stage == 3:
            assert torch.equal(state[key], previous[key])
            assert torch.equal(state["tokenizer.quantizer.pix_codes"], previous["tokenizer.quantizer.pix_codes"])
            dec = "tokenizer.pixel_decoder.net.0.weight"
            assert state[dec].shape[0] == 2 * previous[dec].shape[0]  # 2x decoder width
        else:  # one warm-up step moves weights by ~lr/20 at most: still the loaded ones
            key = "tokenizer.pixel_encoder.net.0.weight"
            assert float((state[key] - previous[key]).abs().max()) < 1e-3
            assert float((previous[key]).abs().mean()) > 1e-2


def test_missing_previous_stage_checkpoint_names_path_and_fix(workdir, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"init_ckpt .*stage1/last.ckpt not found.*python main.py fit"):
        TokenizerModule(tokenizer=shapes_config(), stage="joint", init_ckpt="runs/tokenizer_shapes/stage1/last.ckpt")


def test_stage3_with_patchgan_and_adaptive_weight(workdir, monkeypatch):
    """The adversarial options through the CLI: a small PatchGAN from step 0 with VQGAN's adaptive
    weight trains both optimisers and logs the weight it used."""
    monkeypatch.chdir(workdir)
    fake_previous_stage(workdir / "runs/tokenizer_shapes/stage2/last.ckpt", "joint", seed=3)
    cli = run_cli(CONFIGS[3], "--model.init_args.disc_start=0", "--model.init_args.disc_ch=8",
                  "--model.init_args.disc_adaptive=true")
    model = cli.model
    assert cli.trainer.global_step >= 1 and model.disc is not None
    assert model.disc.net[0].out_channels == 8
    logged = cli.trainer.callback_metrics
    assert float(logged["train/gan_weight"]) > 0 and "train/gan_d" in logged
