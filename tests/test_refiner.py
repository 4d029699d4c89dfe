"""Refiner (issue 14): flow matching, samplers, the module's contract, image-quality metrics and the
tokenizer-fingerprint checks. Tiny nets at 16-32 px."""
from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from evaluation import image_quality as iq
from modules.common.errors import ConfigError
from modules.refiner import (RefinerConfig, RefinerModule, RefinerNet, as_velocity, flow_matching_loss, guided,
                             load_refiner, sample_flow, time_grid)
from tests._tiny_checkpoints import write_tiny_checkpoints

ROOT = Path(__file__).resolve().parents[1]


def _net(seed: int = 0) -> RefinerNet:
    torch.manual_seed(seed)
    net = RefinerNet(RefinerConfig.tiny(cond_feature_dim=5))
    torch.nn.init.normal_(net.out.weight, std=0.1)  # a non-zero field (the last conv starts at zero)
    return net


def _cond(B=2, H=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, H, H, generator=g) * 2 - 1, torch.randn(B, 5, H // 4, H // 4, generator=g)


def test_flow_matching_loss_falls_on_a_tiny_model():
    net = _net()
    decoded, feats = _cond(B=8)
    x1 = decoded.flip(1) * 0.8  # a residual the condition determines
    v = lambda x, t: net(x, t, decoded, feats)  # noqa: E731

    def eval_loss():
        with torch.no_grad():
            return float(flow_matching_loss(v, x1, torch.Generator().manual_seed(123)))

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        loss = flow_matching_loss(v, x1, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = eval_loss()
    assert before > 1.0  # E||x1 - x0||² ≈ 1 + E x1²
    assert after < 0.6 * before, (before, after)


def test_euler_one_step_is_the_closed_form_update():
    net = _net()
    decoded, feats = _cond()
    v = lambda x, t: net(x, t, decoded, feats)  # noqa: E731
    x0 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    v0 = v(x0, torch.zeros(2))
    assert v0.abs().max() > 0
    torch.testing.assert_close(sample_flow(v, x0, 1, "euler"), x0 + v0)
    # Heun, one step: x0 + (v(x0, 0) + v(x0 + v0, 1)) / 2
    torch.testing.assert_close(sample_flow(v, x0, 1, "heun"), x0 + 0.5 * (v0 + v(x0 + v0, torch.ones(2))))
    # Euler on a linear field v = x1 - x0 at t = 0 reaches x1 in one step; a constant field in any number
    const = torch.full_like(x0, 0.3)
    torch.testing.assert_close(sample_flow(lambda x, t: const, x0, 7), x0 + 0.3)
    torch.testing.assert_close(sample_flow(lambda x, t: const, x0, 5, shift=0.3), x0 + 0.3)


def test_t_zero_fraction_trains_that_share_of_samples_at_the_sampling_start():
    seen = []
    net = lambda x, t: seen.append(t) or torch.zeros_like(x)  # noqa: E731
    x1 = torch.randn(4000, 1, 1, 1)
    flow_matching_loss(net, x1, torch.Generator().manual_seed(0), "data", t_zero_fraction=0.5)
    t = seen[0]
    assert 0.47 < float((t == 0).float().mean()) < 0.53
    assert 0.45 < float(t[t > 0].mean()) < 0.55  # the rest stays uniform
    seen.clear()
    flow_matching_loss(net, x1, torch.Generator().manual_seed(0), "data")
    assert float((seen[0] == 0).float().mean()) == 0.0


def test_time_grid_shift_moves_steps_towards_the_data_end():
    assert time_grid(4) == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    shifted = time_grid(4, 1 / 3)
    assert shifted[0] == pytest.approx(0.0) and shifted[-1] == pytest.approx(1.0)
    assert shifted == sorted(shifted)
    # σ = 0.75 -> (0.75 / 3) / (1 - 2/3 · 0.75) = 0.5: the first step covers half the way
    assert shifted[1] == pytest.approx(0.5)
    assert time_grid(4, 3.0)[1] < 0.25  # shift > 1: small steps at the noise end
    seen = []
    sample_flow(lambda x, t: seen.append(float(t[0])) or torch.zeros_like(x), torch.zeros(1, 3, 2, 2), 4, shift=1 / 3)
    assert seen == pytest.approx(shifted[:-1])
    with pytest.raises(ValueError, match="shift"):
        time_grid(4, 0.0)


def test_data_prediction_one_euler_step_returns_the_networks_x1_and_its_loss_is_in_data_space():
    net = _net()
    decoded, feats = _cond()
    x1_hat = lambda x, t: net(x, t, decoded, feats)  # noqa: E731  (the network predicts x1)
    x0 = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    v = as_velocity(x1_hat, "data")
    # one step from t = 0: x0 + (x̂1 - x0) / 1 = x̂1(x0, 0), the regression mean at the optimum
    torch.testing.assert_close(sample_flow(v, x0, 1), x1_hat(x0, torch.zeros(2)))
    # the last of n steps lands on the network's prediction at t = 1 - 1/n
    x_mid = sample_flow(v, x0, 2)  # 2 steps: x_{1/2}, then x̂1(x_{1/2}, 1/2)
    x_half = x0 + 0.5 * (x1_hat(x0, torch.zeros(2)) - x0)
    torch.testing.assert_close(x_mid, x1_hat(x_half, torch.full((2,), 0.5)))
    # loss: ||x̂1(x_t, t) - x1||² with the same draws of t and x0
    x1 = decoded.flip(1)
    g = torch.Generator().manual_seed(3)
    e0, t_B = torch.randn(x1.shape, generator=g), torch.rand(2, generator=g)
    x_t = (1 - t_B.view(-1, 1, 1, 1)) * e0 + t_B.view(-1, 1, 1, 1) * x1
    expect = ((x1_hat(x_t, t_B) - x1) ** 2).mean()
    torch.testing.assert_close(flow_matching_loss(x1_hat, x1, torch.Generator().manual_seed(3), "data"), expect)
    with pytest.raises(ValueError, match="prediction"):
        as_velocity(x1_hat, "noise")


def test_guidance_weight_one_is_the_conditional_field_and_two_extrapolates():
    cond, uncond = (lambda x, t: x + 1.0), (lambda x, t: x * 0.0)
    x, t = torch.ones(1, 3, 2, 2), torch.zeros(1)
    assert guided(cond, uncond, 1.0) is cond
    torch.testing.assert_close(guided(cond, uncond, 2.0)(x, t), 2 * (x + 1.0))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = write_tiny_checkpoints(tmp_path_factory.mktemp("refiner"))
    return d


def _module(tok_ckpt, objective="flow", seed=0, **kwargs):
    torch.manual_seed(seed)
    m = RefinerModule(str(tok_ckpt), net=RefinerConfig.tiny(), objective=objective, **kwargs)
    torch.nn.init.normal_(m.net.out.weight, std=0.1)
    m.residual_scale.fill_(0.2)
    return m.eval()


def _codes(m, B=2, side=16):
    x = torch.rand(B, 3, side, side, generator=torch.Generator().manual_seed(2)) * 2 - 1
    return x, m.tokenizer.encode(x).targets


def test_refined_output_has_the_decoders_shape_and_range_and_euler_one_step_matches(tiny):
    for objective in ("flow", "regression"):
        m = _module(tiny / "tok.ckpt", objective)
        _, codes = _codes(m)
        refined, decoded = m.refine_codes(codes, steps=2)
        assert refined.shape == decoded.shape == (2, 3, 16, 16)
        assert refined.min() >= -1 and refined.max() <= 1
        assert not torch.equal(refined, decoded)  # the net's output moves it
    m = _module(tiny / "tok.ckpt")
    decoded, feats = m.condition(codes)
    x0 = torch.randn(decoded.shape, generator=torch.Generator().manual_seed(9))
    expect = (decoded + 0.2 * (x0 + m.net(x0, torch.zeros(2), decoded, feats))).clamp(-1, 1)
    torch.testing.assert_close(m.refine(decoded, feats, steps=1, seed=9), expect)


def test_data_prediction_refiner_one_step_is_the_network_output_at_scaled_noise(tiny):
    m = _module(tiny / "tok.ckpt", prediction="data", noise_scale=0.3)
    _, codes = _codes(m)
    decoded, feats = m.condition(codes)
    x0 = 0.3 * torch.randn(decoded.shape, generator=torch.Generator().manual_seed(9))
    expect = (decoded + 0.2 * m.net(x0, torch.zeros(2), decoded, feats)).clamp(-1, 1)
    torch.testing.assert_close(m.refine(decoded, feats, steps=1, seed=9), expect)
    for bad, match in (({"prediction": "noise"}, "prediction"), ({"noise_scale": 0.0}, "noise_scale"),
                       ({"t_zero_fraction": 1.0}, "t_zero_fraction")):
        with pytest.raises(ConfigError, match=match):
            RefinerModule(net=RefinerConfig.tiny(), **bad)


def test_sampler_is_seed_deterministic(tiny):
    m = _module(tiny / "tok.ckpt")
    _, codes = _codes(m)
    decoded, feats = m.condition(codes)
    a = m.refine(decoded, feats, steps=3, sampler="heun", seed=4)
    b = m.refine(decoded, feats, steps=3, sampler="heun", seed=4)
    c = m.refine(decoded, feats, steps=3, sampler="heun", seed=5)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    r = _module(tiny / "tok.ckpt", "regression")
    assert torch.equal(r.refine(decoded, feats, seed=1), r.refine(decoded, feats, seed=2))  # deterministic control


def _fit(tmp_path, tok_ckpt, objective="flow", steps=3):
    from datamodules.refiner_dm import RefinerDataModule
    from tests._tokenizer_data import write_raw_shards

    write_raw_shards(tmp_path / "train", [(32, 32)] * 8 + [(64, 32)] * 8, samples_per_shard=16)
    dm = RefinerDataModule(train_dir=str(tmp_path / "train"), batch_size=4, multiple_of=4, shuffle_buffer=4)
    torch.manual_seed(0)
    m = RefinerModule(str(tok_ckpt), net=RefinerConfig.tiny(), objective=objective, scale_batches=2,
                      warmup_steps=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(m, datamodule=dm)
    path = tmp_path / f"{objective}.ckpt"
    trainer.save_checkpoint(path)
    return m, path


def test_fit_saves_a_refiner_that_loads_and_refuses_another_tokenizer(tiny, tmp_path):
    from modules.tokenizer import checkpoint_fingerprint

    m, path = _fit(tmp_path, tiny / "tok.ckpt")
    assert 0.0 < float(m.residual_scale) < 2.0  # RMS of the decoder's residual, estimated at fit start
    fp = checkpoint_fingerprint(str(tiny / "tok.ckpt"))
    loaded = load_refiner(str(path))
    assert loaded.tokenizer_fingerprint == fp
    torch.testing.assert_close(loaded.residual_scale, m.residual_scale)
    _, codes = _codes(loaded)
    torch.testing.assert_close(loaded.refine_codes(codes, seed=1)[0], m.eval().refine_codes(codes, seed=1)[0])
    same = load_refiner(str(path), loaded.tokenizer, fp)
    assert same.tokenizer is loaded.tokenizer
    with pytest.raises(ConfigError) as err:
        load_refiner(str(path), loaded.tokenizer, "0123456789abcdef")
    msg = str(err.value)
    assert "\n" not in msg and fp in msg and "0123456789abcdef" in msg
    with pytest.raises(ConfigError, match="expected a refiner checkpoint"):
        load_refiner(str(tiny / "tok.ckpt"))


def test_datamodule_refuses_an_encoder_of_another_tokenizer(tmp_path):
    from datamodules.refiner_dm import RefinerDataModule

    dm = RefinerDataModule(train_dir=str(tmp_path), tokenizer_fingerprint="aaaa")
    with pytest.raises(ConfigError, match="tokenizer_fingerprint is aaaa .* file is bbbb"):
        dm.use_encoder(lambda x: [], "bbbb")
    dm.use_encoder(lambda x: ["codes"], "aaaa")  # the same file: accepted
    assert dm.encoder(None) == ["codes"]


def test_datamodule_caches_each_scenes_condition_and_equals_the_uncached_batches(tiny, tmp_path):
    from datamodules.refiner_dm import RefinerDataModule
    from modules.refiner import CodeEncoder
    from tests._tokenizer_data import write_raw_shards

    write_raw_shards(tmp_path / "val", [(32, 32)] * 6 + [(64, 32)] * 4, samples_per_shard=10)
    m = _module(tiny / "tok.ckpt")
    calls = []

    class Counting(CodeEncoder):
        def __call__(self, images):
            calls.append(images.shape[0])
            return super().__call__(images)

    def batches(cache):
        dm = RefinerDataModule(val_dir=str(tmp_path / "val"), val_batch_size=4, multiple_of=4, cache=cache)
        dm.use_encoder(Counting(m.tokenizer), None)
        return dm, [b for b in dm.val_dataloader()]

    dm, first = batches(cache=True)
    n = sum(len(b["key"]) for b in first)
    assert n >= 8 and sum(calls) == n and len(dm._cached) == n
    second = [b for b in dm.val_dataloader()]
    assert sum(calls) == n  # the second pass encodes nothing
    _, plain = batches(cache=False)
    assert sum(calls) == 2 * n
    for a, b, c in zip(first, second, plain):
        assert a["key"] == b["key"] == c["key"]
        for name in ("decoded", "features"):
            assert torch.equal(a[name], b[name]) and torch.allclose(a[name], c[name], atol=1e-6)
        assert all(torch.equal(x, y) for x, y in zip(a["codes"], c["codes"]))
        # the condition the module computes from the codes is the cached one
        decoded, feats = m.condition(a["codes"])
        assert torch.allclose(decoded, a["decoded"], atol=1e-6) and torch.allclose(feats, a["features"], atol=1e-6)
    crop = RefinerDataModule(val_dir=str(tmp_path / "val"), multiple_of=4, train_crop=16)
    assert crop.cache is False  # random windows: every epoch's pixels are new


# ----------------------------------------------------------------------------- metrics
def test_image_quality_metrics_against_reference_values():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g) * 1.6 - 0.8
    y = x.clone()
    y[0, 0, 5, 5] += 0.2  # 0.1 on [0, 1]
    # Laplacian: the centre changes by 4·0.1, its 4 neighbours by 0.1 -> squared sum 20·0.01
    mse = 20 * 0.1 ** 2 / (2 * 3 * 16 * 16)
    assert iq.laplacian_psnr(y, x) == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert iq.psnr(y, x) == pytest.approx(10 * math.log10(1 / (0.01 / (2 * 3 * 16 * 16))), abs=1e-3)
    assert iq.ssim(x, x) == pytest.approx(1.0, abs=1e-6)
    assert iq.spectral_distance(x, x) == 0.0
    assert iq.spectral_distance(x * 0.5, x) == pytest.approx(math.log(4), abs=1e-4)  # power x 1/4 at every radius
    smooth = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    assert iq.spectral_distance(smooth, x) > 0.1 and iq.laplacian_psnr(smooth, x) < iq.laplacian_psnr(y, x)


# ----------------------------------------------------------------------------- generate --refiner
def _save_refiner(path, tok_ckpt, fingerprint=None):
    """An (untrained, non-zero) refiner checkpoint as Lightning lays it out; `fingerprint` overrides
    the tokenizer file it records (a refiner of another tokenizer)."""
    import dataclasses

    m = _module(tok_ckpt)
    hp = {**m.hparams, "net": dataclasses.asdict(m.net.config)}  # as the CLI writes it: a mapping
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": hp,
                "refiner": {"objective": "flow", "tokenizer_ckpt": str(tok_ckpt),
                            "tokenizer_fingerprint": fingerprint or m.tokenizer_fingerprint}}, path)
    return path


