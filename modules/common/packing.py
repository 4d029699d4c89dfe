"""Compute-budget packing (NF §4.1 "fixed computation budget"; REFERENCE.md "Compute-budget packing").

Cost of one sequence (verl's `seqlen_balancing` cost, generalised to the block-causal mask):

    cost = per_token · tokens + per_pair · attended (query, key) pairs

and of a micro-batch `per_microbatch + Σ cost(sample)`: packed samples never see each other, so
their pairs add (they do not square together). Attended pairs follow the rule of
modules/common/attention_mask.py: a query of block b sees every key of its sample whose block
is <= b, so a sample with block sizes n_1..n_m (in order) attends Σ_b n_b · (n_1 + … + n_b) pairs
(text: one token per block, plain causal L(L+1)/2; a scale: all earlier blocks and itself). The
constants are fitted to measured step times (`python main.py bench packing --calibrate` writes a
`CostModel` JSON).

Packing, per window of samples (one optimizer step of every data-parallel rank):
  1. `fill_microbatches`: first-fit decreasing by cost into micro-batches capped by tokens
     (memory) and by cost (compute), the count rounded up to a multiple of the number of ranks;
  2. `balance_ranks`: micro-batches to ranks, equal counts on every rank (uneven counts hang
     DDP), balancing each rank's total cost: Karmarkar-Karp largest differencing (Karmarkar &
     Karp 1982; verl's equal-size variant) or longest-processing-time-first greedy (Graham 1969,
     <= 4/3 of the optimum).
The loss of a packed micro-batch is divided by the mean trained-token weight per micro-batch of
its window (`PackPlan.loss_norm`), not by its own: averaged over ranks and micro-batches this is
Σ w·CE / Σ w over the whole window, so every sample keeps the weight it has unpacked.
"""
from __future__ import annotations

import heapq
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from modules.common.errors import ConfigError


def attended_pairs(block_L: torch.Tensor) -> int:
    """Attended (query, key) pairs of one sample under the block-causal rule, from its block ids
    (non-decreasing, as modules/common/sequence.py assigns them)."""
    if block_L.numel() == 0:
        return 0
    _, counts = torch.unique_consecutive(block_L.reshape(-1), return_counts=True)
    counts = counts.long()
    return int((counts * torch.cumsum(counts, 0)).sum())


def pairs_of_layout(prefix: int, areas: tuple[int, ...] | list[int]) -> int:
    """Closed form for a text prefix of P tokens then image scales n_1..n_K (REFERENCE.md):
    P(P+1)/2 + Σ_k n_k·(P + Σ_{j<=k} n_j)."""
    total, seen = prefix * (prefix + 1) // 2, prefix
    for n in areas:
        seen += n
        total += n * seen
    return total


