"""Every task the world writes, pretokenised and trained: edit / subject pairs, understanding
question -> answer pairs, interleaved stories from world videos; each sequence has loss only where
it should; mixtures of sources sample by their weights and scale each source's loss."""
import json

import lightning
import numpy as np
import pytest
import torch

from _tokenizer_data import tiny_config
from commands import UsageError
from commands.pretokenize import run as pretokenize
from commands.world import run as world
from datamodules.pretokenized_dm import decode_pretokenized_item
from datamodules.shards import shard_urls
from modules.common.vocab import UnifiedVocab
from modules.ar import tasks
from modules.tokenizer import TokenizerModule

KINDS = {"t2i": "scenes", "understand": "scenes", "edit": "edits", "subject": "subject", "interleaved": "videos"}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("unified")
    torch.manual_seed(0)
    m = TokenizerModule(tokenizer=tiny_config(), stage="joint", val_oracle=False, rfid_extractor=None)
    ckpt = root / "tok.ckpt"
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__}, ckpt)
    for kind in set(KINDS.values()):
        world(kind=kind, out=str(root / "raw" / kind), num_samples=6, width=32, height=32, samples_per_shard=3,
              num_frames=6)
    out = {}
    for task, kind in KINDS.items():
        stats = pretokenize(raw=str(root / "raw" / kind), checkpoint=str(ckpt), out=str(root / task), task=task,
                            variants=2, batch_size=4, max_keyframes=3, keyframe_threshold=0.0)
        assert stats["samples_written"] == 6 and stats["samples_skipped"] == 0, (task, stats)
        out[task] = root / task
    out["root"], out["ckpt"] = root, ckpt
    return out


def read(directory, seed=0):
    import webdataset as wds

    rng = np.random.default_rng(seed)
    return [(json.loads(s["json"]), decode_pretokenized_item(s, lambda t: [ord(c) % 200 for c in t], variant=None,
                                                              rng=rng))
            for s in wds.WebDataset(shard_urls(str(directory)), shardshuffle=False, empty_check=False)]


def test_every_task_is_pretokenised_with_its_tag_and_images(shards):
    for task, n_images in (("t2i", 1), ("understand", 1), ("edit", 2), ("subject", 2)):
        for meta, item in read(shards[task]):
            assert meta["task"] == item["task"] == task and meta["num_images"] == n_images
            assert len(item.get("images", [None])) == n_images
    for meta, item in read(shards["interleaved"]):
        assert item["task"] == "interleaved" and 2 <= meta["num_images"] <= 3  # max_keyframes 3, first+last kept
        assert meta["keyframes"][0] == 0 and meta["keyframes"][-1] == 5
        assert len(item["texts_ids"]) == len(item["images"]) == len(meta["texts"])
    for meta, item in read(shards["edit"]):  # the instruction is the text; source != target codes
        assert meta["text"] and any((a != b).any() for a, b in zip(item["images"][0]["clean_targets"],
                                                                    item["images"][1]["clean_targets"]))
    # understanding: the scene's questions (shapes/questions.py), one drawn per read
    metas = [m for m, _ in read(shards["understand"])]
    assert all(m["qa"][0][0] == "" and m["qa"][0][1] for m in metas)  # the caption item first
    assert {q.split(" ")[0] for m in metas for q, _ in m["qa"][1:]} <= {"How", "What", "Is"}


def test_pretokenize_refuses_a_task_the_raw_kind_cannot_give(shards):
    with pytest.raises(UsageError, match="--task edit reads .*edits.*scenes"):
        pretokenize(raw=str(shards["root"] / "raw" / "scenes"), checkpoint=str(shards["ckpt"]),
                    out=str(shards["root"] / "bad"), task="edit")
    with pytest.raises(UsageError, match="unknown --task 'video'"):
        pretokenize(raw=str(shards["root"] / "raw" / "videos"), checkpoint=str(shards["ckpt"]),
                    out=str(shards["root"] / "bad"), task="video")


def _batcher(self_correct=True, story_loss="after_first_caption"):
    V = UnifiedVocab(256, 256)
    return tasks.ItemBatcher(V, text_vocab_size=256, codebook_size=256, rope_C=64.0, max_scales=18, max_len=None,
                             cond_dropout=0.0, self_correct=self_correct, story_loss=story_loss), V


def _trained(batcher, item):
    """(unified ids of the tokens trained on (their targets), weights) of one sample, images
    materialised with a random codebook."""
    batch = batcher([item], train=False)
    tok = batch.materialize(torch.randn(256, 8), alpha=0.0)
    keep = tok.weight[0] > 0
    return tok.target[0][keep], tok.weight[0][keep], tok


