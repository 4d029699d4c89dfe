"""Benchmarks that print ratios against a baseline run in the same invocation (not timed tests).

    python main.py bench --what fused_ce     fused chunked linear+CE vs naive: peak memory, time
    python main.py bench --what train_step   AR training step vs a plain SDPA causal decoder
    python main.py bench --what sampling     next-scale vs raster-scan sampling (issue 5)
    python main.py bench                     all of the above

Issue 4 targets: fused_ce <= 0.15x naive peak memory at <= 1.3x naive time (4096 tokens,
d = 1024, vocabulary 152,064 + 16,384); train_step >= 0.85x the plain decoder's tokens/s.
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


def _t2i_items(cfg, side: int, batch: int, caption_len: int) -> list[dict]:
    """Items as PretokenizedDataModule yields them (self-corrected inputs + paired targets)."""
    from modules.common.scale_schedule import ScaleSchedule

    sch = ScaleSchedule.square(side)

    def maps():
        return [torch.randint(0, cfg.codebook_size, g) for g in sch.grids]

    return [{"task": "t2i", "text_ids": torch.randint(0, cfg.text_vocab_size, (caption_len,)).tolist(),
             "schedule": sch, "targets": maps(), "inputs": maps(), "clean_targets": maps(), "key": str(i)}
            for i in range(batch)]


def bench_train_step(preset: str = "shapes-small", side: int = 16, batch: int = 2, caption_len: int = 40,
                     steps: int = 3, device: str = "cpu") -> dict:
    """Tokens/s of an ARModule training step (sequence building from indices, visual connector,
    scale embeddings, 3D RoPE, block-causal mask, fused scale-weighted CE) vs a plain decoder of
    the same size (token embeddings, SDPA is_causal, 1-D positions, full-logits CE)."""
    from modules.ar.module import ARModule

    torch.manual_seed(0)
    module = ARModule(preset=preset).to(device)
    module.train()
    cfg = module.config
    items = _t2i_items(cfg, side, batch, caption_len)
    B, L = module.make_batch(items).ids.shape

    def run(model, step_fn):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        times = []
        for _ in range(steps + 1):
            t0 = time.perf_counter()
            loss = step_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        return B * L / (sum(times[1:]) / steps)  # first step = warm-up

    from modules.ar.model import ARDecoder

    plain = ARDecoder(cfg).to(device)
    ids = torch.randint(0, cfg.text_vocab_size, (B, L + 1), device=device)
    pos = torch.arange(L, device=device, dtype=torch.float32)[None, :, None].expand(B, L, 3)

    def plain_step():
        logits = plain(ids[:, :-1], pos, mask="causal")
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    tps_plain, tps_ours = [], []
    for _ in range(2):  # alternate, so load from other processes hits both alike
        tps_plain.append(run(plain, plain_step))
        tps_ours.append(run(module, lambda: module.compute_loss(items)["loss"]))
    tps_plain, tps_ours = max(tps_plain), max(tps_ours)
    ratio = tps_ours / tps_plain
    print(f"train_step  {preset} ({cfg.estimate_params() / 1e6:.1f}M params) B={B} L={L} {device}")
    print(f"  plain SDPA causal decoder {tps_plain:10.1f} tok/s")
    print(f"  ARModule training step    {tps_ours:10.1f} tok/s")
    print(f"  ratio                     {ratio:10.3f}x   (target >= 0.85x)")
    return {"ratio": ratio, "ours_tok_s": tps_ours, "plain_tok_s": tps_plain}


def bench_sampling(device: str = "cpu") -> dict:
    """Next-scale vs raster-scan sampling (issue 5) and the sampling step's cost before vs after
    (issue 17); benchmarks/sampling.py."""
    from benchmarks import sampling as bs

    return bs.bench_sampling()


BENCHES = {"fused_ce": bench_fused_ce, "train_step": bench_train_step, "sampling": bench_sampling}


def run(what: str = "all", device: str = "cpu") -> dict:
    """Print speed/memory benchmarks side by side with their baselines (fused_ce, train_step, sampling).

    Args:
        what: "all" or one of fused_ce, train_step, sampling.
        device: "cpu" or "cuda" (fused_ce, train_step).
    """
    from commands import UsageError

    if what != "all" and what not in BENCHES:
        raise UsageError(f"unknown benchmark {what!r}; choose one of {['all', *BENCHES]}")
    names = list(BENCHES) if what == "all" else [what]
    return {n: BENCHES[n](device=device) for n in names}


if __name__ == "__main__":
    run(*sys.argv[1:2])