@dataclass
class CostModel:
    """Seconds (or any unit) of a micro-batch: per_microbatch + Σ per_token·tokens + per_pair·pairs."""

    per_token: float = 1.0
    per_pair: float = 1.0 / 24576  # verl's ratio at h = 4096 (24576·s + s² from 12h²s + 2hs²)
    per_microbatch: float = 0.0
    source: str = "default"  # how the constants were obtained (a calibration names its model, device)
    fit: dict = field(default_factory=dict)  # calibration residuals, sample count

    def cost(self, tokens: float, pairs: float) -> float:
        return self.per_token * tokens + self.per_pair * pairs

    def microbatch_cost(self, tokens: float, pairs: float) -> float:
        return self.per_microbatch + self.cost(tokens, pairs)

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CostModel":
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"packing cost model {p} not found; write one with "
                              f"`python main.py bench packing --calibrate --costs {p}`")
        try:
            data = json.loads(p.read_text())
            model = cls(**data)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"packing cost model {p} is not a CostModel JSON ({err}); rewrite it with "
                              "`python main.py bench packing --calibrate`") from None
        if min(model.per_token, model.per_pair, model.per_microbatch) < 0:
            raise ConfigError(f"packing cost model {p} has a negative constant; recalibrate it")
        return model

    @classmethod
    def fit_times(cls, rows: list[tuple[int, int, int, float]], source: str) -> "CostModel":
        """Least squares time ≈ per_microbatch·n_mb + per_token·tokens + per_pair·pairs over
        measured rows (n_microbatches, tokens, pairs, seconds), constants clamped at >= 0 (a
        negative one is dropped and the rest refitted: non-negative least squares by elimination)."""
        if len(rows) < 3:
            raise ValueError(f"calibration needs at least 3 timed rows, got {len(rows)}")
        X = torch.tensor([[r[0], r[1], r[2]] for r in rows], dtype=torch.float64)
        y = torch.tensor([r[3] for r in rows], dtype=torch.float64)
        scale = X.abs().amax(0).clamp_min(1e-12)
        active = [0, 1, 2]
        while True:
            sol = torch.linalg.lstsq(X[:, active] / scale[active], y[:, None]).solution[:, 0] / scale[active]
            if (sol >= 0).all() or len(active) == 1:
                break
            active.pop(int(torch.argmin(sol)))
        coef = torch.zeros(3, dtype=torch.float64)
        coef[active] = sol.clamp_min(0)
        pred = X @ coef
        rel = ((pred - y).abs() / y).tolist()
        r2 = 1 - float(((pred - y) ** 2).sum() / ((y - y.mean()) ** 2).sum())
        return cls(per_token=float(coef[1]), per_pair=float(coef[2]), per_microbatch=float(coef[0]), source=source,
                   fit={"rows": len(rows), "r2": r2, "max_rel_error": max(rel), "mean_rel_error": sum(rel) / len(rel)})


@dataclass
class SeqStats:
    """What packing needs of one sample: its tokens, attended pairs and trained-token weight
    (Σ loss weights: text 1 per trained token, an image with loss its token count)."""

    tokens: int
    pairs: int
    weight: float = 0.0


@dataclass
class PackPlan:
    """Sample indices per micro-batch per rank (`ranks[r][m]`), the same number of micro-batches on
    every rank, and the loss normaliser of the window: the mean trained-token weight per
    micro-batch (Σ weight / (ranks · micro-batches per rank))."""

    ranks: list[list[list[int]]]
    loss_norm: float
    costs: list[float]  # per rank: Σ micro-batch costs (the rank's step time under the cost model)

    @property
    def microbatches_per_rank(self) -> int:
        return len(self.ranks[0]) if self.ranks else 0

    def imbalance(self) -> float:
        """max / mean of the per-rank costs (1 = perfectly balanced)."""
        mean = sum(self.costs) / len(self.costs)
        return max(self.costs) / mean if mean > 0 else 1.0


