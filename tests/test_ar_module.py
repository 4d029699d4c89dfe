"""ARModule + PretokenizedDataModule + ResolutionCurriculum on tiny synthetic pretokenised shards:
training lowers the loss, the curriculum switches data and alpha, resume continues the phase,
bad inputs give clear errors."""
import lightning.pytorch as pl
import numpy as np
import pytest
import torch

from callbacks.curriculum import ResolutionCurriculum
from datamodules.pretokenized_dm import PretokenizedDataModule
from datamodules.shards import write_shards
from modules.ar.module import ARModule
from modules.common.scale_schedule import ScaleSchedule

TINY = {"codebook_size": 16, "code_dim": 8, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_query_groups": 1,
        "intermediate_size": 64}


def make_shards(path, side: int, n: int = 8, codebook: int = 16, fingerprint: str = "tok0", seed: int = 0,
                i2t_every: int = 4):
    sch = ScaleSchedule.square(side)
    rng = np.random.default_rng(seed)

    def sample(i):
        targets = rng.integers(0, codebook, sch.token_count).astype(np.int32)
        inputs = np.stack([targets, (targets + 1) % codebook]).astype(np.int32)
        return {"json": {"text": f"a red shape {i % 2}", "height": side * 8, "width": side * 8,
                         "grids": [list(g) for g in sch.grids], "codebook_size": codebook,
                         "tokenizer_fingerprint": fingerprint, "task": "i2t" if i2t_every and i % i2t_every == 0 else "t2i"},
                "targets.npy": targets, "inputs.npy": inputs}

    write_shards(sample, n, path, samples_per_shard=4)
    return str(path)


def _trainer(tmp_path, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(tmp_path), **kw)


def test_items_and_buckets(tmp_path):
    d = make_shards(tmp_path / "s", side=3)
    dm = PretokenizedDataModule(train_dir=d, batch_size=2, variant=1)
    batch = next(iter(dm.train_dataloader()))
    assert len(batch) == 2 and len({dm.bucket_key(it) for it in batch}) == 1
    it = batch[0]
    assert it["schedule"] == ScaleSchedule.square(3) and it["fingerprint"] == "tok0"
    flat = lambda maps: torch.cat([m.reshape(-1) for m in maps])  # noqa: E731
    assert torch.equal(flat(it["inputs"]), (flat(it["clean_targets"]) + 1) % 16)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_fit_lowers_loss(tmp_path, precision):
    d = make_shards(tmp_path / "s", side=3, n=4, i2t_every=0)
    torch.manual_seed(0)
    module = ARModule(overrides=TINY, lr=1e-2, warmup_steps=1, cond_dropout=0.0)
    dm = PretokenizedDataModule(train_dir=d, batch_size=4, variant=0, shuffle_buffer=1)
    batch = next(iter(dm.train_dataloader()))
    module.eval()
    with torch.no_grad():
        before = float(module.compute_loss(batch)["loss"])
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the quickstart's CPU autocast: same loss, bf16 rounding
            assert abs(float(module.compute_loss(batch)["loss"]) - before) < 0.02 * before
    module.train()
    _trainer(tmp_path, max_steps=30, precision=precision).fit(module, dm)
    module.eval()
    with torch.no_grad():
        after = float(module.compute_loss(batch)["loss"])
    assert after < 0.6 * before


def test_curriculum_switches_and_resumes(tmp_path):
    dirs = {"a": make_shards(tmp_path / "a", side=2), "b": make_shards(tmp_path / "b", side=3),
            "c": make_shards(tmp_path / "c", side=4)}
    phases = [{"at_step": 0, "phase": "a", "alpha": 0.0}, {"at_step": 2, "phase": "b"},
              {"at_step": 4, "phase": "c", "alpha": 0.9}]
    seen = []

    class Spy(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, idx):
            grid = batch.images[0].schedule.final_grid  # collated by the model's batcher (IndexBatch)
            seen.append((trainer.global_step, grid, module.alpha))

    def run(max_steps, ckpt=None):
        module = ARModule(overrides=TINY, warmup_steps=1)
        dm = PretokenizedDataModule(train_dirs=dirs, batch_size=2)
        trainer = _trainer(tmp_path, max_steps=max_steps, limit_train_batches=2, reload_dataloaders_every_n_epochs=1,
                           callbacks=[ResolutionCurriculum(phases), Spy()])
        trainer.fit(module, dm, ckpt_path=ckpt)
        return trainer

    trainer = run(3)  # stops inside phase "b"
    assert [s[1] for s in seen] == [(2, 2), (2, 2), (3, 3)]
    assert [s[2] for s in seen] == [0.0, 0.0, 0.0]
    ckpt = str(tmp_path / "mid.ckpt")
    trainer.save_checkpoint(ckpt)
    from modules.ar.sampler import load_generator  # the sampler reads ARModule checkpoints

    model, _ = load_generator(ckpt)
    state = trainer.lightning_module.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    seen.clear()
    run(6, ckpt)  # resumes in "b" (not back at "a"), switches to "c" with alpha 0.9
    assert seen[0][0] == 3 and seen[0][1] == (3, 3)
    assert [s[1] for s in seen if s[0] >= 4] == [(4, 4), (4, 4)] and seen[-1][2] == 0.9


