"""Shard writing/reading: atomic resume, corrupt-sample skipping, buckets, equal batches per rank."""
import io
import warnings

import numpy as np
import pytest
from PIL import Image

from datamodules.base import bucket_batches
from datamodules.raw import RawShardDataModule
from datamodules.shards import num_samples_in, shard_urls, write_shards


def _image_sample(i: int) -> dict:
    rng = np.random.default_rng(i)
    h, w = (32, 32) if i % 2 == 0 else (32, 64)
    return {
        "png": rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        "cls.png": rng.integers(0, 7, (h, w), dtype=np.uint8),
        "json": {"caption": f"sample {i}", "index": i},
    }


def test_write_shards_resumes_without_regenerating(tmp_path):
    calls = []

    def make(i):
        calls.append(i)
        return _image_sample(i)

    stats = write_shards(make, 25, tmp_path, samples_per_shard=10)
    assert stats.shards_written == 3 and stats.samples_written == 25
    assert len(shard_urls(tmp_path)) == 3 and num_samples_in(tmp_path) == 25
    # Simulate a crash in the last shard: remove it; the rerun rewrites only that shard.
    (tmp_path / "shard-000002.tar").unlink()
    calls.clear()
    stats = write_shards(make, 25, tmp_path, samples_per_shard=10)
    assert stats.shards_skipped == 2 and stats.shards_written == 1
    assert calls == list(range(20, 25))


def test_missing_shard_dir_names_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        shard_urls(tmp_path / "nope")


def test_bucket_batches_groups_by_key():
    batches = list(bucket_batches(range(10), 2, key_fn=lambda x: x % 3, collate=list, flush_partial=True))
    assert all(len({x % 3 for x in b}) == 1 for b in batches)
    assert sorted(x for b in batches for x in b) == list(range(10))
    no_flush = list(bucket_batches(range(10), 2, key_fn=lambda x: x % 3, collate=list, flush_partial=False))
    assert all(len(b) == 2 for b in no_flush) and len(no_flush) == 4


def test_raw_datamodule_buckets_and_skips_corrupt(tmp_path):
    def make(i):
        sample = _image_sample(i)
        if i == 3:  # a corrupt PNG payload
            buf = io.BytesIO()
            Image.fromarray(sample["png"]).save(buf, format="PNG")
            sample["png"] = buf.getvalue()[:40]
        return sample

    write_shards(make, 40, tmp_path, samples_per_shard=10)
    dm = RawShardDataModule(train_dir=str(tmp_path), batch_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batches = list(dm.train_dataloader())
    assert len(batches) == 40 // 4
    for batch in batches:
        assert batch["image"].shape[0] == 4 and batch["image"].shape[1] == 3
        assert batch["image"].min() >= -1 and batch["image"].max() <= 1
        assert batch["class_map"].shape == batch["image"].shape[:1] + batch["image"].shape[2:]
    assert dm.skipped_samples() >= 1
    assert any("skipped corrupt sample" in str(w.message) for w in caught)


def test_equal_batches_on_every_rank(tmp_path, monkeypatch):
    write_shards(_image_sample, 30, tmp_path, samples_per_shard=4)  # 8 shards, uneven last one
    counts, keys = [], []
    for rank in range(3):
        monkeypatch.setenv("WORLD_SIZE", "3")
        monkeypatch.setenv("RANK", str(rank))
        dm = RawShardDataModule(train_dir=str(tmp_path), batch_size=2)
        batches = list(dm.train_dataloader())
        counts.append(len(batches))
        keys.append({k for b in batches for k in b["key"]})
    assert counts == [30 // (3 * 2)] * 3
    # node splitting: ranks read disjoint shards within one pass
    assert not (keys[0] & keys[1]) and not (keys[1] & keys[2])


def test_resize_to_multiple_of_patch(tmp_path):
    write_shards(_image_sample, 8, tmp_path, samples_per_shard=8)
    dm = RawShardDataModule(train_dir=str(tmp_path), batch_size=2, resize_to=48, multiple_of=16)
    for batch in dm.train_dataloader():
        h, w = batch["image"].shape[2:]
        assert h % 16 == 0 and w % 16 == 0
        assert batch["class_map"].shape[1:] == (h, w)
