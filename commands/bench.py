"""Benchmarks that print ratios against a baseline run in the same invocation (not timed tests).

    python main.py bench --what fused_ce     fused chunked linear+CE vs naive: peak memory, time
    python main.py bench --what train_step   AR training samples/s: per-sample sequence building vs
                                             index batches, in fp32 and under bf16 autocast
                                             (bench_train_step(plain=True) adds a plain SDPA decoder
                                             of the same size)
    python main.py bench --what sampling     next-scale vs raster-scan sampling (issue 5)
    python main.py bench --what packing      padding vs fixed-length vs compute-budget packing on a
                                             simulated 8-rank step with the calibrated cost model
                                             (benchmarks/packing.py); --calibrate first times
                                             training steps and writes the cost model (--costs)
    python main.py bench --what refiner --ckpt R [--regression_ckpt C] --val_dir D [--val128_dir D128] [--out O]
                                             the refiner's metric table (issue 14; benchmarks/refiner.py)
    python main.py bench                     all of the above but refiner

Issue 4 targets: fused_ce <= 0.15x naive peak memory at <= 1.3x naive time (4096 tokens,
d = 1024, vocabulary 152,064 + 16,384); train_step >= 0.85x the plain decoder's tokens/s.
Issue 17 target: train_step samples/s >= 2x the per-sample sequence builder's.
Peak memory on CPU: each variant runs in a fresh subprocess and reports its peak resident set
(ru_maxrss) minus the resident set after its inputs were allocated.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import torch

_CHILD = r"""
import json, resource, sys, time, torch
from modules.common.fused_ce import fused_linear_cross_entropy, naive_linear_cross_entropy
cfg = json.loads(sys.argv[1])
torch.manual_seed(0)
N, D, V, dev = cfg["tokens"], cfg["dim"], cfg["vocab"], cfg["device"]
dt = getattr(torch, cfg["dtype"])
h = (torch.randn(N, D, device=dev, dtype=dt) * 0.5).requires_grad_()
W = (torch.randn(V, D, device=dev, dtype=dt) * 0.02).requires_grad_()
t = torch.randint(0, V, (N,), device=dev)
w = torch.rand(N, device=dev)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
def step():
    if cfg["kind"] == "fused":
        loss, _ = fused_linear_cross_entropy(h, W, t, w, chunk=cfg["chunk"])
    else:
        loss = naive_linear_cross_entropy(h, W, t, w)
    loss.backward()
    h.grad = W.grad = None
    return float(loss)
if dev == "cuda":
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
else:
    base = rss()
times = []
for _ in range(cfg["repeats"]):
    t0 = time.perf_counter(); loss = step()
    if dev == "cuda": torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