def test_bad_inputs_name_both_values(tmp_path):
    module = ARModule(overrides=TINY)
    d = make_shards(tmp_path / "s", side=2, codebook=32)
    batch = next(iter(PretokenizedDataModule(train_dir=d, batch_size=2).train_dataloader()))
    with pytest.raises(ValueError, match="codebook_size 32 but the AR model expects 16"):
        module.make_batch(batch)
    module.tokenizer_fingerprint = "other"
    with pytest.raises(ValueError, match="tokenizer tok0 but the AR model uses other"):
        module.segments(batch[0])
    small = ARModule(overrides={**TINY, "block_size": 8})
    d2 = make_shards(tmp_path / "s2", side=3)
    batch2 = next(iter(PretokenizedDataModule(train_dir=d2, batch_size=2).train_dataloader()))
    with pytest.raises(ValueError, match="longer than the configured maximum 8"):
        small.make_batch(batch2)
    ckpt = {"ar_vocab": {"text_vocab_size": 256, "codebook_size": 64, "vocab_size": 328}}
    with pytest.raises(ValueError, match="codebook_size=64 but the AR config has 16"):
        module.on_load_checkpoint(ckpt)


def test_model_owns_the_text_tokenizer(tmp_path):
    """ARModule(text_tokenizer=...) sizes the text vocabulary and hands its tokenizer to the
    datamodule at setup; a datamodule set to a different one is an error naming both."""
    d = make_shards(tmp_path / "s", side=3, n=4, i2t_every=0)
    module = ARModule(overrides=TINY, text_tokenizer="shapes-words")
    assert module.config.text_vocab_size == module.text_tokenizer.vocab_size > 256
    dm = PretokenizedDataModule(train_dir=d, batch_size=2)
    _trainer(tmp_path, max_steps=1).fit(module, dm)
    assert dm.text_tokenizer is module.text_tokenizer and dm.batcher.text_vocab_size == module.config.text_vocab_size
    dm.use_batcher(None)  # items, not index batches
    ids = next(iter(dm.train_dataloader()))[0]["text_ids"]
    assert module.text_tokenizer.encode(" red")[0] in ids and len(ids) < len("a red shape 0")
    wrong = PretokenizedDataModule(train_dir=d, batch_size=2, text_tokenizer="bytes")
    with pytest.raises(ValueError, match="text_tokenizer='bytes' differs from the AR model's 'shapes-words'"):
        _trainer(tmp_path, max_steps=1).fit(ARModule(overrides=TINY, text_tokenizer="shapes-words"), wrong)
    with pytest.raises(ValueError, match="'shapes-words' has 478 ids but the model's text range is 300"):
        ARModule(overrides={**TINY, "text_vocab_size": 300}, text_tokenizer="shapes-words")


def test_checkpoint_records_trained_scale_counts_and_rope_layout(tmp_path):
    """Counts of the images trained on, per number of scales (i2t images are inputs, not counted),
    go into the checkpoint; load_generator and ARModule read them back; resume accumulates."""
    from modules.ar.module import batch_scale_counts
    from modules.ar.sampler import load_generator
    from modules.common.rope import rope_axes

    d = make_shards(tmp_path / "s", side=3, n=8, i2t_every=0)
    module = ARModule(overrides=TINY, warmup_steps=1)
    trainer = _trainer(tmp_path, max_steps=2)
    trainer.fit(module, PretokenizedDataModule(train_dir=d, batch_size=3, shuffle_buffer=1))
    assert module.trained_scale_counts == {3: 6}
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)
    raw = torch.load(ckpt, weights_only=False)
    assert raw["ar_trained_scale_counts"] == {3: 6} and raw["ar_rope_layout"] == "alternating"
    _, meta = load_generator(str(ckpt))
    assert meta["trained_scale_counts"] == {3: 6}
    d4 = make_shards(tmp_path / "s4", side=4, n=4, i2t_every=0)
    resumed = ARModule(overrides=TINY, warmup_steps=1)
    _trainer(tmp_path, max_steps=3).fit(resumed, PretokenizedDataModule(train_dir=d4, batch_size=4), ckpt_path=str(ckpt))
    assert resumed.trained_scale_counts == {3: 6, 4: 4}  # one more step, 4 images of 4 scales

    # a checkpoint from before the layout was recorded was trained with the sectioned layout
    del raw["ar_rope_layout"], raw["ar_trained_scale_counts"]
    old = tmp_path / "old.ckpt"
    torch.save(raw, old)
    model, meta = load_generator(str(old))
    assert model.config.rope_layout == "sectioned" and meta["trained_scale_counts"] is None
    assert torch.equal(model.rope.axis, rope_axes(model.config.rope_sections, "sectioned"))

    # built tokens (one row per sample, or packed) give the same counts as the items
    mixed = make_shards(tmp_path / "m", side=2, n=4, i2t_every=2)  # samples 0 and 2 are i2t
    batch = [it for b in PretokenizedDataModule(train_dir=mixed, batch_size=1).train_dataloader() for it in b]
    assert sorted(it["task"] for it in batch) == ["i2t", "i2t", "t2i", "t2i"]
    assert batch_scale_counts(batch) == {2: 2}  # i2t images are inputs, not generated
    assert batch_scale_counts(module.make_batch(batch)) == {2: 2}
    packer = ARModule(overrides=TINY, pack_row_len=64)
    assert packer.make_batch(batch).ids.shape[0] < 4 and batch_scale_counts(packer.make_batch(batch)) == {2: 2}
