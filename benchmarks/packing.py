"""Packing benchmark (NF §4.1): padding vs fixed-length packing vs compute-budget packing.

    python main.py bench packing --calibrate     time training steps, fit the cost model, save it
    python main.py bench packing                 the simulated 8-rank step with the saved model

Calibration: single-sample training steps (forward, backward, AdamW) of an AR model on text-only,
text-to-image and interleaved sequences of several lengths, timed (fastest of `repeats` after a
warm-up; on CPU in CPU seconds at one thread, so other processes on the machine do not inflate
them); `CostModel.fit_times` fits seconds ≈ per_microbatch + per_token·tokens +
per_pair·attended pairs by least squares. On CPU the attention is dense SDPA with the block-causal
mask, so its time tracks L² of the row (≈ 2× the pairs of a causal sequence); on CUDA flex
attention skips fully masked tiles and tracks the pairs.

Simulation (no model runs): a global batch drawn from a mixture (text-only; T2I with final grids
16, 32, 64, i.e. 256/512/1024 px at patch 16; interleaved text and 2-3 images), each sequence laid
out by the real `SequenceBuilder` (its tokens and block-causal pairs), the calibrated cost per
micro-batch, `world` ranks, step time = the slowest rank's Σ micro-batch costs. Strategies over
the same samples:
  padding         every sample its own row, padded to the context length (fixed shapes): the
                  linear part runs on all padded tokens, causal attention over the whole row
  fixed-length    rows of the context length, first-fit in stream order (sequence.collate's
                  packing), one row per micro-batch, rows dealt to ranks in turn; padding tokens
                  cost the linear part, packed samples attend only within themselves
  compute-budget  `plan_window`: micro-batches capped by the context length in tokens and by a
                  compute budget (the costliest single sample), balanced over ranks (KK), equal
                  micro-batch counts
Ratios are of tokens/s (real tokens over the step time), so > 1 means faster than the baseline;
imbalance = max/mean of the ranks' costs.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass

import torch

from modules.ar import tasks
from modules.common.packing import CostModel, SeqStats, attended_pairs, plan_window
from modules.common.scale_schedule import ScaleSchedule
from modules.common.sequence import TextSeg, _pack

DEFAULT_COSTS = "configs/data/packing_costs_cpu.json"


@dataclass
class Mixture:
    """Sample shares and sizes of the simulated global batch."""

    text: float = 0.35  # text-only, length lognormal(median text_median)
    t2i: tuple[float, float, float] = (0.2, 0.2, 0.1)  # final grids 16, 32, 64
    interleaved: float = 0.15  # 2-3 images (grid 16 or 32) between text runs
    text_median: int = 400
    text_max: int = 8192
    caption_median: int = 40


def _layout_stats(builder, segs) -> SeqStats:
    tok, refs = builder.build_index(segs, drop_cond=False)
    weight = float((tok.weight > 0).sum()) + sum(r.schedule.token_count for r in refs if r.loss)
    return SeqStats(len(tok), attended_pairs(tok.block), weight)


class MixtureSampler:
    """Draws SeqStats of sequences laid out by the AR batcher's SequenceBuilder (zero codes: the
    layout, not the values, sets tokens and pairs)."""

    GRIDS = (16, 32, 64)

    def __init__(self, batcher: tasks.ItemBatcher, mix: Mixture, seed: int = 0):
        self.builder, self.vocab, self.mix = batcher._builder, batcher.vocab, mix
        self.rng = random.Random(seed)
        self.schedules = {g: ScaleSchedule.square(g) for g in self.GRIDS}
        self._cache: dict = {}

    def _lognorm(self, median: int, lo: int, hi: int, sigma: float = 0.8) -> int:
        return int(min(hi, max(lo, round(self.rng.lognormvariate(math.log(median), sigma)))))

    def _codes(self, sch):
        return [torch.zeros(h, w, dtype=torch.long) for h, w in sch.grids]

    def _cached(self, key, make) -> SeqStats:
        if key not in self._cache:
            self._cache[key] = _layout_stats(self.builder, make())
        return self._cache[key]

    def draw(self) -> tuple[str, SeqStats]:
        m, u = self.mix, self.rng.random()
        if u < m.text:
            n = self._lognorm(m.text_median, 16, m.text_max)
            return "text", self._cached(("text", n), lambda: [TextSeg([0] * n, loss=True)])
        u -= m.text
        for g, share in zip(self.GRIDS, m.t2i):
            if u < share:
                cap = self._lognorm(m.caption_median, 4, 256, 0.5)
                sch = self.schedules[g]
                return f"t2i_{g * 16}", self._cached(
                    ("t2i", g, cap), lambda: tasks.t2i(self.vocab, [0] * cap, sch, self._codes(sch)))
            u -= share
        k = self.rng.choice((2, 3))
        grids = tuple(self.rng.choice((16, 32)) for _ in range(k))
        texts = tuple(self._lognorm(80, 8, 512) for _ in range(k + 1))

        def make():
            parts: list = [[0] * texts[0]]
            for g, t in zip(grids, texts[1:]):
                parts += [(self.schedules[g], self._codes(self.schedules[g])), [0] * t]
            return tasks.interleaved(self.vocab, parts)

        return "interleaved", self._cached(("il", grids, texts), make)


def _padding_time(stats: list[SeqStats], model: CostModel, world: int, context: int) -> list[float]:
    """Every sample its own row padded to `context`, causal attention over the row, dealt in turn."""
    per = model.microbatch_cost(context, context * (context + 1) // 2)
    loads = [0.0] * world
    for i, _ in enumerate(stats):
        loads[i % world] += per
    return loads


def _fixed_length_time(stats: list[SeqStats], model: CostModel, world: int, context: int) -> list[float]:
    """Rows of `context` tokens, first-fit in stream order, one row per micro-batch, dealt in turn."""
    rows = _pack([s.tokens for s in stats], context)
    loads = [0.0] * world
    for r, row in enumerate(rows):
        pad = context - sum(stats[i].tokens for i in row)
        loads[r % world] += model.microbatch_cost(context, sum(stats[i].pairs for i in row) + pad)
    return loads


def _compute_budget_time(stats: list[SeqStats], model: CostModel, world: int, context: int,
                         cost_cap_factor: float, method: str) -> tuple[list[float], int]:
    cap = cost_cap_factor * max(model.cost(s.tokens, s.pairs) for s in stats)
    plan = plan_window(stats, model, world=world, token_cap=context, cost_cap=cap, method=method)
    return plan.costs, plan.microbatches_per_rank


def simulate(model: CostModel, batcher: tasks.ItemBatcher, *, world: int = 8, samples_per_rank: int = 16,
             context: int = 16384, steps: int = 20, cost_cap_factor: float = 1.0, method: str = "kk",
             mix: Mixture | None = None, seed: int = 0) -> dict:
    """Mean step time (slowest rank) and max/mean imbalance of the three strategies over `steps`
    global batches of `world · samples_per_rank` samples; ratios of tokens/s."""
    sampler = MixtureSampler(batcher, mix or Mixture(), seed)
    names = ("padding", "fixed-length", "compute-budget")
    step = {n: 0.0 for n in names}
    imb = {n: [] for n in names}
    tokens, kinds, mbs = 0, {}, []
    for _ in range(steps):
        drawn = [sampler.draw() for _ in range(world * samples_per_rank)]
        stats = [s for _, s in drawn]
        for k, _ in drawn:
            kinds[k] = kinds.get(k, 0) + 1
        tokens += sum(s.tokens for s in stats)
        cb, per_rank = _compute_budget_time(stats, model, world, context, cost_cap_factor, method)
        mbs.append(per_rank)
        for name, loads in zip(names, (_padding_time(stats, model, world, context),
                                       _fixed_length_time(stats, model, world, context), cb)):
            step[name] += max(loads)
            imb[name].append(max(loads) / (sum(loads) / len(loads)))
    out = {n: {"step_s": step[n] / steps, "tokens_per_s": tokens / step[n],
               "imbalance": sum(imb[n]) / steps} for n in names}
    out["ratio_vs_padding"] = out["compute-budget"]["tokens_per_s"] / out["padding"]["tokens_per_s"]
    out["ratio_vs_fixed"] = out["compute-budget"]["tokens_per_s"] / out["fixed-length"]["tokens_per_s"]
    out["fixed_vs_padding"] = out["fixed-length"]["tokens_per_s"] / out["padding"]["tokens_per_s"]
    out["mix"] = {k: v / (steps * world * samples_per_rank) for k, v in sorted(kinds.items())}
    out["mean_tokens"] = tokens / (steps * world * samples_per_rank)
    out["microbatches_per_rank"] = sum(mbs) / len(mbs)
    return out


# ----------------------------------------------------------------------------- calibration
CALIBRATION = (("text", 128), ("text", 512), ("text", 1024), ("text", 2048), ("text", 3072),
               ("t2i", 8), ("t2i", 16), ("t2i", 24), ("t2i", 32), ("il", 16))


def _calibration_items(cfg, kind: str, size: int, g: torch.Generator) -> list:
    """Segments of one calibration sequence."""
    V = cfg.vocab

    def maps(sch):
        return [torch.randint(0, cfg.codebook_size, grid, generator=g) for grid in sch.grids]

    def text(n):
        return torch.randint(0, cfg.text_vocab_size, (n,), generator=g).tolist()

    if kind == "text":
        return [TextSeg(text(size), loss=True)]
    sch = ScaleSchedule.square(size)
    if kind == "t2i":
        return tasks.t2i(V, text(40), sch, maps(sch))
    small = ScaleSchedule.square(size // 2)
    return tasks.interleaved(V, [text(60), (sch, maps(sch)), text(120), (small, maps(small)), text(30)])


def calibrate(preset: str = "shapes-small", repeats: int = 3, device: str = "cpu",
              specs: tuple = CALIBRATION, seed: int = 0) -> tuple[CostModel, list[dict]]:
    """Time single-sample training steps of `preset` over `specs` and fit the cost model."""
    from modules.ar.module import ARModule
    from modules.common.sequence import collate_index

    torch.manual_seed(seed)
    module = ARModule(preset=preset, overrides={"codebook_size": 256, "code_dim": 40, "block_size": 16384},
                      cond_dropout=0.0).to(device)
    module.train()
    cfg, batcher = module.config, module.batcher()
    opt = torch.optim.AdamW(module.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(seed)
    batches, rows = [], []
    for kind, size in specs:
        built = batcher._builder.build_index(_calibration_items(cfg, kind, size, g), drop_cond=False)
        batch = collate_index([built], pad_id=cfg.vocab.pad)
        batches.append((kind, size, batch, len(built[0]), attended_pairs(built[0].block)))

    # CPU: the process's CPU seconds at one thread (the work, not the wait for cores other
    # processes hold); CUDA: wall seconds after a synchronize
    clock = time.perf_counter if device == "cuda" else time.process_time
    threads = torch.get_num_threads()
    if device != "cuda":
        torch.set_num_threads(1)

    def step(batch) -> float:
        t0 = clock()
        loss = module.compute_loss(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        return clock() - t0

    times = {i: [] for i in range(len(batches))}
    step(batches[0][2])  # warm-up
    for _ in range(repeats):  # interleaved, so load from other processes hits all alike
        for i, (_, _, batch, _, _) in enumerate(batches):
            times[i].append(step(batch))
    for i, (kind, size, _, L, pairs) in enumerate(batches):
        rows.append({"kind": kind, "size": size, "tokens": L, "pairs": pairs, "seconds": min(times[i])})
    model = CostModel.fit_times([(1, r["tokens"], r["pairs"], r["seconds"]) for r in rows],
                                source=f"{preset} on {device}, " + ("wall seconds" if device == "cuda" else
                                "CPU seconds at one thread") + ", single-sample training steps")
    torch.set_num_threads(threads)
    for r in rows:
        r["predicted"] = model.microbatch_cost(r["tokens"], r["pairs"])
    return model, rows


def report_calibration(model: CostModel, rows: list[dict]) -> None:
    print(f"packing calibration: {model.source}")
    print(f"  {'sequence':14}{'tokens':>8}{'pairs':>12}{'measured s':>12}{'fitted s':>10}")
    for r in rows:
        print(f"  {r['kind'] + ' ' + str(r['size']):14}{r['tokens']:8d}{r['pairs']:12d}{r['seconds']:12.4f}"
              f"{r['predicted']:10.4f}")
    print(f"  cost = {model.per_microbatch:.3e} + {model.per_token:.3e}·tokens + {model.per_pair:.3e}·pairs s "
          f"(R² {model.fit['r2']:.4f}, mean |error| {100 * model.fit['mean_rel_error']:.1f}%)")


def report_simulation(res: dict, world: int, context: int, model: CostModel) -> None:
    print(f"packing: simulated {world}-rank step, context {context} tokens, cost model: {model.source}")
    print("  mixture " + ", ".join(f"{k} {100 * v:.0f}%" for k, v in res["mix"].items())
          + f"; mean {res['mean_tokens']:.0f} tokens/sample")
    print(f"  {'strategy':16}{'step (slowest rank)':>21}{'tokens/s':>12}{'max/mean':>10}")
    for n in ("padding", "fixed-length", "compute-budget"):
        r = res[n]
        print(f"  {n:16}{r['step_s']:19.2f} s{r['tokens_per_s']:12.0f}{r['imbalance']:10.3f}")
    print(f"  compute-budget vs padding       {res['ratio_vs_padding']:.2f}x  (target >= 3x; NF 4.1x)")
    print(f"  compute-budget vs fixed-length  {res['ratio_vs_fixed']:.2f}x  (target >= 1.15x; NF 1.19x)")
    print(f"  fixed-length vs padding         {res['fixed_vs_padding']:.2f}x  (NF 3.4x); "
          f"compute-budget micro-batches per rank {res['microbatches_per_rank']:.1f}")


# ----------------------------------------------------------------------------- real ranks
REAL_MIX = (("text", 128), ("text", 512), ("text", 1024), ("t2i", 8), ("t2i", 16), ("il", 16))


def _fixed_length_assign(stats: list[SeqStats], world: int, context: int) -> list[list[list[int]]]:
    rows = _pack([s.tokens for s in stats], context)
    return [[rows[r] for r in range(k, len(rows), world)] for k in range(world)]


def _rank_worker(rank: int, world: int, port: int, cfg: dict, queue) -> None:
    import os

    import torch.distributed as dist

    from modules.ar.module import ARModule
    from modules.common.sequence import collate_index

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    module = ARModule(preset=cfg["preset"], overrides={"codebook_size": 256, "code_dim": 40, "block_size": 16384},
                      cond_dropout=0.0)
    module.train()
    batcher = module.batcher()
    g = torch.Generator().manual_seed(cfg["seed"])
    built = [batcher._builder.build_index(_calibration_items(module.config, k, s, g), drop_cond=False)
             for k, s in cfg["specs"]]
    params = [p for p in module.parameters() if p.requires_grad]
    module.compute_loss(collate_index([built[0]], pad_id=module.config.vocab.pad))["loss"].backward()  # warm-up
    module.zero_grad(set_to_none=True)
    out = {}
    for name, plans in cfg["plans"].items():
        compute, wall = [], []
        for step_plan in plans:
            dist.barrier()
            t0, c0 = time.perf_counter(), time.process_time()
            for mb in step_plan[rank]:
                for i in mb:  # one row per sample: what a varlen / flex kernel computes (no cross terms)
                    module.compute_loss(collate_index([built[i]], pad_id=module.config.vocab.pad))["loss"].backward()
            c1 = time.process_time()
            flat = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros(p.numel()) for p in params])
            dist.all_reduce(flat)  # DDP's gradient all-reduce: every rank waits for the slowest
            t2 = time.perf_counter()
            module.zero_grad(set_to_none=True)
            compute.append(c1 - c0)
            wall.append(t2 - t0)
        out[name] = {"compute": compute, "wall": wall}
    queue.put((rank, out))
    dist.destroy_process_group()


def measure_ranks(model: CostModel, *, world: int = 2, preset: str = "shapes-small", steps: int = 3,
                  samples_per_rank: int = 8, context: int = 4096, seed: int = 0) -> dict:
    """A real `world`-process gloo run (CPU, one thread each): per step the same samples go to the
    ranks by fixed-length packing (rows dealt in turn) and by compute-budget packing; each rank
    runs forward+backward of its samples, then the gradient all-reduce. Per step: each rank's
    compute in CPU seconds (max/mean = measured imbalance; the max is the step's critical path with
    a core per rank) and the step's wall time (the slowest rank, inflated when the machine's cores
    are busy with other work)."""
    import socket

    import torch.multiprocessing as mp

    from modules.ar.module import ARModule

    rng = random.Random(seed)
    batcher = ARModule(preset="tiny", overrides={"block_size": 16384}).batcher()
    g = torch.Generator().manual_seed(seed)
    cfg_ar = ARModule(preset=preset, overrides={"codebook_size": 256, "code_dim": 40, "block_size": 16384}).config
    specs, plans = [], {"fixed-length": [], "compute-budget": []}
    predicted: dict[str, list[float]] = {name: [] for name in plans}
    for _ in range(steps):
        base = len(specs)
        step_specs = [rng.choice(REAL_MIX) for _ in range(world * samples_per_rank)]
        specs += step_specs
        stats = []
        for k, s in step_specs:
            tok, refs = batcher._builder.build_index(_calibration_items(cfg_ar, k, s, g), drop_cond=False)
            stats.append(SeqStats(len(tok), attended_pairs(tok.block), 0.0))
        cap = max(model.cost(s.tokens, s.pairs) for s in stats)
        fixed = _fixed_length_assign(stats, world, context)
        plan = plan_window(stats, model, world=world, token_cap=context, cost_cap=cap)
        plans["fixed-length"].append([[[base + i for i in mb] for mb in r] for r in fixed])
        plans["compute-budget"].append([[[base + i for i in mb] for mb in r] for r in plan.ranks])
        for name, ranks in (("fixed-length", fixed), ("compute-budget", plan.ranks)):
            loads = [sum(model.cost(stats[i].tokens, stats[i].pairs) for mb in r for i in mb) for r in ranks]
            predicted[name].append(max(loads) / (sum(loads) / world))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    cfg = {"preset": preset, "specs": specs, "plans": plans, "seed": seed}
    procs = [ctx.Process(target=_rank_worker, args=(r, world, port, cfg, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=3600) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    out = {}
    for name in plans:
        comp = [[results[r][name]["compute"][s] for r in range(world)] for s in range(steps)]
        wall = [max(results[r][name]["wall"][s] for r in range(world)) for s in range(steps)]
        out[name] = {"imbalance": sum(max(c) / (sum(c) / world) for c in comp) / steps,
                     "step_s": sum(wall) / steps, "critical_s": sum(max(c) for c in comp) / steps, "compute_s": comp,
                     "predicted_imbalance": sum(predicted[name]) / steps}
    out["speedup"] = out["fixed-length"]["step_s"] / out["compute-budget"]["step_s"]
    out["critical_speedup"] = out["fixed-length"]["critical_s"] / out["compute-budget"]["critical_s"]
    return out


def report_ranks(res: dict, world: int) -> None:
    print(f"packing: real {world}-process gloo run (CPU, one thread per rank, samples as their own rows)")
    print(f"  {'strategy':16}{'step wall s':>12}{'slowest rank CPU s':>20}{'max/mean CPU':>14}{'(model)':>9}"
          "   per-step rank CPU s")
    for n in ("fixed-length", "compute-budget"):
        r = res[n]
        steps = "; ".join(" ".join(f"{c:.1f}" for c in step) for step in r["compute_s"])
        print(f"  {n:16}{r['step_s']:12.2f}{r['critical_s']:20.2f}{r['imbalance']:14.3f}"
              f"{r['predicted_imbalance']:9.3f}   {steps}")
    print(f"  compute-budget vs fixed-length: slowest rank's CPU time {res['critical_speedup']:.2f}x, "
          f"wall step time {res['speedup']:.2f}x (wall includes waiting for cores other processes hold)")