peak = (torch.cuda.max_memory_allocated() if dev == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
print(json.dumps({"loss": loss, "time_s": min(times), "peak_bytes": peak - base}))
"""


def _child(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed ({cfg['kind']}):\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_fused_ce(tokens: int = 4096, dim: int = 1024, vocab: int = 152_064 + 16_384, chunk: int = 0,
                   repeats: int = 2, device: str = "cpu", dtype: str = "float32") -> dict:
    """Fused chunked linear+CE vs naive full-logits CE: peak extra memory and time, side by side."""
    base = dict(tokens=tokens, dim=dim, vocab=vocab, chunk=chunk or None, repeats=1, device=device, dtype=dtype)
    runs: dict[str, list[dict]] = {"naive": [], "fused": []}
    for _ in range(repeats):  # alternate, so load from other processes hits both alike
        for kind in runs:
            runs[kind].append(_child({**base, "kind": kind}))
    naive, fused = ({"loss": r[0]["loss"], "time_s": min(x["time_s"] for x in r),
                     "peak_bytes": max(x["peak_bytes"] for x in r)} for r in runs.values())
    mem_ratio, time_ratio = fused["peak_bytes"] / naive["peak_bytes"], fused["time_s"] / naive["time_s"]
    print(f"fused_ce  N={tokens} d={dim} V={vocab} {device}/{dtype}")
    print(f"  {'':8}{'peak MiB':>12}{'time s':>10}{'loss':>12}")
    for name, r in (("naive", naive), ("fused", fused)):
        print(f"  {name:8}{r['peak_bytes'] / 2**20:12.1f}{r['time_s']:10.2f}{r['loss']:12.5f}")
    print(f"  ratio   {mem_ratio:12.3f}x{time_ratio:9.2f}x   (targets <= 0.15x memory, <= 1.3x time)")
    return {"memory_ratio": mem_ratio, "time_ratio": time_ratio, "naive": naive, "fused": fused}


def _t2i_items(cfg, side: int, batch: int, caption_len: int, seed: int = 0) -> list[dict]:
    """Items as PretokenizedDataModule yields them (self-corrected inputs + paired targets)."""
    from modules.common.scale_schedule import ScaleSchedule

    sch = ScaleSchedule.square(side)
    g = torch.Generator().manual_seed(seed)

    def maps():
        return [torch.randint(0, cfg.codebook_size, grid, generator=g) for grid in sch.grids]

    return [{"task": "t2i", "text_ids": torch.randint(0, cfg.text_vocab_size, (caption_len,), generator=g).tolist(),
             "schedule": sch, "targets": maps(), "inputs": maps(), "clean_targets": maps(), "key": str(i),
             "train": True} for i in range(batch)]


def _autocast_loss(module, prepared, device: str):
    """The training loss under bf16 autocast, as Lightning's `precision: bf16-mixed` runs it."""
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        return module.compute_loss(prepared)["loss"]


def bench_train_step(preset: str = "shapes-small", overrides: dict | None = None, sides: tuple[int, ...] = (8, 16), batch: int = 8,
                     caption_len: int = 12, steps: int = 4, codebook_size: int = 256,
                     code_dim: int = 40, plain: bool = False, device: str = "cpu") -> dict:
    """AR training samples/s, per-sample sequence building (before: `ARModule.reference_batch`,
    features built per sample on the CPU inside the step) vs index batches (after: the model's
    batcher, as the datamodule's collate runs it, plus the batched gather/upsample on the device),
    at the quickstart's config: shapes-small with the quickstart's `overrides` (None: its 4 layers ×
    192, `Sizes.named("default").ar_model`), batch 8, 64 and 128 px Shapes schedules at patch 8
    (final grids `sides`), codebook 256, 40-dim codes, random codes. "after" counts the collate
    in the step (num_workers=0, the quickstart's setting); "after, collate in workers" leaves it
    out (what the step costs when workers prepare batches ahead). plain: also a plain decoder of
    the same size (token embeddings, SDPA is_causal, 1-D positions, full-logits CE), tokens/s.
    Each variant: the fastest of `steps` steps, interleaved with the others, after a warm-up."""
    from modules.ar.model import ARDecoder
    from modules.ar.module import ARModule
    from modules.common.devices import native_bf16

    if overrides is None:
        from commands.quickstart import Sizes

        overrides = Sizes.named("default").ar_model or {}
    torch.manual_seed(0)
    module = ARModule(preset=preset, overrides={**overrides, "codebook_size": codebook_size, "code_dim": code_dim},
                      text_tokenizer="shapes-words").to(device)
    module.train()
    cfg, batcher = module.config, module.batcher()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)

    def timed(step_fn, model_opt=opt) -> float:
        """Seconds of one training step (loss, backward, optimizer)."""
        t0 = time.perf_counter()
        loss = step_fn()
        model_opt.zero_grad(set_to_none=True)
        loss.backward()
        model_opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    results = {}
    print(f"train_step  {preset} {overrides or ''} ({cfg.estimate_params() / 1e6:.1f}M params) batch {batch}, codebook {codebook_size}, "
          f"code_dim {code_dim}, {device}, torch threads {torch.get_num_threads()}")
    for side in sides:
        items = _t2i_items(cfg, side, batch, caption_len)
        prepared = batcher(items)
        variants = {
            "before": lambda: module.compute_loss(items, reference=True)["loss"],
            "after": lambda: module.compute_loss(batcher(items))["loss"],
            "workers": lambda: module.compute_loss(prepared)["loss"],
            "bf16": lambda: _autocast_loss(module, prepared, device),
        }
        parts = {"sequences before": lambda: module.reference_batch(items), "collate after": lambda: batcher(items),
                 "device after": lambda: module.make_batch(prepared)}
        for fn in variants.values():
            timed(fn)  # warm-up
        times = {k: [] for k in [*variants, *parts]}
        for _ in range(steps):  # interleaved step by step, so load from other processes hits all alike
            for k, fn in variants.items():
                times[k].append(timed(fn))
            for k, fn in parts.items():
                t0 = time.perf_counter()
                fn()
                if device == "cuda":
                    torch.cuda.synchronize()
                times[k].append(time.perf_counter() - t0)
        best = {k: min(t) for k, t in times.items()}  # the least disturbed step of each
        sps = {k: batch / best[k] for k in variants}
        L = prepared.tokens.ids.shape[1]
        row = {**sps, "ratio": sps["after"] / sps["before"], "ratio_workers": sps["workers"] / sps["before"],
               "ratio_bf16": sps["bf16"] / sps["before"], "bf16_vs_fp32": sps["bf16"] / sps["workers"], "L": L,
               **{f"{k} s": best[k] for k in parts}}
        ms = {k: 1e3 * best[k] for k in parts}
        print(f"  {side * 8} px ({side}x{side} final grid at patch 8, L={L}), samples/s:")
        print(f"    before (per-sample builder in the step)  {sps['before']:8.2f}")
        print(f"    after  (index batch, collate in the step) {sps['after']:8.2f}   {row['ratio']:.2f}x   (target >= 2x)")
        print(f"    after  (collate in loader workers)       {sps['workers']:8.2f}   {row['ratio_workers']:.2f}x")
        print(f"    after, bf16 autocast (bf16-mixed)         {sps['bf16']:8.2f}   {row['ratio_bf16']:.2f}x   "
              f"({row['bf16_vs_fp32']:.2f}x fp32; native bf16 here: {native_bf16(device)})")
        print(f"    per batch: sequences before {ms['sequences before']:.0f} ms; after {ms['collate after']:.0f} ms "
              f"collate + {ms['device after']:.0f} ms gather/upsample; whole step {1e3 * best['workers']:.0f} ms")
        if plain:
            dec = ARDecoder(cfg).to(device)
            dec_opt = torch.optim.AdamW(dec.parameters(), lr=1e-4)
            ids = torch.randint(0, cfg.text_vocab_size, (batch, L + 1), device=device)
            pos = torch.arange(L, device=device, dtype=torch.float32)[None, :, None].expand(batch, L, 3)

            def plain_step():
                logits = dec(ids[:, :-1], pos, mask="causal")
                return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

            t_plain = min(timed(plain_step, dec_opt) for _ in range(steps + 1))
            row["plain_ratio"] = t_plain / best["workers"]
            print(f"  {'':>6}{'':>6} plain SDPA causal decoder {batch * L / t_plain:10.1f} tok/s; "
                  f"ours / plain {row['plain_ratio']:.3f}x (target >= 0.85x)")
        results[side] = row
    return results


