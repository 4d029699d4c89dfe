"""The batched training path (ItemBatcher -> IndexBatch -> materialize on the device) equals the
per-sample builder (SequenceBuilder.build + collate) token for token, in loss and in gradients."""
import dataclasses

import pytest
import torch

from modules.ar.module import ARModule
from modules.common.scale_schedule import ScaleSchedule

TINY = {"codebook_size": 16, "code_dim": 8, "n_layer": 2, "n_embd": 32, "n_head": 2, "n_query_groups": 1,
        "intermediate_size": 64}


def _items(tasks_and_schedules, seed=0):
    g = torch.Generator().manual_seed(seed)

    def maps(sch):
        return [torch.randint(0, 16, grid, generator=g) for grid in sch.grids]

    out = []
    for i, (task, sch) in enumerate(tasks_and_schedules):
        text = torch.randint(0, 256, (3 + i % 3,), generator=g).tolist()
        out.append({"task": task, "text_ids": text, "schedule": sch, "targets": maps(sch), "inputs": maps(sch),
                    "clean_targets": maps(sch), "key": str(i)})
    return out


def _both(module, items, seed=0):
    """(tokens, loss, grads) of the reference and of the batched path, same dropout draws."""
    params = [p for p in module.model.parameters() if p.requires_grad]
    out = []
    for reference in (True, False):
        module._gen.manual_seed(seed)
        res = module.compute_loss(items, reference=reference)
        out.append((res["tokens"], res["loss"], torch.autograd.grad(res["loss"], params, allow_unused=True)))
    return out


SQ3, SQ4, WIDE = ScaleSchedule.square(3), ScaleSchedule.square(4), ScaleSchedule.for_grid(3, 5)


@pytest.mark.parametrize("case", ["t2i_self_correct", "accumulated", "i2t_mixed_packed"])
def test_batched_path_equals_per_sample_builder(case):
    torch.manual_seed(0)
    kw = dict(overrides=dict(TINY), alpha=0.9, cond_dropout=0.5, self_correct=True)
    spec = [("t2i", SQ4)] * 6
    if case == "accumulated":
        kw["overrides"]["visual_inputs"] = "accumulated"
    if case == "i2t_mixed_packed":
        kw["pack_row_len"] = 96
        spec = [("t2i", SQ4), ("i2t", SQ3), ("t2i", SQ3), ("i2t", WIDE), ("t2i", WIDE), ("i2t", SQ4), ("t2i", SQ4)]
    module = ARModule(**kw)
    module.train()
    items = _items(spec)
    (ref, loss_ref, g_ref), (new, loss_new, g_new) = _both(module, items)
    assert ref.ids.shape == new.ids.shape
    for f in dataclasses.fields(ref):
        a, b = getattr(ref, f.name), getattr(new, f.name)
        if a.is_floating_point():
            torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=f.name)
        else:
            assert torch.equal(a, b), f.name
    # the batch exercises what it claims: dropped captions, self-corrected inputs, trained vision
    n_samples = int((ref.sample.max(1).values + 1).sum())
    assert n_samples == len(items)
    lens = [len(it["text_ids"]) for it in items]
    assert int((ref.ids < 256).sum()) < sum(lens)  # some captions dropped (rate 0.5)
    assert float(ref.weight[ref.target >= module.config.vocab.visual_offset].sum()) > 0
    if case == "i2t_mixed_packed":
        assert ref.ids.shape[0] < len(items) and int((ref.ids == module.config.vocab.eoi).sum()) == 3
    torch.testing.assert_close(loss_new, loss_ref, rtol=1e-6, atol=1e-7)
    n = 0
    for a, b in zip(g_ref, g_new):
        if a is None:
            assert b is None
            continue
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-8)
        n += 1
    assert n > 10 and float(g_ref[0].abs().sum()) > 0  # gradients reach the model


def test_alpha_change_reaches_index_batches_built_earlier():
    """Vision weights are set on the device from the module's α, so a batch collated by a worker
    before a curriculum switch trains with the new α."""
    module = ARModule(overrides=TINY, alpha=0.0, cond_dropout=0.0)
    items = _items([("t2i", SQ4)] * 2)
    batch = module.batcher()(items, train=True)
    tok0 = module.make_batch(batch)
    module.alpha = 0.9
    w9 = module.make_batch(batch).weight
    first, last = tok0.scale == 0, tok0.scale == SQ4.num_scales - 1  # tokens predicting scale 1 / scale K
    assert set(tok0.weight[first | last].tolist()) == {1.0}  # α = 0: uniform
    assert float(w9[first].min()) > 2 * float(w9[last].max())  # α = 0.9: coarse scales up
    module._gen.manual_seed(0)
    tok9 = module.reference_batch(items)
    torch.testing.assert_close(w9, tok9.weight)


def test_validation_has_no_condition_dropout():
    module = ARModule(overrides=TINY, cond_dropout=1.0)
    items = _items([("t2i", SQ3)] * 2)
    module.eval()
    assert int((module.make_batch(items).ids < 256).sum()) == sum(len(it["text_ids"]) for it in items)
    module.train()
    assert int((module.make_batch(items).ids < 256).sum()) == 0
    batcher = module.batcher()  # in a worker: the item's "train" flag decides
    assert int((batcher([{**it, "train": True} for it in items]).tokens.ids < 256).sum()) == 0
    assert int((batcher(items).tokens.ids < 256).sum()) == sum(len(it["text_ids"]) for it in items)


def test_datamodule_workers_collate_index_batches(tmp_path):
    """With the model's batcher the datamodule's loader workers yield IndexBatches that train to
    the same loss as the same items indexed in-process."""
    from datamodules.pretokenized_dm import PretokenizedDataModule
    from modules.common.sequence import IndexBatch
    from tests.test_ar_module import make_shards

    d = make_shards(tmp_path / "s", side=3, n=8, i2t_every=2)
    module = ARModule(overrides=TINY, cond_dropout=0.0)
    batches = {}
    for batcher in (None, module.batcher()):
        dm = PretokenizedDataModule(train_dir=d, batch_size=4, variant=0, shuffle_buffer=1, num_workers=1)
        dm.use_batcher(batcher)
        batches[batcher is None] = next(iter(dm.train_dataloader()))
    items, index = batches[True], batches[False]
    assert isinstance(index, IndexBatch) and isinstance(items, list)
    torch.testing.assert_close(module.compute_loss(index)["loss"], module.compute_loss(items)["loss"])