def fill_microbatches(stats: list[SeqStats], model: CostModel, *, token_cap: int, cost_cap: float | None,
                      multiple: int = 1) -> list[list[int]]:
    """First-fit decreasing by cost into micro-batches holding <= token_cap tokens and <= cost_cap
    cost (None: tokens only); the number of micro-batches is then raised to a multiple of
    `multiple` (the ranks) by splitting the costliest splittable ones, so no micro-batch is empty
    while there are at least as many samples. A sample alone over a cap gets a micro-batch of
    its own (over token_cap: an error, it cannot fit in memory)."""
    for i, s in enumerate(stats):
        if s.tokens > token_cap:
            raise ConfigError(f"sample {i} has {s.tokens} tokens, more than the packing token cap {token_cap}; "
                              "raise token_cap (memory) or drop longer samples")
    cost = [model.cost(s.tokens, s.pairs) for s in stats]
    order = sorted(range(len(stats)), key=lambda i: (-cost[i], i))
    bins: list[list[int]] = []
    used_tok: list[int] = []
    used_cost: list[float] = []
    for i in order:
        for b in range(len(bins)):
            if used_tok[b] + stats[i].tokens <= token_cap and (cost_cap is None or used_cost[b] + cost[i] <= cost_cap):
                bins[b].append(i)
                used_tok[b] += stats[i].tokens
                used_cost[b] += cost[i]
                break
        else:
            bins.append([i])
            used_tok.append(stats[i].tokens)
            used_cost.append(cost[i])
    target = -(-len(bins) // multiple) * multiple
    while len(bins) < target and any(len(b) > 1 for b in bins):
        b = max((k for k in range(len(bins)) if len(bins[k]) > 1), key=lambda k: used_cost[k])
        items = sorted(bins[b], key=lambda i: -cost[i])
        halves: list[list[int]] = [[], []]
        sums = [0.0, 0.0]
        for i in items:  # LPT into two halves
            h = 0 if sums[0] <= sums[1] else 1
            halves[h].append(i)
            sums[h] += cost[i]
        bins[b], used_cost[b], used_tok[b] = halves[0], sums[0], sum(stats[i].tokens for i in halves[0])
        bins.append(halves[1])
        used_cost.append(sums[1])
        used_tok.append(sum(stats[i].tokens for i in halves[1]))
    return bins


def balance_ranks(costs: list[float], world: int, method: str = "kk") -> list[list[int]]:
    """Indices of `costs` (micro-batches) per rank, len(costs)/world on every rank, minimising the
    largest rank total. method "kk": Karmarkar-Karp largest differencing with equal-size sets;
    "lpt": longest-processing-time-first greedy with a per-rank count limit."""
    n = len(costs)
    if world < 1 or n % world:
        raise ValueError(f"{n} micro-batches cannot be split equally over {world} ranks")
    per = n // world
    if method == "lpt":
        loads = [0.0] * world
        out: list[list[int]] = [[] for _ in range(world)]
        for i in sorted(range(n), key=lambda i: (-costs[i], i)):
            r = min((r for r in range(world) if len(out[r]) < per), key=lambda r: (loads[r], r))
            out[r].append(i)
            loads[r] += costs[i]
        return out
    if method != "kk":
        raise ConfigError(f"balance method {method!r} is not one of 'kk', 'lpt'")
    # KK with equal-size sets: group the sorted items in chunks of `world` (one item per rank each),
    # each chunk a partial partition; repeatedly merge the two partitions with the largest spread,
    # pairing the heaviest set of one with the lightest of the other.
    order = sorted(range(n), key=lambda i: (costs[i], i))
    heap = []
    for c in range(per):
        sets = [(costs[i], [i]) for i in order[c * world:(c + 1) * world]]
        sets.sort(key=lambda s: -s[0])
        heap.append((-(sets[0][0] - sets[-1][0]), c, sets))
    heapq.heapify(heap)
    tie = per
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        merged = [(a[k][0] + b[world - 1 - k][0], a[k][1] + b[world - 1 - k][1]) for k in range(world)]
        merged.sort(key=lambda s: -s[0])
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), tie, merged))
        tie += 1
    return [sorted(s[1]) for s in heap[0][2]]


def plan_window(stats: list[SeqStats], model: CostModel, *, world: int, token_cap: int,
                cost_cap: float | None = None, method: str = "kk") -> PackPlan:
    """Compute-budget packing of one window of samples over `world` ranks (see the module doc)."""
    if len(stats) < world:
        raise ConfigError(f"a packing window of {len(stats)} samples cannot give each of {world} ranks a "
                          "micro-batch; raise the window")
    bins = fill_microbatches(stats, model, token_cap=token_cap, cost_cap=cost_cap, multiple=world)
    mb_cost = [model.microbatch_cost(sum(stats[i].tokens for i in b), sum(stats[i].pairs for i in b)) for b in bins]
    assign = balance_ranks(mb_cost, world, method)
    ranks = [[bins[m] for m in sorted(ms, key=lambda m: -mb_cost[m])] for ms in assign]
    loss_norm = sum(s.weight for s in stats) / len(bins)
    return PackPlan(ranks, loss_norm, [sum(mb_cost[m] for m in ms) for ms in assign])