def test_each_task_has_loss_only_where_it_should(shards):
    b, V = _batcher()
    T = None
    for task in ("understand", "edit", "subject", "interleaved"):
        meta, item = read(shards[task])[0]
        T = item["schedule"].token_count
        tgt, w, tok = _trained(b, item)
        vis = V.is_visual(tgt)
        text = tgt[~vis].tolist()
        if task == "understand":  # only the answer and <eos>; never the image or the question
            assert int(vis.sum()) == 0 and text == item["text_ids"] + [V.eos]
        elif task in ("edit", "subject"):  # only the target image's T codes (and <boi> before it)
            assert int(vis.sum()) == T and text == [V.boi]
            assert torch.equal(tgt[vis] - V.visual_offset,
                               torch.cat([m.reshape(-1) for m in item["images"][1]["targets"]]))
        else:  # every keyframe and every transition text, not the opening caption
            n = len(item["images"])
            assert int(vis.sum()) == n * T
            want = [V.boi]
            for t in item["texts_ids"][1:]:
                want += t + [V.boi]
            assert text == want + [V.eos]
    # story_loss "all" trains the opening caption too (all but its first token, which the task token predicts)
    meta, item = read(shards["interleaved"])[0]
    tgt_all, _, _ = _trained(_batcher(story_loss="all")[0], item)
    tgt_after, _, _ = _trained(b, item)
    assert len(tgt_all) == len(tgt_after) + len(item["texts_ids"][0])


def test_loss_weight_scales_every_trained_token(shards):
    b, V = _batcher()
    _, item = read(shards["edit"])[0]
    _, w1, _ = _trained(b, item)
    _, w3, _ = _trained(b, {**item, "loss_weight": 3.0})
    assert torch.allclose(w3, 3 * w1)


def test_mixture_sampler_hits_its_weights():
    from itertools import repeat

    from datamodules.mixture import mix_samples

    weights = [0.5, 0.3, 0.2]
    draws = list(zip(range(20000), mix_samples([repeat(k) for k in range(3)], weights, np.random.default_rng(0))))
    freq = np.bincount([k for _, k in draws], minlength=3) / len(draws)
    assert np.abs(freq - weights).max() < 0.015, freq
    with pytest.raises(ValueError, match="non-negative"):
        next(mix_samples([repeat(0)], [-1.0], np.random.default_rng(0)))


def _mixture_dm(shards, **kw):
    from datamodules.pretokenized_dm import PretokenizedDataModule

    mixture = [{"train_dir": str(shards["t2i"]), "weight": 3.0},
               {"train_dir": str(shards["edit"]), "weight": 1.0, "loss_weight": 2.0}]
    return PretokenizedDataModule(mixture=mixture, batch_size=2, text_tokenizer="bytes", shuffle_buffer=4, **kw)


def test_mixture_datamodule_buckets_weights_and_equal_batches_per_rank(shards, monkeypatch):
    counts = []
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        dm = _mixture_dm(shards, seed=rank)
        batches = list(dm.train_dataloader())
        counts.append(len(batches))
        for b in batches:  # one task per batch, the edit source's loss weight on its items
            assert len({it["task"] for it in b}) == 1 and len(b) == 2
            assert all(it.get("loss_weight", 1.0) == (2.0 if it["task"] == "edit" else 1.0) for it in b)
    assert counts == [3, 3]  # (6 + 6) samples / (2 ranks x 2)
    # over many epochs the t2i source gives about 3/4 of the batches
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    tasks_seen = []
    for epoch_seed in range(10):
        tasks_seen += [b[0]["task"] for b in _mixture_dm(shards, seed=epoch_seed).train_dataloader()]
    share = tasks_seen.count("t2i") / len(tasks_seen)
    assert 0.6 < share < 0.9, share


def test_mixture_config_errors_name_the_fix(shards):
    from datamodules.pretokenized_dm import PretokenizedDataModule
    from modules.common.errors import ConfigError

    with pytest.raises(ConfigError, match="replaces train_dir"):
        PretokenizedDataModule(train_dir="x", mixture=[{"train_dir": "y"}])
    with pytest.raises(ConfigError, match="unknown keys \\['wieght'\\]"):
        PretokenizedDataModule(mixture=[{"train_dir": "y", "wieght": 2}])
    with pytest.raises(ConfigError, match="sum to 0"):
        PretokenizedDataModule(mixture=[{"train_dir": "y", "weight": 0}])


def test_ar_module_fits_the_five_task_mixture(shards, tmp_path):
    """One `fit` over t2i + understand + edit + subject + interleaved: every task's batches train
    (finite loss, weights move) through the datamodule's worker-side batcher."""
    import lightning.pytorch as pl

    from datamodules.pretokenized_dm import PretokenizedDataModule
    from modules.ar.module import ARModule

    torch.manual_seed(0)
    module = ARModule(preset="tiny", tokenizer_ckpt=str(shards["ckpt"]), lr=1e-3, warmup_steps=1)
    mixture = [{"train_dir": str(shards[t]), "weight": 1.0} for t in ("t2i", "understand", "edit", "subject",
                                                                      "interleaved")]
    dm = PretokenizedDataModule(mixture=mixture, batch_size=2, shuffle_buffer=4)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, default_root_dir=str(tmp_path), max_steps=6,
                         enable_checkpointing=False)
    trainer.fit(module, dm)
    assert trainer.global_step == 6 and np.isfinite(float(trainer.callback_metrics["train/loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_ar_module_hands_its_story_loss_to_the_batcher():
    from modules.ar.module import ARModule

    assert ARModule(preset="tiny").batcher().story_loss == "after_first_caption"
    assert ARModule(preset="tiny", story_loss="images").batcher().story_loss == "images"