def test_generate_refines_ar_samples_and_refuses_a_refiner_of_another_tokenizer(tiny, tmp_path, capsys):
    import json

    import numpy as np
    from PIL import Image

    import main
    from commands.generate import run

    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                                   "prompt": "a photo of a circle"}) + "\n")
    args = dict(ckpt=str(tiny / "ar.ckpt"), prompts=str(prompts), samples=2, height=32, width=32,
                sampling={"seed": 3, "top_k": 10})
    run(out=str(tmp_path / "plain"), **args)
    ref = _save_refiner(tmp_path / "ref.ckpt", tiny / "tok.ckpt")
    run(out=str(tmp_path / "refined"), refiner=str(ref), refiner_steps=2, **args)
    run(out=str(tmp_path / "refined2"), refiner=str(ref), refiner_steps=2, **args)
    read = lambda d: np.asarray(Image.open(tmp_path / d / "00000" / "samples" / "0000.png"))  # noqa: E731
    assert read("refined").shape == read("plain").shape == (32, 32, 3)
    assert not np.array_equal(read("refined"), read("plain"))  # the same codes, refined
    assert np.array_equal(read("refined"), read("refined2"))  # seeded

    other = _save_refiner(tmp_path / "other.ckpt", tiny / "tok.ckpt", fingerprint="0123456789abcdef")
    code = main.main(["generate", "--ckpt", str(tiny / "ar.ckpt"), "--prompts", str(prompts), "--out",
                      str(tmp_path / "o"), "--height", "32", "--width", "32", "--refiner", str(other)])
    err = capsys.readouterr().err
    assert code == 2, err
    errs = [ln for ln in err.strip().splitlines() if ln.startswith("error:")]
    assert len(errs) == 1 and "0123456789abcdef" in errs[0] and "other.ckpt" in errs[0], err


