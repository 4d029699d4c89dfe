"""Corrupt samples never crash or poison a run: shard sets with one sample of every corruption
kind train to the end (tokenizer on raw shards, AR model on pretokenised shards); each bad sample
is skipped, warned about once per kind and counted per reason; the run ends by printing and
logging the counts; too many bad samples stop the run with one clear error."""
import csv
import io

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from _tokenizer_data import tiny_config
from datamodules.pretokenized_dm import PretokenizedDataModule
from datamodules.raw import RawShardDataModule
from datamodules.shards import write_shards
from modules.ar.module import ARModule
from modules.common.errors import ConfigError
from modules.common.scale_schedule import ScaleSchedule
from modules.tokenizer import TokenizerModule
from test_ar_module import TINY

GOOD = 24  # 3 batches of 8: with Lightning's one-batch prefetch, 2 steps read exactly one pass


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def raw_sample(rng, size=(32, 32), **change):
    h, w = size
    sample = {"png": rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "cls.png": rng.integers(0, 7, (h, w), np.uint8),
              "json": {"caption": "a red circle", "width": w, "height": h}}
    sample.update(change)
    return {k: v for k, v in sample.items() if v is not None}


RAW_CORRUPT = {  # reason -> sample
    "missing_key": lambda r: raw_sample(r, png=None),
    "bad_image": lambda r: raw_sample(r, png=b"\x89PNG broken"),
    "label_shape": lambda r: raw_sample(r, **{"cls.png": r.integers(0, 7, (16, 32), np.uint8)}),
    "bad_meta": lambda r: raw_sample(r, json=b"{not json"),
    "shape": lambda r: raw_sample(r, json={"caption": "x", "width": 32, "height": 64}),
    "missing_caption": lambda r: raw_sample(r, json={"width": 32, "height": 32}),
    "image_size": lambda r: raw_sample(r, size=(30, 30), json={"caption": "odd", "width": 30, "height": 30}),
}


def write_raw(path):
    rng = np.random.default_rng(0)
    samples = [make(rng) for make in RAW_CORRUPT.values()] + [raw_sample(rng) for _ in range(GOOD)]
    samples[1]["png"] = samples[1]["png"]  # bytes stay bytes
    write_shards(lambda i: samples[i], len(samples), path, samples_per_shard=100)
    return str(path)


SCH = ScaleSchedule.square(2)


def pretok_sample(i, **change):
    targets = (np.arange(SCH.token_count) + i) % 16
    meta = {"text": f"a red shape {i % 2}", "grids": [list(g) for g in SCH.grids], "codebook_size": 16,
            "tokenizer_fingerprint": "tok0", "task": "t2i"}
    meta.update(change.pop("meta", {}))
    sample = {"json": {k: v for k, v in meta.items() if v is not None}, "targets.npy": targets.astype(np.int32),
              "inputs.npy": np.stack([targets, (targets + 1) % 16]).astype(np.int32)}
    sample.update(change)
    return {k: v for k, v in sample.items() if v is not None}


PRETOK_CORRUPT = {
    "missing_key": lambda i: pretok_sample(i, **{"targets.npy": None}),
    "bad_meta": lambda i: pretok_sample(i, meta={"grids": [[0, 0]]}),
    "dtype": lambda i: pretok_sample(i, **{"targets.npy": np.zeros(SCH.token_count, np.float32)}),
    "shape": lambda i: pretok_sample(i, **{"inputs.npy": np.zeros(SCH.token_count - 1, np.int32)}),
    "id_range": lambda i: pretok_sample(i, **{"targets.npy": np.full(SCH.token_count, -1, np.int32)}),
    "codebook_size": lambda i: pretok_sample(i, meta={"codebook_size": 32}),
    "fingerprint": lambda i: pretok_sample(i, meta={"tokenizer_fingerprint": "other"}),
    "missing_caption": lambda i: pretok_sample(i, meta={"text": None}),
    "undecodable": lambda i: pretok_sample(i, **{"inputs.npy": b"not an npy array"}),
}


def write_pretok(path, extra_bad=()):
    samples = [make(i) for i, make in enumerate(PRETOK_CORRUPT.values())]
    samples += [pretok_sample(i, **{"targets.npy": np.full(SCH.token_count, 16, np.int32)}) for i in extra_bad]
    samples += [pretok_sample(i) for i in range(GOOD)]
    write_shards(lambda i: samples[i], len(samples), path, samples_per_shard=100)
    return str(path)


