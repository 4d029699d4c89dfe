"""Compute-budget packing (modules/common/packing.py): the cost model's attended pairs, the plan's
invariants (every sample once, caps, equal micro-batch counts), the loss normaliser (packing keeps
per-sample loss weights), the calibration fit and the datamodule option."""
from __future__ import annotations

import random
from collections import Counter

import pytest
import torch

from modules.common.attention_mask import block_causal_mask
from modules.common.errors import ConfigError
from modules.common.packing import (CostModel, SeqStats, attended_pairs, balance_ranks, fill_microbatches,
                                    pairs_of_layout, plan_window)
from modules.common.scale_schedule import ScaleSchedule
from modules.common.sequence import collate_index


def _items(cfg, specs, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for k, (task, side, caption) in enumerate(specs):
        sch = ScaleSchedule.square(side)

        def maps():
            return [torch.randint(0, cfg.codebook_size, grid, generator=g) for grid in sch.grids]

        out.append({"task": task, "text_ids": torch.randint(0, cfg.text_vocab_size, (caption,), generator=g).tolist(),
                    "schedule": sch, "targets": maps(), "inputs": maps(), "clean_targets": maps(), "key": str(k)})
    return out


SPECS = [("t2i", 4, 5), ("t2i", 8, 3), ("i2t", 4, 9), ("t2i", 2, 12), ("t2i", 6, 1), ("i2t", 8, 4),
         ("t2i", 3, 7), ("t2i", 8, 10), ("i2t", 2, 2), ("t2i", 5, 6)]


@pytest.fixture(scope="module")
def tiny():
    from modules.ar.module import ARModule

    torch.manual_seed(0)
    module = ARModule(preset="tiny", overrides={"codebook_size": 32, "code_dim": 8}, cond_dropout=0.0)
    return module, module.batcher()


def test_attended_pairs_equal_the_dense_mask(tiny):
    module, batcher = tiny
    items = _items(module.config, SPECS)
    for it in items:
        tok, _ = batcher._builder.build_index(batcher.segments(it), drop_cond=False)
        dense = int(block_causal_mask(tok.block[None], torch.zeros_like(tok.block)[None]).sum())
        assert attended_pairs(tok.block) == dense == batcher.sequence_stats(it).pairs
    # packed samples add, they do not square together: the dense mask of a packed row agrees
    built = [batcher._builder.build_index(batcher.segments(it), drop_cond=False) for it in items[:4]]
    row = collate_index(built, row_len=sum(len(t) for t, _ in built), pad_id=module.config.vocab.pad).tokens
    assert int(row.mask().sum()) == sum(attended_pairs(t.block) for t, _ in built)
    # closed form of REFERENCE.md for a text prefix then scales
    sch = ScaleSchedule.square(8)
    block = torch.cat([torch.arange(5), torch.cat([torch.full((a,), 5 + k) for k, a in enumerate(sch.areas)])])
    assert pairs_of_layout(5, sch.areas) == attended_pairs(block) == int(block_causal_mask(
        block[None], torch.zeros_like(block)[None]).sum())


def _random_stats(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.4:
            L = rng.randint(8, 600)
            out.append(SeqStats(L, L * (L + 1) // 2, L - 1))
        else:
            sch = ScaleSchedule.square(rng.choice([4, 8, 16]))
            P = rng.randint(2, 40)
            out.append(SeqStats(P + sch.token_count, pairs_of_layout(P, sch.areas), sch.token_count + 1))
    return out


@pytest.mark.parametrize("method", ["kk", "lpt"])
@pytest.mark.parametrize("world", [1, 2, 8])
def test_plan_keeps_every_sample_once_within_caps_equal_counts(method, world):
    stats = _random_stats(97, seed=world)
    model = CostModel(per_token=1.0, per_pair=1 / 512, per_microbatch=5.0)
    cost_cap = 3 * max(model.cost(s.tokens, s.pairs) for s in stats)
    plan = plan_window(stats, model, world=world, token_cap=1200, cost_cap=cost_cap, method=method)
    flat = [i for rank in plan.ranks for mb in rank for i in mb]
    assert sorted(flat) == list(range(len(stats)))
    assert len({len(rank) for rank in plan.ranks}) == 1 and len(plan.ranks) == world
    for rank in plan.ranks:
        for mb in rank:
            assert mb, "no empty micro-batch"
            assert sum(stats[i].tokens for i in mb) <= 1200
            assert sum(model.cost(stats[i].tokens, stats[i].pairs) for i in mb) <= cost_cap or len(mb) == 1
    n_mb = world * plan.microbatches_per_rank
    assert plan.loss_norm == pytest.approx(sum(s.weight for s in stats) / n_mb)
    if world > 1:
        assert plan.imbalance() < 1.1


def test_balance_beats_round_robin_and_refuses_uneven_counts():
    rng = random.Random(3)
    costs = [rng.lognormvariate(0, 1.2) for _ in range(64)]
    rr = [sum(costs[i] for i in range(r, 64, 8)) for r in range(8)]
    for method in ("kk", "lpt"):
        parts = balance_ranks(costs, 8, method)
        assert {len(p) for p in parts} == {8}
        loads = [sum(costs[i] for i in p) for p in parts]
        assert max(loads) < max(rr) and max(loads) / (sum(loads) / 8) < 1.05
    with pytest.raises(ValueError, match="equally"):
        balance_ranks(costs[:63], 8)


def test_token_cap_refuses_a_sample_that_cannot_fit():
    with pytest.raises(ConfigError, match="token cap"):
        fill_microbatches([SeqStats(50, 1275), SeqStats(10, 55)], CostModel(), token_cap=40, cost_cap=None)


def test_packed_loss_equals_unpacked_loss(tiny):
    """DDP averages the ranks' gradients and Lightning the accumulated micro-batches; with the
    window normaliser that average is Σ w·CE / Σ w over all samples, the unpacked loss. Per
    micro-batch normalisation (the default without packing) gives another number."""
    module, batcher = tiny
    module.eval()
    items = _items(module.config, SPECS, seed=1)
    stats = [batcher.sequence_stats(it) for it in items]
    plan = plan_window(stats, CostModel(per_token=1.0, per_pair=1 / 64), world=2, token_cap=400, cost_cap=300.0)
    assert plan.microbatches_per_rank >= 2
    with torch.no_grad():
        unpacked = float(module.compute_loss(batcher(items, train=False))["loss"])
        packed, own = [], []
        for rank in plan.ranks:
            for mb in rank:
                sub = [items[i] for i in mb]
                row = sum(stats[i].tokens for i in mb)
                packed.append(float(module.compute_loss(batcher(sub, train=False, row_len=row,
                                                                loss_norm=plan.loss_norm))["loss"]))
                own.append(float(module.compute_loss(batcher(sub, train=False, row_len=row))["loss"]))
    assert sum(packed) / len(packed) == pytest.approx(unpacked, rel=1e-5)
    assert abs(sum(own) / len(own) - unpacked) > 1e-3  # per-micro-batch normalisation reweights samples
    # gradients agree too
    module.zero_grad()
    module.compute_loss(batcher(items, train=False))["loss"].backward()
    g_ref = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    module.zero_grad()
    n = len(packed)
    for rank in plan.ranks:
        for mb in rank:
            sub = [items[i] for i in mb]
            (module.compute_loss(batcher(sub, train=False, row_len=sum(stats[i].tokens for i in mb),
                                         loss_norm=plan.loss_norm))["loss"] / n).backward()
    g_pack = [p.grad for p in module.parameters() if p.grad is not None]
    for a, b in zip(g_ref, g_pack):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_fit_recovers_constants_and_cost_model_file(tmp_path):
    true = CostModel(per_token=2e-5, per_pair=3e-8, per_microbatch=4e-3)
    rows = []
    for L in (64, 256, 512, 1024, 2048):
        for n_mb in (1, 2):
            pairs = n_mb * L * (L + 1) // 2
            rows.append((n_mb, n_mb * L, pairs, n_mb * true.per_microbatch + true.cost(n_mb * L, pairs)))
    fit = CostModel.fit_times(rows, source="synthetic")
    assert fit.per_token == pytest.approx(true.per_token, rel=1e-6)
    assert fit.per_pair == pytest.approx(true.per_pair, rel=1e-6)
    assert fit.per_microbatch == pytest.approx(true.per_microbatch, rel=1e-6)
    fit.save(tmp_path / "c.json")
    assert CostModel.load(tmp_path / "c.json") == fit
    with pytest.raises(ConfigError, match="--calibrate"):
        CostModel.load(tmp_path / "missing.json")


class _Recording:
    """The AR batcher, recording the keys of the items each batch holds."""

    def __init__(self, batcher, window):
        self.batcher, self.window, self.measured, self.keys, self.stream = batcher, window, 0, {}, []

    def sequence_stats(self, item):
        self.measured += 1
        self.stream.append((item["key"], item["schedule"].final_grid))
        return self.batcher.sequence_stats(item)

    def __call__(self, items, **kw):
        window = (self.measured - 1) // self.window
        self.keys.setdefault(window, []).append([(it["key"], it["schedule"].final_grid) for it in items])
        return self.batcher(items, **kw)


def test_datamodule_compute_packing_splits_windows_over_ranks(tmp_path, monkeypatch):
    """Two ranks (WORLD_SIZE/RANK as a launcher sets them) read the same stream and keep disjoint
    halves of each window, in equal numbers of one-row micro-batches carrying the window's
    normaliser."""
    from datamodules.pretokenized_dm import PretokenizedDataModule
    from modules.ar.module import ARModule
    from modules.common.sequence import IndexBatch
    from tests.test_ar_module import TINY, make_shards

    dirs = [make_shards(tmp_path / "a", side=3, n=8), make_shards(tmp_path / "b", side=6, n=8, seed=1)]
    module = ARModule(overrides=TINY, cond_dropout=0.0)
    seen, streams = {}, {}
    for rank in (0, 1):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", str(rank))
        dm = PretokenizedDataModule(train_dir=dirs, batch_size=2, variant=0, shuffle_buffer=4, packing="compute",
                                    pack_window=8, pack_token_cap=400, pack_cost_cap=None)
        dm.use_batcher(_Recording(module.batcher(), window=8))
        batches = list(dm.train_dataloader())
        assert len(batches) == 16 // (2 * 2)  # the epoch: batch_size-sized batches' worth per rank
        assert all(isinstance(b, IndexBatch) and b.tokens.ids.shape[0] == 1 and b.loss_norm > 0 for b in batches)
        assert all((b.tokens.sample >= 0).sum() <= 400 for b in batches)
        seen[rank], streams[rank] = dm.batcher.keys, dm.batcher.stream
    # per window: equal counts, and the two ranks' parts are exactly the window's 8 samples (a
    # multiset: an endless shuffled stream may hold one sample twice across a pass's seam)
    assert streams[0] == streams[1]  # both ranks read the same stream
    for window in set(seen[0]) & set(seen[1]):
        mbs = [seen[r][window] for r in (0, 1)]
        assert len(mbs[0]) == len(mbs[1])
        keys = [k for r in (0, 1) for mb in mbs[r] for k in mb]
        assert Counter(keys) == Counter(streams[0][8 * window:8 * window + 8])
    assert 0 in seen[0] and 0 in seen[1]
    with pytest.raises(ConfigError, match="packing"):
        PretokenizedDataModule(train_dir=dirs, packing="greedy")


def test_bench_simulation_orders_the_strategies():
    """The simulated step of `bench packing`: compute-budget packing is no slower than fixed-length
    packing, which beats padding, and balances the ranks better."""
    from benchmarks.packing import simulate
    from modules.ar.module import ARModule

    batcher = ARModule(preset="tiny", overrides={"block_size": 65536}).batcher()
    model = CostModel(per_token=3e-3, per_pair=2e-6, per_microbatch=0.01)
    res = simulate(model, batcher, world=4, samples_per_rank=8, context=16384, steps=2)
    assert res["compute-budget"]["step_s"] <= res["fixed-length"]["step_s"]
    assert res["ratio_vs_padding"] >= res["fixed_vs_padding"] > 1
    assert res["compute-budget"]["imbalance"] < res["fixed-length"]["imbalance"]
    assert abs(sum(res["mix"].values()) - 1) < 1e-9


def test_bench_calibrate_flag_belongs_to_packing(capsys):
    from main import main

    assert main(["bench", "fused_ce", "--calibrate"]) == 2  # a bare flag parses as true
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "belong to `bench packing`" in err[0]


def test_compute_packing_with_a_task_mixture_is_refused_in_one_line(tmp_path):
    """The packer plans one stream; a mixture is several, so the pair is refused, naming both keys."""
    from datamodules.pretokenized_dm import PretokenizedDataModule

    with pytest.raises(ConfigError, match="mixture.*packing='compute'"):
        PretokenizedDataModule(mixture=[{"train_dir": str(tmp_path), "weight": 1.0}], packing="compute")
    PretokenizedDataModule(mixture=[{"train_dir": str(tmp_path), "weight": 1.0}])  # bucketing accepts it
