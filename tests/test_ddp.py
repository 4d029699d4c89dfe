"""Multi-process training on CPU (gloo): the tokenizer (stage 1 with ScaleDropping 0.5), the AR
model and GRPO (modules/rl), each run once on 1 process and once on 2 (Lightning's `ddp` strategy re-runs
tests/_ddp_run.py per rank), under a timeout. Checked: equal batch counts per rank, disjoint
samples per rank, one checkpoint, identical weights on both ranks, and the 2-process losses
against the 1-process run at the same global batch.

The tokenizer data is one shard (fewer shards than readers: split by sample index) read in file
order, so both runs see the same global batches and must agree to float round-off. The AR data has
16 shards (split by shard): the ranks' batches differ from the 1-process run's, so its losses agree
within a tolerance well below what the run learns. GRPO's rollouts are seeded per rank, so the
2-process run samples other images than the 1-process one and its surrogate loss is not
comparable step by step: there the test checks the ranks (prompts split by Lightning's
DistributedSampler), that both runs moved the weights, and that the first update's loss is 0
(ratio 1, zero-mean advantages) in both.

Fast tests below check the pieces without processes: the sample split, the zero-weighted φ use.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _tokenizer_data import tiny_config, write_raw_shards
from test_ar_module import make_shards

ROOT = Path(__file__).resolve().parents[1]
DRIVER = ROOT / "tests" / "_ddp_run.py"
TIMEOUT_S = 240  # a hang (a rank waiting in a collective the other never enters) fails here
STEPS, GLOBAL_BATCH, RL_STEPS = 6, 8, 4


def launch(kind: str, data: Path, out: Path, devices: int, *extra: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(DRIVER), kind, "--data", str(data), "--out", str(out), "--devices", str(devices),
           "--steps", str(STEPS), "--global_batch", str(GLOBAL_BATCH), *extra]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"{devices}-process {kind} run did not finish in {TIMEOUT_S} s (hang?): {err.stderr}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(devices)]


def check_ranks(ranks: list[dict], out: Path, steps: int = STEPS) -> None:
    assert [r["batches"] for r in ranks] == [steps] * len(ranks)
    keys = [set(r["keys"]) for r in ranks]
    assert all(len(k) == len(r["keys"]) for k, r in zip(keys, ranks)), "a rank decoded a sample twice"
    assert not keys[0] & keys[1], f"ranks decoded the same samples: {sorted(keys[0] & keys[1])}"
    assert len({r["weights_sha"] for r in ranks}) == 1, "ranks ended with different weights"
    assert ranks[0]["weights_sha"] != ranks[0]["start_sha"], "the run did not change the weights"
    assert sorted(p.name for p in (out / "ckpt").iterdir()) == ["last.ckpt"]


@pytest.fixture(scope="module")
def tokenizer_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp_tok")
    write_raw_shards(d / "data/train", [(32, 32)] * 64, seed=0, samples_per_shard=64)
    write_raw_shards(d / "data/val", [(32, 32)] * 16, seed=9, samples_per_shard=64)
    return d, launch("tokenizer", d / "data", d / "one", 1), launch("tokenizer", d / "data", d / "two", 2)


@pytest.fixture(scope="module")
def ar_runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp_ar")
    make_shards(d / "data/train", side=3, n=64, i2t_every=0)
    make_shards(d / "data/val", side=3, n=16, seed=5, i2t_every=0)
    return d, launch("ar", d / "data", d / "one", 1), launch("ar", d / "data", d / "two", 2)


@pytest.mark.slow
def test_tokenizer_two_processes_match_one(tokenizer_runs):
    d, (one,), two = tokenizer_runs
    check_ranks(two, d / "two")
    # one shard, two readers: every sample read once, by one rank, the same ones as the 1-process run
    assert sorted(two[0]["keys"] + two[1]["keys"]) == sorted(one["keys"])
    mean_two = np.mean([r["losses"] for r in two], axis=0)
    np.testing.assert_allclose(mean_two, one["losses"], rtol=1e-4)
    assert one["losses"][-1] < 0.8 * one["losses"][0]  # it trains, so agreement means something
    assert two[0]["val"] == two[1]["val"]  # metrics are global, not per rank
    assert {"val/psnr", "val/agreement", "val/rfid_randconv", "val/codebook_usage"} <= set(one["val"])
    for name, value in one["val"].items():  # over all 16 validation images in both runs
        assert two[0]["val"][name] == pytest.approx(value, rel=1e-3, abs=1e-4), name


@pytest.mark.slow
def test_ar_two_processes_within_tolerance_of_one(ar_runs):
    d, (one,), two = ar_runs
    check_ranks(two, d / "two")
    mean_two = np.mean([r["losses"] for r in two], axis=0)
    learned = one["losses"][0] - one["losses"][-1]
    assert learned > 0.5
    # different samples per step (shard split): per-step losses within a tenth of what was learned
    assert np.max(np.abs(mean_two - np.array(one["losses"]))) < 0.1 * learned
    assert two[0]["val"]["val/loss"] == two[1]["val"]["val/loss"]
    assert abs(two[0]["val"]["val/loss"] - one["val"]["val/loss"]) < 0.1 * learned


@pytest.fixture(scope="module")
def rl_runs(tmp_path_factory):
    from _tiny_checkpoints import write_tiny_checkpoints

    d = tmp_path_factory.mktemp("ddp_rl")
    write_tiny_checkpoints(d)
    extra = ("--global_batch", "4", "--steps", str(RL_STEPS))  # prompts per step (x group 4 rollouts)
    # the 2-process run also benchmarks at its last step, generation sharded across both ranks
    return d, launch("rl", d, d / "one", 1, *extra), launch("rl", d, d / "two", 2, *extra, "--bench", str(RL_STEPS))


@pytest.mark.slow
def test_grpo_two_processes(rl_runs):
    d, (one,), two = rl_runs
    check_ranks(two, d / "two", RL_STEPS)
    assert one["weights_sha"] != one["start_sha"]
    assert abs(one["losses"][0]) < 1e-6 and all(abs(r["losses"][0]) < 1e-6 for r in two)
    assert np.isfinite(np.array([r["losses"] for r in two])).all()


@pytest.mark.slow
def test_sharded_benchmark_in_ddp_equals_one_process_on_the_same_weights(rl_runs, tmp_path):
    """BenchmarkCallback in the 2-process GRPO run (each rank generates its pieces, rank 0 gathers and
    scores): its suite folder equals one process's run_suite on the checkpoint's weights, image for
    image and metric for metric."""
    from PIL import Image

    from _ddp_run import BENCH_BATCH, BENCH_SAMPLING, BENCH_SUITE
    from evaluation.suite import SuiteConfig, run_suite
    from modules.ar.generator import ARGenerator, load_ar_and_tokenizer
    from modules.ar.sampler import SamplingConfig
    from modules.text import build_text_tokenizer

    d, _, _ = rl_runs
    folder = d / "two" / "benchmarks" / f"step_{RL_STEPS:07d}"
    two = json.loads((folder / "metrics.json").read_text())
    model, meta, tok, _ = load_ar_and_tokenizer(str(d / "two" / "ckpt" / "last.ckpt"))
    text = build_text_tokenizer(meta.get("text_tokenizer") or "bytes", meta.get("text_tokenizer_path"),
                                model.config.text_vocab_size)
    gen = ARGenerator(model.eval(), tok, text, sampling=SamplingConfig.from_dict(BENCH_SAMPLING), batch_size=BENCH_BATCH)
    one = run_suite(gen, tmp_path, SuiteConfig(**{**BENCH_SUITE}))
    drop = ("seconds", "step", "epoch", "untrained_scales", "untrained_scale_counts", "trained_scale_counts")
    strip = lambda m: {k: ({kk: vv for kk, vv in v.items() if kk not in drop} if isinstance(v, dict) else v)
                       for k, v in m.items() if k not in drop}
    assert strip(two) == strip(json.loads(json.dumps(one, default=float)))
    pngs = lambda root: {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in root.rglob("*.png")}
    a, b = pngs(folder), pngs(tmp_path)
    a.pop("geneval_grid.png", None)
    assert a.keys() == b.keys() and len(a) > 10
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- fast, no processes
def test_fewer_shards_than_readers_split_by_sample(tmp_path):
    from torch.utils.data import DataLoader

    from datamodules.shards import make_stream, shard_urls

    write_raw_shards(tmp_path, [(24, 24)] * 12, samples_per_shard=8)  # 2 shards for 2 ranks x 2 workers
    urls = shard_urls(tmp_path)
    seen = []
    for rank in (0, 1):
        stream, _ = make_stream(urls, lambda s: s["__key__"], shuffle=True, seed=3, repeat=False, world_size=2,
                                num_workers=2, rank=rank)
        seen.append(list(DataLoader(stream, batch_size=None, num_workers=2)))
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == [f"{i:09d}" for i in range(12)]  # each sample read exactly once


def test_dropped_scales_leave_no_phi_without_gradient():
    """A skipped φ stays in the graph with an exact zero gradient (DDP's reducer needs every
    parameter), in one process as in several, so both follow the same trajectory."""
    from modules.tokenizer import MultiScaleTokenizer

    torch.manual_seed(0)
    tok = MultiScaleTokenizer(tiny_config(use_semantic=False)).train()
    n = tok.schedule_for(32, 32).num_scales
    keep = [False] * (n - 1) + [True]  # only the last scale: one φ of the pixel branch used
    _, q, _ = tok(torch.rand(2, 3, 32, 32) * 2 - 1, keep=keep, decode=False)
    q.vq_loss.backward()
    grads = [p.grad for p in tok.quantizer.phi_pix.parameters()]
    assert all(g is not None for g in grads)  # in the graph: DDP's reducer sees every parameter
    assert sum(int(g.abs().sum() > 0) for g in grads) < len(grads)  # the unused φ's gradients are exactly 0


class FakeStrategy:
    def __init__(self):
        self.barriers = []

    def barrier(self, name=None):
        self.barriers.append(name)


class FakeTrainer:
    def __init__(self, rank: int):
        from types import SimpleNamespace

        self.is_global_zero, self.world_size, self.global_step = rank == 0, 2, 4
        self.strategy, self.state = FakeStrategy(), SimpleNamespace(fn="fit")


def test_benchmark_runs_on_every_rank_and_every_rank_meets_at_the_barrier(monkeypatch):
    from callbacks.evaluation import BenchmarkCallback

    for rank in (0, 1):
        cb, ran = BenchmarkCallback(every_n_steps=2), []
        monkeypatch.setattr(cb, "run", lambda trainer, module, cfg, tag: ran.append(tag))
        trainer = FakeTrainer(rank)
        cb.on_train_batch_end(trainer, None, None, None, 0)
        assert ran == ["step_0000004"]  # every rank generates its share (run_suite_sharded)
        assert trainer.strategy.barriers == ["benchmark_step_0000004"]


def test_benchmark_refuses_fsdp_when_it_would_generate():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import FSDPStrategy

    from callbacks.evaluation import BenchmarkCallback

    trainer = SimpleNamespace(strategy=FSDPStrategy())
    BenchmarkCallback(every_n_steps=0).setup(trainer, None, "fit")  # never generates during fit: allowed
    with pytest.raises(ValueError, match="deadlocks under FSDP.*every_n_steps: 0"):
        BenchmarkCallback(every_n_steps=10).setup(trainer, None, "fit")
    with pytest.raises(ValueError, match="deadlocks under FSDP"):
        BenchmarkCallback().setup(trainer, None, "validate")
