"""Shard writing/reading: atomic resume, corrupt-sample skipping, buckets, equal batches per rank."""
import io
import warnings

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from datamodules.base import bucket_batches
from datamodules.raw import RawShardDataModule
from datamodules.shards import decode_json, num_samples_in, shard_urls, write_shards


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
    # a buffer smaller than the data: the epoch reads the first pass (a larger one draws from later
    # passes too, and may never emit the corrupt sample in 40 draws)
    dm = RawShardDataModule(train_dir=str(tmp_path), batch_size=4, shuffle_buffer=4)
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


def test_a_list_of_directories_reads_every_shard_and_sums_counts(tmp_path):
    write_shards(_image_sample, 25, tmp_path / "a", samples_per_shard=10)
    write_shards(lambda i: _image_sample(100 + i), 7, tmp_path / "b", samples_per_shard=10)
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert shard_urls(dirs) == shard_urls(dirs[0]) + shard_urls(dirs[1]) and len(shard_urls(dirs)) == 4
    assert num_samples_in(dirs) == 32
    with pytest.raises(FileNotFoundError, match="nope"):
        shard_urls([dirs[0], str(tmp_path / "nope")])


def test_train_crop_cuts_training_windows_only(tmp_path):
    """Training images above train_crop come out as random windows (image and label maps cut
    alike, scene metadata replaced by the box); validation images are never cropped."""
    write_shards(_image_sample, 16, tmp_path / "d", samples_per_shard=8)  # 32x32 and 32x64
    dm = RawShardDataModule(train_dir=[str(tmp_path / "d")], val_dir=str(tmp_path / "d"), batch_size=4,
                            train_crop=16, multiple_of=8)
    train = [b for _, b in zip(range(4), dm.train_dataloader())]
    assert all(tuple(b["image"].shape[-2:]) == (16, 16) and tuple(b["class_map"].shape[-2:]) == (16, 16)
               for b in train)
    assert all("crop" in m and "index" not in m for b in train for m in b["meta"])
    full = {m["index"]: (img, cls) for b in dm.val_dataloader()
            for img, cls, m in zip(b["image"], b["class_map"], b["meta"])}
    assert {tuple(img.shape[-2:]) for img, _ in full.values()} == {(32, 32), (32, 64)}
    keys = {s["__key__"]: decode_json(s["json"])["index"] for s in wds.WebDataset(shard_urls(tmp_path / "d"),
                                                                                  shardshuffle=False, empty_check=False)}
    tops = set()
    for b in train:  # every window is the source at its box
        for img, cls, meta, key in zip(b["image"], b["class_map"], b["meta"], b["key"]):
            top, left, h, w = meta["crop"]
            src_img, src_cls = full[keys[key]]
            assert torch.equal(img, src_img[:, top:top + h, left:left + w])
            assert torch.equal(cls, src_cls[top:top + h, left:left + w])
            tops.add((top, left))
    assert len(tops) > 3  # random windows, not one fixed corner
    with pytest.raises(ValueError, match="train_crop 4"):
        RawShardDataModule(train_dir=str(tmp_path / "d"), train_crop=4, multiple_of=8)


def _epoch_keys(dm, batches_per_epoch: int) -> list[str]:
    """One short (virtual) epoch: a fresh loader, as Lightning's reload_dataloaders_every_n_epochs
    builds one, cut after `batches_per_epoch` batches like limit_train_batches."""
    import itertools

    return [k for b in itertools.islice(iter(dm.train_dataloader()), batches_per_epoch) for k in b["key"]]


def test_short_epochs_read_every_sample_not_each_shard_head(tmp_path):
    """Epochs shorter than a shard continue the stream: 3 shards of 40, epochs of 20 samples.
    Restarting every shard at its first sample (the old loader) can read at most the first
    20 + buffer samples of each shard however long it trains."""
    write_shards(lambda i: _image_sample(2 * i), 120, tmp_path, samples_per_shard=40)
    dm = RawShardDataModule(train_dir=str(tmp_path), batch_size=4, shuffle_buffer=8)
    read = [_epoch_keys(dm, 5) for _ in range(12)]  # two passes' worth
    distinct = {k for keys in read for k in keys}
    assert len(distinct) >= 110, len(distinct)
    assert len(set(read[0]) & set(read[1])) <= 4  # the second epoch reads on, it does not start over
    first_pass = {k for keys in read[:6] for k in keys}
    assert len(first_pass) >= 100  # each pass reads (almost) every sample once
    # the position is saved with the checkpoint: a restored datamodule reads on from there
    state = dm.state_dict()
    fresh = RawShardDataModule(train_dir=str(tmp_path), batch_size=4, shuffle_buffer=8)
    fresh.load_state_dict(state)
    assert _epoch_keys(fresh, 5) == _epoch_keys(dm, 5)


def test_shuffled_passes_start_at_the_position():
    import itertools

    from datamodules.shards import shuffled_passes

    urls, sizes = ["a", "b", "c"], [10, 20, 5]
    first = list(itertools.islice(shuffled_passes(urls, sizes, seed=3, position=0), 6))
    assert all(skip == 0 for _, skip in first) and sorted(u for u, _ in first[:3]) == urls
    assert sorted(u for u, _ in first[3:]) == urls and first[:3] != first[3:]  # the next pass reshuffles
    order = [u for u, _ in first[:3]]
    cum = 0
    for name in order:  # position 12 lies in whichever shard the pass's sizes put it
        size = sizes[urls.index(name)]
        if 12 < cum + size:
            assert next(shuffled_passes(urls, sizes, seed=3, position=12)) == (name, 12 - cum)
            break
        cum += size
    # one whole pass later: the second pass, from its start
    assert list(itertools.islice(shuffled_passes(urls, sizes, seed=3, position=35), 3)) == first[3:]


def test_each_pass_is_a_permutation_even_with_a_larger_buffer(tmp_path):
    """The shuffle buffer empties at each pass's end: with 10 samples and a buffer of 256, every
    epoch of 10 (a whole pass) holds each sample once, in a new order each pass."""
    write_shards(lambda i: _image_sample(2 * i), 10, tmp_path, samples_per_shard=5)
    dm = RawShardDataModule(train_dir=str(tmp_path), batch_size=1, shuffle_buffer=256)
    epochs = [_epoch_keys(dm, 10) for _ in range(3)]
    assert all(sorted(keys) == sorted(epochs[0]) and len(set(keys)) == 10 for keys in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