def test_bench_table_rows_and_the_decoder_row_against_a_direct_computation(tiny, tmp_path):
    from benchmarks.refiner import bench_refiner
    from tests._tokenizer_data import write_raw_shards

    write_raw_shards(tmp_path / "val", [(32, 32)] * 8, samples_per_shard=8)
    flow = _save_refiner(tmp_path / "flow.ckpt", tiny / "tok.ckpt")
    tables = bench_refiner(str(flow), str(flow), str(tmp_path / "val"), steps=(1, 2), max_images=8, batch_size=4,
                           out=str(tmp_path / "bench"), crops=4)
    table = tables["64 px"]
    assert list(table) == ["decoder", "regression", "flow 1 step", "flow 2 steps"]
    assert all(row["images"] == 8 and math.isfinite(row["psnr"]) and math.isfinite(row["fid_shapes"])
               for row in table.values())
    assert (tmp_path / "bench" / "crops.png").is_file() and (tmp_path / "bench" / "table.json").is_file()
    # the decoder row: PSNR of tokenizer.decode(encode(x)) against x, over the same 8 images
    from datamodules.refiner_dm import RefinerDataModule
    from modules.refiner import CodeEncoder

    m = load_refiner(str(flow))
    dm = RefinerDataModule(val_dir=str(tmp_path / "val"), val_batch_size=8, multiple_of=4)
    dm.use_encoder(CodeEncoder(m.tokenizer), None)
    batch = next(iter(dm.val_dataloader()))
    decoded = m.tokenizer.decode(batch["codes"], m.tokenizer.schedule_for(32, 32))
    assert table["decoder"]["psnr"] == pytest.approx(iq.psnr(decoded, batch["image"]), abs=1e-4)