def bench_sampling(device: str = "cpu") -> dict:
    """Next-scale vs raster-scan sampling (issue 5) and the sampling step's cost before vs after
    (issue 17); benchmarks/sampling.py."""
    from benchmarks import sampling as bs

    return bs.bench_sampling()


def bench_packing(device: str = "cpu", calibrate: bool = False, costs: str | None = None,
                  preset: str = "shapes-small", world: int = 8, samples_per_rank: int = 16, context: int = 16384,
                  steps: int = 20, real_ranks: int = 0) -> dict:
    """Compute-budget packing (issue 16 targets: >= 1.15x fixed-length packing, >= 3x padding, in
    tokens/s of a simulated `world`-rank step). calibrate: first time single-sample training steps
    of `preset` on `device` and write the fitted cost model to `costs`."""
    from benchmarks import packing as bp
    from modules.ar.module import ARModule
    from modules.common.packing import CostModel

    costs = costs or bp.DEFAULT_COSTS
    if calibrate:
        model, rows = bp.calibrate(preset=preset, device=device)
        bp.report_calibration(model, rows)
        model.save(costs)
        print(f"  wrote {costs}")
    model = CostModel.load(costs)
    batcher = ARModule(preset="tiny", overrides={"block_size": 4 * context}).batcher()  # the sequence layout only
    res = bp.simulate(model, batcher, world=world, samples_per_rank=samples_per_rank, context=context, steps=steps)
    bp.report_simulation(res, world, context, model)
    if real_ranks:
        res["real"] = bp.measure_ranks(model, world=real_ranks, preset=preset)
        bp.report_ranks(res["real"], real_ranks)
    return res


