"""BenchmarkCallback during `fit`: every N optimizer steps it writes a full suite folder
(GenEval layout the scorer reads back, DPG, EditCanvas, understanding, metrics.json) and logs the
headline scores to the CSV logger at that step; the model is back in training mode afterwards.
In `validate` it refuses a suite resolution whose scale count the checkpoint never trained on
(unless allowed, then metrics.json says so) and a tokenizer that is not the model's."""
import csv
import json

import lightning
import pytest
import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from callbacks.evaluation import BenchmarkCallback
from modules.tokenizer import checkpoint_fingerprint
from datamodules.pretokenized_dm import PretokenizedDataModule
from evaluation.geneval import score_geneval
from modules.ar.module import ARModule
from modules.tokenizer import TokenizerConfig, TokenizerModule
from tests.test_ar_module import make_shards

TINY_AR = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_query_groups": 1, "intermediate_size": 64}


def save_tokenizer(path, seed: int = 0):
    torch.manual_seed(seed)
    cfg = TokenizerConfig(codebook_size=64, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, semantic_ch=8,
                          semantic_decoder_ch=8)  # patch 4: 32 px -> 8x8 grid
    tok = TokenizerModule(cfg, val_oracle=False, rfid_extractor=None)
    torch.save({"state_dict": tok.state_dict(), "hyper_parameters": dict(tok.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return tok


def test_periodic_suite_during_fit(tmp_path):
    tok_path = tmp_path / "tok.ckpt"
    save_tokenizer(tok_path)
    shards = make_shards(tmp_path / "shards", side=3, n=8, codebook=64, i2t_every=0,
                         fingerprint=checkpoint_fingerprint(tok_path))
    module = ARModule(overrides=TINY_AR, tokenizer_ckpt=str(tok_path), text_tokenizer="shapes-words",
                      lr=1e-3, warmup_steps=1)
    bench = BenchmarkCallback(every_n_steps=2, sampling={"top_k": 4, "seed": 0},
                              fit_suite={"geneval_limit": 3, "images_per_prompt": 1, "dpg_prompts": 1,
                                         "editcanvas_per_task": 1, "understanding_scenes": 1,
                                         "width": 32, "height": 32})
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=5, logger=CSVLogger(tmp_path, name="", version=""),
                         callbacks=[bench], enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, log_every_n_steps=1, default_root_dir=str(tmp_path))
    trainer.fit(module, PretokenizedDataModule(train_dir=shards, batch_size=4))

    root = tmp_path / "benchmarks"
    assert sorted(p.name for p in root.iterdir()) == ["step_0000002", "step_0000004"]  # not at 5
    for step in (2, 4):
        folder = root / f"step_{step:07d}"
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"geneval", "dpg", "editcanvas", "understanding"} <= set(metrics)
        assert metrics["step"] == step and metrics["geneval"]["images"] == 3
        # trained on 3-scale images, scored at 32 px = 8 scales: during fit recorded, not refused
        assert metrics["untrained_scales"] is True and metrics["untrained_scale_counts"] == [8]
        assert metrics["trained_scale_counts"] == {"3": 4 * step}
        rescored = score_geneval(folder / "geneval")  # the official layout reads back
        assert abs(rescored.overall - metrics["geneval"]["overall"]) < 1e-9
        assert (folder / "geneval_grid.png").is_file()
    with open(tmp_path / "metrics.csv") as f:
        logged = {int(r["step"]) for r in csv.DictReader(f) if r.get("bench/geneval/overall")}
    assert logged == {2, 4}
    assert module.training and bench.last_metrics["step"] == 4


def _trainer(tmp_path, bench):
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=1, logger=False, callbacks=[bench],
                      enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(tmp_path))


def test_validate_refuses_untrained_scales_and_another_tokenizer(tmp_path):
    tok_path = tmp_path / "tok.ckpt"
    save_tokenizer(tok_path)
    shards = make_shards(tmp_path / "shards", side=3, n=4, codebook=64, i2t_every=0,
                         fingerprint=checkpoint_fingerprint(tok_path))
    dm = lambda: PretokenizedDataModule(train_dir=shards, val_dir=shards, batch_size=4)  # noqa: E731
    module = ARModule(overrides=TINY_AR, tokenizer_ckpt=str(tok_path), text_tokenizer="shapes-words")
    trainer = _trainer(tmp_path, BenchmarkCallback())
    trainer.fit(module, dm())
    ckpt = tmp_path / "ar.ckpt"
    trainer.save_checkpoint(ckpt)  # trained on 3 scales (a 3x3 grid: 12 px at patch 4)
    suite = {"geneval_limit": 1, "images_per_prompt": 1, "dpg_prompts": 0, "editcanvas_per_task": 0,
             "understanding_scenes": 0, "width": 32, "height": 32}

    def validate(**kw):
        bench = BenchmarkCallback(validate_suite=suite, out_dir=str(tmp_path / "v"), **kw)
        fresh = ARModule(overrides=TINY_AR, tokenizer_ckpt=str(tok_path), text_tokenizer="shapes-words")
        _trainer(tmp_path, bench).validate(fresh, dm(), ckpt_path=str(ckpt), verbose=False)
        return json.loads((tmp_path / "v" / "benchmarks" / "validate" / "metrics.json").read_text())

    with pytest.raises(ValueError) as err:
        validate()
    msg = str(err.value)
    assert "\n" not in msg and "32x32 px needs 8 scales" in msg and "scale counts 3 (12 px square)" in msg
    assert "allow_untrained_scales: true" in msg and not (tmp_path / "v").exists()
    metrics = validate(allow_untrained_scales=True)
    assert metrics["untrained_scales"] is True and metrics["untrained_scale_counts"] == [8]
    assert metrics["trained_scale_counts"] == {"3": 4} and metrics["geneval"]["images"] == 1
    assert metrics["step"] == trainer.global_step > 0   # the checkpoint's steps, not the validate loop's 0

    save_tokenizer(tmp_path / "retrained.ckpt", seed=1)
    with pytest.raises(ValueError) as err:
        validate(allow_untrained_scales=True, tokenizer_ckpt=str(tmp_path / "retrained.ckpt"))
    msg = str(err.value)
    assert str(tmp_path / "retrained.ckpt") in msg and checkpoint_fingerprint(tmp_path / "retrained.ckpt") in msg
    assert f"trained with tokenizer file {checkpoint_fingerprint(tok_path)}" in msg and "\n" not in msg
