"""`main.py pretokenize`: shards read back exactly, resume skips finished shards, corrupt samples
are counted, variants pair inputs with their targets, user errors name the value and the fix."""
import json

import lightning
import numpy as np
import pytest
import torch

from _tokenizer_data import tiny_config, write_raw_shards
from commands import UsageError
from commands.pretokenize import run
from datamodules.pretokenized_dm import decode_pretokenized_item
from datamodules.raw import decode_raw_sample
from datamodules.shards import shard_urls
from modules.tokenizer import TokenizerModule, load_tokenizer

SIZES = [(32, 32)] * 6 + [(48, 24)] * 3 + [(32, 32)] * 3  # two buckets, 12 samples


def make_checkpoint(path):
    torch.manual_seed(0)
    m = TokenizerModule(tokenizer=tiny_config(), stage="joint", val_oracle=False, rfid_extractor=None)
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretok")
    write_raw_shards(root / "raw", SIZES, seed=0, corrupt=(4,), samples_per_shard=5)
    return root, make_checkpoint(root / "tok.ckpt")


def raw_images(root):
    import webdataset as wds

    out = {}
    for s in wds.WebDataset(shard_urls(str(root / "raw")), shardshuffle=False, empty_check=False):
        try:
            out[s["__key__"]] = decode_raw_sample(s, None, 4)
        except Exception:  # the corrupt one
            pass
    return out


def read_back(directory, variant=0):
    """(key, meta, item) per sample in shard order, decoded by the datamodule's own decoder
    (text kept as the string: the identity text encoder)."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    for s in wds.WebDataset(shard_urls(str(directory)), shardshuffle=False, empty_check=False):
        yield s["__key__"], json.loads(s["json"]), decode_pretokenized_item(s, lambda t: t, variant=variant, rng=rng)


def flat(maps) -> np.ndarray:
    return torch.cat([m.reshape(-1) for m in maps]).numpy()


def test_pretokenised_shards_read_back_exactly(setup, capsys):
    root, ckpt = setup
    stats = run(raw=str(root / "raw"), checkpoint=str(ckpt), out=str(root / "out0"), self_correct=0.0,
                batch_size=1, samples_per_shard=4)
    assert stats["samples_written"] == 11 and stats["samples_skipped"] == 1 and stats["images_encoded"] == 11
    assert "1 corrupt raw samples skipped" in capsys.readouterr().out
    tok = load_tokenizer(str(ckpt)).tokenizer
    images = raw_images(root)
    got = list(read_back(root / "out0"))
    assert len(got) == 11 and {key for key, _, _ in got} == set(images)
    for key, meta, g in got:
        item = images[key]
        codes = tok.encode(item["image"][None])
        expect = codes.flat()[0].numpy()
        assert g["schedule"] == codes.schedule
        for name in ("clean_targets", "targets", "inputs"):   # no self-correction: all three the clean codes
            assert np.array_equal(flat(g[name]), expect), name
        assert (meta["height"], meta["width"]) == tuple(item["image"].shape[1:])
        assert meta["grids"] == [list(x) for x in codes.schedule.grids]
        assert meta["codebook_size"] == 256 and meta["task"] == "t2i" and len(meta["tokenizer_fingerprint"]) == 16
        assert g["text_ids"] == item["text"] and meta["meta"]["scene"] == item["meta"]["scene"]
        assert g["fingerprint"] == meta["tokenizer_fingerprint"] and g["key"] == key


def test_resume_skips_finished_shards_without_encoding(setup):
    root, ckpt = setup
    first = run(raw=str(root / "raw"), checkpoint=str(ckpt), out=str(root / "out1"), samples_per_shard=5)
    again = run(raw=str(root / "raw"), checkpoint=str(ckpt), out=str(root / "out1"), samples_per_shard=5)
    assert first["shards_written"] == 3 and again["shards_written"] == 0 and again["shards_skipped"] == 3
    assert again["images_encoded"] == 0
    (root / "out1" / "pretok-000002.tar").unlink()  # an interrupted run: last shard missing
    resumed = run(raw=str(root / "raw"), checkpoint=str(ckpt), out=str(root / "out1"), samples_per_shard=5)
    assert resumed["shards_written"] == 1 and resumed["images_encoded"] == 2  # only raw shard 2 re-encoded
    assert len(list(read_back(root / "out1"))) == 11


def test_self_corrected_variants_pair_inputs_with_targets(setup):
    root, ckpt = setup
    run(raw=str(root / "raw"), checkpoint=str(ckpt), out=str(root / "out2"), self_correct=0.6, topk=8,
        variants=3, samples_per_shard=20)
    variants = [list(read_back(root / "out2", variant=v)) for v in range(3)]
    assert len(variants[0]) == 12 - 1
    for samples in zip(*variants):
        (_, meta, first), items = samples[0], [g for _, _, g in samples]
        assert meta["variants"] == 3 and meta["self_correct"] == 0.6
        assert np.array_equal(flat(first["targets"]), flat(first["clean_targets"]))   # variant 0: clean targets
        for g in items:
            changed = (flat(g["inputs"]) != flat(g["targets"])).mean()
            assert 0.2 < changed <= 0.6 + 1e-6
        assert not np.array_equal(flat(items[0]["inputs"]), flat(items[1]["inputs"]))


def test_user_errors_name_the_value_and_the_fix(setup, tmp_path):
    root, ckpt = setup
    with pytest.raises(UsageError, match=r"tokenizer checkpoint not found at .*nope.ckpt.*main.py fit"):
        run(raw=str(root / "raw"), checkpoint=str(tmp_path / "nope.ckpt"), out=str(tmp_path / "o"))
    with pytest.raises(UsageError, match=r"shard directory .*missing does not exist"):
        run(raw=str(tmp_path / "missing"), checkpoint=str(ckpt), out=str(tmp_path / "o"))
    with pytest.raises(UsageError, match=r"--self_correct 1.5"):
        run(raw=str(root / "raw"), checkpoint=str(ckpt), out=str(tmp_path / "o"), self_correct=1.5)
    with pytest.raises(FileNotFoundError, match=r"tokenizer checkpoint not found at .*nope.ckpt.*main.py fit"):
        load_tokenizer(str(tmp_path / "nope.ckpt"))