BENCHES = {"fused_ce": bench_fused_ce, "train_step": bench_train_step, "sampling": bench_sampling,
           "packing": bench_packing}


def run(what: str = "all", device: str = "cpu", calibrate: bool = False, costs: str | None = None,
        real_ranks: int = 0, ckpt: str | None = None, regression_ckpt: str | None = None,
        val_dir: str | None = None, val128_dir: str | None = None, out: str | None = None,
        max_images: int = 256, shift: float | None = None) -> dict:
    """Print speed/memory benchmarks side by side with their baselines (fused_ce, train_step, sampling,
    packing), or the refiner's metric table (refiner).

    Args:
        what: "all" or one of fused_ce, train_step, sampling, packing, refiner.
        device: "cpu" or "cuda" (fused_ce, train_step, packing's calibration).
        calibrate: packing: time training steps and fit the cost model first (writes `costs`).
        costs: packing: the cost model JSON (default configs/data/packing_costs_cpu.json).
        real_ranks: packing: also a real run of this many gloo processes (CPU) measuring the ranks'
            compute imbalance under fixed-length vs compute-budget packing (0 = skip).
        ckpt: refiner: the flow RefinerModule checkpoint.
        regression_ckpt: refiner: the regression control's checkpoint (optional row).
        val_dir: refiner: held-out raw shards (64 px scenes).
        val128_dir: refiner: held-out raw shards at 128 px (optional agreement at 128 px).
        out: refiner: folder for table.json and crops.png.
        max_images: refiner: images scored at 64 px.
        shift: refiner: the flow sampler's time shift (default: the checkpoint's sampling_shift).
    """
    from commands import UsageError

    if what == "refiner":
        from benchmarks.refiner import bench_refiner

        return {"refiner": bench_refiner(ckpt, regression_ckpt, val_dir, val128_dir, out=out, max_images=max_images,
                                            shift=shift)}
    if what != "all" and what not in BENCHES:
        raise UsageError(f"unknown benchmark {what!r}; choose one of {['all', *BENCHES, 'refiner']}")
    if (calibrate or costs or real_ranks) and what != "packing":
        raise UsageError(f"--calibrate, --costs and --real_ranks belong to `bench packing`, not {what!r}")
    names = list(BENCHES) if what == "all" else [what]
    packing = {"calibrate": calibrate, "costs": costs, "real_ranks": real_ranks}
    return {n: BENCHES[n](device=device, **(packing if n == "packing" else {})) for n in names}


if __name__ == "__main__":
    run(*sys.argv[1:2])