def test_experiment_config_fast_dev_run(tiny, tmp_path, monkeypatch):
    from commands.lightning_cli import ProjectCLI
    from tests._tokenizer_data import write_raw_shards

    write_raw_shards(tmp_path / "train", [(32, 32)] * 8 + [(64, 32)] * 8, samples_per_shard=16)
    write_raw_shards(tmp_path / "val", [(32, 32)] * 4, seed=5)
    monkeypatch.chdir(tmp_path)
    cli = ProjectCLI(args=["fit", "--config", str(ROOT / "configs/experiment/refiner_shapes.yaml"),
                           "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false",
                           f"--model.init_args.tokenizer_ckpt={tiny / 'tok.ckpt'}",
                           f"--data.init_args.train_dir={tmp_path / 'train'}", f"--data.init_args.val_dir={tmp_path / 'val'}",
                           "--data.init_args.batch_size=4", "--data.init_args.val_batch_size=4"])
    assert cli.trainer.global_step == 1
    assert cli.model.hparams.objective == "flow" and float(cli.model.residual_scale) > 0
    assert cli.trainer.logged_metrics["val/psnr_decoder"] > 0


def test_report_section_reads_the_bench_table_and_crops(tmp_path):
    import json

    from PIL import Image

    from commands.report import refiner_sections

    bench = tmp_path / "refiner" / "bench"
    bench.mkdir(parents=True)
    row = {"psnr": 28.0, "ssim": 0.9, "hf_psnr": 20.0, "spectral_dist": 0.1, "fid_shapes": 0.01, "agreement": 0.8,
           "agreement_color_position": 0.95, "agreement_gt": 1.0, "images": 4}
    (bench / "table.json").write_text(json.dumps({"ckpt": "f.ckpt", "regression_ckpt": "r.ckpt", "sampler": "euler",
                                                  "tables": {"64 px": {"decoder": row, "flow 1 step": row}}}))
    Image.new("RGB", (8, 8)).save(bench / "crops.png")
    files = tmp_path / "files"
    files.mkdir()
    assert refiner_sections(tmp_path / "files", files) == []  # nothing there: no section
    [(heading, blocks)] = refiner_sections(tmp_path, files)
    assert heading == "Diffusion refiner" and (files / "refiner_crops.png").is_file()
    tables = [b for b in blocks if b[0] == "table"]
    assert tables[0][1] == "64 px" and [r[0] for r in tables[0][3]] == ["decoder", "flow 1 step"]
    assert tables[0][3][0][1:] == [28.0, 0.9, 20.0, 0.1, 0.01, 0.8, 0.95]