def _trainer(tmp_path, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(str(tmp_path), name="", version=""),
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      default_root_dir=str(tmp_path), max_steps=2, limit_val_batches=0, num_sanity_val_steps=0,
                      **kw)


def logged(tmp_path) -> dict[str, float]:
    out = {}
    with open(tmp_path / "metrics.csv") as f:
        for row in csv.DictReader(f):
            out.update({k: float(v) for k, v in row.items() if k.startswith("data/") and v})
    return out


def test_tokenizer_fit_skips_every_raw_corruption_kind(tmp_path, capsys):
    torch.manual_seed(0)
    dm = RawShardDataModule(train_dir=write_raw(tmp_path / "raw"), batch_size=8, multiple_of=4, shuffle_buffer=1,
                            max_skipped_fraction=0.5)
    module = TokenizerModule(tokenizer=tiny_config(), stage="joint", val_oracle=False, rfid_extractor=None)
    with pytest.warns(UserWarning) as caught:
        trainer = _trainer(tmp_path)
        trainer.fit(module, dm)
    assert trainer.global_step == 2
    expected = {reason: 1 for reason in RAW_CORRUPT}
    assert dm.skipped_by_reason() == {"train": expected}
    warned = [str(w.message) for w in caught if "skipped corrupt sample" in str(w.message)]
    assert sorted(m.split("(")[1].split(")")[0] for m in warned) == sorted(expected)  # once per kind
    n = len(RAW_CORRUPT)
    assert f"data (train, fit): skipped {n} of {n + GOOD} samples read" in capsys.readouterr().out
    metrics = logged(tmp_path)
    assert metrics["data/train_skipped"] == n and metrics["data/train_skipped_label_shape"] == 1


def test_ar_fit_skips_every_pretokenised_corruption_kind(tmp_path, capsys):
    torch.manual_seed(0)
    dm = PretokenizedDataModule(train_dir=write_pretok(tmp_path / "p", extra_bad=(100, 101)), batch_size=8,
                                shuffle_buffer=1, max_skipped_fraction=0.5)
    module = ARModule(overrides=TINY, warmup_steps=1)
    module.tokenizer_fingerprint = "tok0"  # as if trained with that tokenizer
    trainer = _trainer(tmp_path)
    trainer.fit(module, dm)
    assert trainer.global_step == 2
    expected = {reason: 1 for reason in PRETOK_CORRUPT}
    expected["id_range"] = 3  # ids of -1, and two samples with ids = codebook size
    assert dm.skipped_by_reason() == {"train": expected}
    n = sum(expected.values())
    assert f"skipped {n} of {n + GOOD} samples read" in capsys.readouterr().out
    assert logged(tmp_path)["data/train_skipped_fingerprint"] == 1


def test_too_many_bad_samples_stop_the_run_clearly(tmp_path):
    dm = PretokenizedDataModule(train_dir=write_pretok(tmp_path / "p"), batch_size=8, shuffle_buffer=1,
                                max_skipped_fraction=0.1)
    module = ARModule(overrides=TINY, warmup_steps=1)
    with pytest.raises(ConfigError, match=r"train data .*skipped \d+ of \d+ samples read .*max_skipped_fraction=0.1"):
        _trainer(tmp_path).fit(module, dm)


@pytest.mark.parametrize("kwargs", [{"batch_size": -4}, {"batch_size": 0}, {"val_batch_size": -1},
                                    {"num_workers": -1}, {"shuffle_buffer": 0}, {"max_skipped_fraction": 2.0}])
def test_sizes_must_be_positive(kwargs, tmp_path):
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        RawShardDataModule(train_dir=str(tmp_path), **kwargs)
    with pytest.raises(ConfigError, match=next(iter(kwargs))):
        PretokenizedDataModule(train_dir=str(tmp_path), **kwargs)


def test_counts_come_back_from_dataloader_workers(tmp_path):
    dm = RawShardDataModule(train_dir=write_raw(tmp_path / "raw"), batch_size=8, multiple_of=4, num_workers=2,
                            max_skipped_fraction=0.5, shuffle_buffer=1)  # file order: every bad sample before the cut
    batches = list(dm.train_dataloader())  # the workers warn on their own stderr
    assert len(batches) == (len(RAW_CORRUPT) + GOOD) // 8
    counts = dm.sample_counts["train"]
    assert counts.skipped >= len(RAW_CORRUPT) and set(counts.per_reason()) == set(RAW_CORRUPT)
    assert counts.table[1:].sum() == counts.table.sum()  # counted by the workers, seen by the main process
