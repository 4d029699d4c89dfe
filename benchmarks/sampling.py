"""Sampling benchmark: next-scale vs raster-scan AR on one randomly initialised model, in one run.

    bench_sampling(preset="tiny", grids=(16, 32, 64))   # wired as `python main.py bench --what sampling`

Prints (rich) wall time, forward passes and tokens/s of next-scale sampling (KV cache) and of
the raster-scan baseline (the same model, one token per step over the final grid, KV cache) for
each final grid, the speed ratios, next-scale with the KV cache on vs off, and FLOPs per image
from the model config: next-scale vs raster vs an MMDiT of equal width and depth (and the same
table for the Qwen2.5-7B shape at 64×64, the paper's 1024² setting; REFERENCE.md "Results":
about 6× fewer FLOPs than an MMDiT at 1024²).

Then the sampling step's cost, before vs after (issue 17), side by side in the same process:
CFG's conditional and unconditional rows as two forwards per scale (one per prefix length,
`rows="grouped"`) vs one left-padded forward (`rows="padded"`, the sampler's default), and the
truncation step as a full sort (`truncated_logits_sorted`, the earlier code, kept here as the
reference) vs the unsorted k-th value and a sort of the kept set only (`truncated_logits`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from modules.ar import tasks
from modules.ar.config import ARConfig
from modules.ar.decode_state import builder_for, prefill, stack_rows
from modules.ar.model import ARDecoder
from modules.ar.sampler import (SamplingConfig, StepConfig, _drop_image, draw, generate_images, sample_step,
                                truncated_logits)
from modules.common.sequence import Tokens, boi_block
from modules.common.rope import image_positions
from modules.common.scale_schedule import ScaleSchedule


# ---------------------------------------------------------------------------- the earlier sampling step
def truncated_logits_sorted(logits_BlV: torch.Tensor, step: StepConfig, allowed_V: torch.Tensor | None = None,
                            uncond_BlV: torch.Tensor | None = None) -> torch.Tensor:
    """The earlier truncation step (the reference for `truncated_logits`): mask the vocabulary,
    top-k from a sorted top-k, top-p from a full sort of the vocabulary. -> (B, l, V) logits,
    −inf outside the kept set."""
    x = logits_BlV.float()
    if uncond_BlV is not None and step.guidance != 0:
        x = (1 + step.guidance) * x - step.guidance * uncond_BlV.float()
    if allowed_V is not None:
        x = x.masked_fill(~allowed_V.to(x.device), float("-inf"))
    if step.temperature <= 0 or step.top_k == 1:
        return x
    x = x / step.temperature
    V = x.shape[-1]
    if 0 < step.top_k < V:
        kth = x.topk(step.top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if step.top_p < 1.0:
        srt, order = x.sort(-1, descending=True)
        p = srt.softmax(-1)
        drop = (p.cumsum(-1) - p) > step.top_p  # keeps the smallest prefix reaching top_p (>= 1 token)
        x = x.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return x


def sample_step_sorted(logits_BlV: torch.Tensor, step: StepConfig, allowed_V: torch.Tensor | None = None,
                       generator: torch.Generator | None = None,
                       uncond_BlV: torch.Tensor | None = None) -> torch.Tensor:
    """The earlier sampling step (`truncated_logits_sorted`, then the same draw)."""
    x = truncated_logits_sorted(logits_BlV, step, allowed_V, uncond_BlV)
    if step.temperature <= 0 or step.top_k == 1:
        return x.argmax(-1)
    return draw(x, generator)


# ---------------------------------------------------------------------------- raster-scan baseline
@torch.no_grad()
def sample_raster(model: ARDecoder, caption: list[int], height: int, width: int,
                  cfg: SamplingConfig | None = None,
                  stats: dict | None = None) -> torch.Tensor:
    """Raster-scan AR baseline (benchmark only): the final height×width grid one token per step,
    KV-cached. <boi> (a 1×1-schedule <boi> block) predicts token 0; token i's code embedding, at
    grid cell i's 3D position, predicts token i+1. Same model, prefix and sampling step as
    next-scale; the model was never trained this way, so only the speed is meaningful."""
    cfg = cfg or SamplingConfig()
    builder, V, c = builder_for(model), model.config.vocab, model.config
    final = ScaleSchedule(((height, width),))
    st, _ = prefill(model, builder, [_drop_image(tasks.t2i(V, caption, final, []))], [False], cfg.use_cache)
    g = torch.Generator(device=st.device).manual_seed(cfg.seed)
    p, D = st.next_t[0], builder.code_emb.shape[1]
    logits = st.feed(stack_rows([boi_block(ScaleSchedule(((1, 1),)), p, V, D, c.rope_C)], st.next_block()))
    pos_N3 = image_positions(height, width, p + 1, c.rope_C, device=st.device)
    code_emb = model.code_emb
    allowed, step = V.visual_mask().to(st.device), cfg.step(0, 1)
    N = height * width
    out = torch.empty(N, dtype=torch.long, device=st.device)
    one = lambda v, dt=torch.long: torch.full((1, 1), v, dtype=dt, device=st.device)  # noqa: E731
    for i in range(N):
        idx = sample_step(logits[:, -1:], step, allowed, g)
        out[i] = idx[0, 0] - V.visual_offset
        if i == N - 1:
            break
        tok = Tokens(ids=one(V.pad), vis=code_emb[out[i]].view(1, 1, D), vis_mask=one(True, torch.bool),
                     pos=pos_N3[i].view(1, 1, 3), block=one(st.next_block()), scale=one(1), nscales=one(1),
                     target=one(-100), weight=one(0.0, torch.float32), sample=one(0))
        logits = st.feed(tok)
    if stats is not None:
        stats["forwards"] = stats.get("forwards", 0) + st.forwards
    return out.view(height, width)


# ---------------------------------------------------------------------------- FLOPs (forward only)
@dataclass
class Flops:
    linear: float
    attention: float
    head: float

    @property
    def total(self) -> float:
        return self.linear + self.attention + self.head


def _per_token_linear(c: ARConfig) -> float:
    """2·MACs of q, k, v, o and the SwiGLU MLP per token per layer."""
    d, hd = c.n_embd, c.head_size
    qkvo = d * c.n_head * hd + 2 * d * c.n_query_groups * hd + c.n_head * hd * d
    return 2.0 * (qkvo + 3 * d * c.intermediate_size)


def _attention(c: ARConfig, pairs: float) -> float:
    """QKᵀ and AV: 2·2·head_size FLOPs per (query, key) pair per head per layer."""
    return 4.0 * c.head_size * c.n_head * c.n_layer * pairs


def next_scale_flops(c: ARConfig, schedule: ScaleSchedule, prefix: int, cache: bool = True) -> Flops:
    """Block s (a_s queries) attends to the prefix and all blocks <= s (C_s keys). With the
    cache each token is processed once; without, every step reruns the whole sequence (dense
    masked attention, all pairs computed). Head: logits of the current block only."""
    C, acc, tokens, pairs = [], 0, 0.0, 0.0
    for a in schedule.areas:
        acc += a
        C.append(acc)
    for a, ck in zip(schedule.areas, C):
        n_q = a if cache else prefix + ck
        tokens += n_q
        pairs += a * (prefix + ck) if cache else float(prefix + ck) ** 2
    pairs += prefix * (prefix + 1) / 2
    return Flops(c.n_layer * _per_token_linear(c) * (tokens + prefix), _attention(c, pairs),
                 2.0 * c.n_embd * c.vocab_size * schedule.token_count)


def raster_flops(c: ARConfig, n: int, prefix: int) -> Flops:
    """n+1 single-token steps (<boi> then n−1 codes; the prefill of `prefix` tokens), causal."""
    L = prefix + n
    pairs = L * (L + 1) / 2
    return Flops(c.n_layer * _per_token_linear(c) * L, _attention(c, pairs),
                 2.0 * c.n_embd * c.vocab_size * n)


def mmdit_flops(c: ARConfig, n_img: int, n_text: int = 77, steps: int = 28, cfg_batch: int = 1) -> Flops:
    """MMDiT (SD3-style) of equal width and depth: per step, joint full attention over
    n_img + n_text tokens, and each stream's own q/k/v/o + MLP weights per token (the same per-token
    cost as our layer; adaLN modulation is per image, not per token, and ignored), for `steps`
    denoising steps (SD3's default 28) times the CFG batch. Assumptions: latent tokens = our final
    grid (16× downsampling both), 77 text tokens (CLIP length), no text encoder, no VAE."""
    n = n_img + n_text
    return Flops(steps * cfg_batch * c.n_layer * _per_token_linear(c) * n,
                 steps * cfg_batch * _attention(c, float(n) ** 2),
                 steps * cfg_batch * 2.0 * c.n_embd * 64 * n_img)  # final linear: 2×2 patch × 16 latent ch


# ---------------------------------------------------------------------------- attention floor
@torch.no_grad()
def next_scale_attention_seconds(c: ARConfig, schedule: ScaleSchedule, prefix: int, device: str = "cpu",
                                 repeats: int = 1) -> float:
    """Wall time of next-scale sampling's attention alone: per scale, the block's a_s queries
    against the prefix and every block so far (the KV-cached shapes), for every layer, with the
    same SDPA call as the model (no mask: a block sees all cached keys). Nothing else runs, so
    raster_s / this is an upper bound on the speed ratio that any next-scale sampler of this
    model can reach on this machine: next-scale attends to 10084 keys from 4096 queries at the
    last 64x64 scale, about 7x raster's attention pairs."""
    hd, H, G = c.head_size, c.n_head, c.n_query_groups
    shapes, keys = [], prefix + 1  # + <boi>
    for a in schedule.areas:
        keys += a
        shapes.append((a, keys))
    tensors = [(torch.randn(1, H, a, hd, device=device), torch.randn(1, G, k, hd, device=device),
                torch.randn(1, G, k, hd, device=device)) for a, k in shapes]

    def run():
        for q, k, v in tensors:
            for _ in range(c.n_layer):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    return _timed(run, repeats)[0]


# ---------------------------------------------------------------------------- runs
def _timed(fn, repeats: int = 1):
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_sampling(preset: str = "tiny", grids: tuple[int, ...] = (16, 32, 64),
                   kv_off_grids: tuple[int, ...] = (16, 32), caption: str = "a photo of a red circle",
                   mmdit_steps: int = 28, mmdit_text_tokens: int = 77, threads: int | None = 1, seed: int = 0,
                   repeats: int = 2, device: str = "cpu", step_cost: bool = True, **overrides) -> dict:
    """Run the benchmark and print the tables (with `step_cost`, `bench_step_cost`'s too, on the
    same model and grids); returns the raw numbers. Wall times are the best
    of `repeats` runs (raster at grids >= 64: one run); one intra-op thread by default, since the
    two cores are shared (a second thread slows single-token steps down under load)."""
    from rich.console import Console
    from rich.table import Table

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = ARDecoder(ARConfig.from_name(preset, **overrides)).eval()
    c = model.config
    codes_KD = torch.nn.functional.normalize(torch.randn(c.codebook_size, c.code_dim), dim=-1)
    model.init_visual_from_codebook(codes_KD)
    model.to(device)
    cap = list(caption.encode())[: c.text_vocab_size]
    cap = [min(i, c.text_vocab_size - 1) for i in cap]
    prefix = 1 + len(cap)
    cfg = SamplingConfig(seed=seed, top_k=0)
    generate_images(model, [cap], ScaleSchedule.square(4), cfg)  # warm-up
    rows, res = [], {"preset": preset, "threads": torch.get_num_threads(), "grids": {}}
    for side in grids:
        sch = ScaleSchedule.square(side)
        s_ns, s_r = {}, {}
        t_ns, _ = _timed(lambda: generate_images(model, [cap], sch, cfg, stats=s_ns), repeats)
        r_repeats = 1 if side >= 64 else repeats
        t_r, _ = _timed(lambda: sample_raster(model, cap, side, side, cfg, stats=s_r), r_repeats)
        s_ns["forwards"] //= repeats
        s_r["forwards"] //= r_repeats
        r = {"next_scale_s": t_ns, "raster_s": t_r, "ratio": t_r / t_ns, "ns_forwards": s_ns["forwards"],
             "raster_forwards": s_r["forwards"], "ns_tokens": sch.token_count, "raster_tokens": side * side}
        if side in kv_off_grids:
            s_off = {}
            r["ns_nocache_s"], _ = _timed(lambda: generate_images(
                model, [cap], sch, SamplingConfig(seed=seed, use_cache=False), stats=s_off), repeats)
            r["kv_speedup"] = r["ns_nocache_s"] / t_ns
        r["ns_attention_s"] = next_scale_attention_seconds(c, sch, prefix, device, repeats)
        r["ratio_bound"] = t_r / r["ns_attention_s"]
        f_ns, f_r = next_scale_flops(c, sch, prefix), raster_flops(c, side * side, prefix)
        f_mm = mmdit_flops(c, side * side, mmdit_text_tokens, mmdit_steps)
        r.update(flops_ns=f_ns.total, flops_raster=f_r.total, flops_mmdit=f_mm.total,
                 flops_ns_nocache=next_scale_flops(c, sch, prefix, cache=False).total)
        res["grids"][side] = r
        rows.append((side, r))
    console = Console(width=150)
    t = Table(title=f"Sampling speed, preset {preset!r} ({c.n_layer} layers, d={c.n_embd}, "
                    f"{c.n_head} heads x {c.head_size}), random init, {torch.get_num_threads()} threads, "
                    "batch 1, no CFG")
    for col in ("final grid", "next-scale s", "fwd", "tok/s", "raster s", "fwd", "tok/s",
                "raster / next-scale", "attention-only s", "bound", "no-cache s", "KV speed-up"):
        t.add_column(col, justify="right")
    for side, r in rows:
        t.add_row(f"{side}x{side}", f"{r['next_scale_s']:.3f}", str(r["ns_forwards"]),
                  f"{r['ns_tokens'] / r['next_scale_s']:.0f}", f"{r['raster_s']:.2f}",
                  str(r["raster_forwards"]),
                  f"{r['raster_tokens'] / r['raster_s']:.0f}", f"{r['ratio']:.1f}x",
                  f"{r['ns_attention_s']:.3f}", f"{r['ratio_bound']:.1f}x",
                  f"{r['ns_nocache_s']:.2f}" if "ns_nocache_s" in r else "-",
                  f"{r['kv_speedup']:.1f}x" if "kv_speedup" in r else "-")
    console.print(t)
    console.print("raster / next-scale: " + ", ".join(f"{s}x{s} {r['ratio']:.1f}x" for s, r in rows)
                  + " (issue 5 target at 64x64: >= 25x)")
    console.print("bound = raster s / attention-only s: the ratio no next-scale sampler of this model can beat "
                  "here, since its attention alone (the KV-cached SDPA calls, nothing else) takes that long")
    ft = Table(title=f"Forward FLOPs per image (MMDiT: {mmdit_steps} steps, {mmdit_text_tokens} text tokens, "
                     "no CFG)")
    for col in ("model", "grid", "next-scale", "next-scale no cache", "raster", "MMDiT",
                "MMDiT / next-scale"):
        ft.add_column(col, justify="right")
    for side, r in rows:
        ft.add_row(preset, f"{side}x{side}", f"{r['flops_ns']:.3g}", f"{r['flops_ns_nocache']:.3g}",
                   f"{r['flops_raster']:.3g}", f"{r['flops_mmdit']:.3g}",
                   f"{r['flops_mmdit'] / r['flops_ns']:.1f}x")
    q = ARConfig.from_name("qwen2.5-7b")
    sch = ScaleSchedule.square(64)
    fq = (next_scale_flops(q, sch, prefix), next_scale_flops(q, sch, prefix, cache=False),
          raster_flops(q, 4096, prefix), mmdit_flops(q, 4096, mmdit_text_tokens, mmdit_steps))
    res["qwen7b_1024"] = {"next_scale": fq[0].total, "raster": fq[2].total, "mmdit": fq[3].total,
                          "mmdit_over_ns": fq[3].total / fq[0].total}
    ft.add_row("qwen2.5-7b", "64x64 (1024²)", *(f"{f.total:.3g}" for f in fq),
               f"{fq[3].total / fq[0].total:.1f}x")
    console.print(ft)
    per_step = fq[3].total / mmdit_steps
    ns = fq[0].total
    console.print(f"qwen2.5-7b at 1024²: MMDiT / next-scale = {fq[3].total / ns:.1f}x at {mmdit_steps} MMDiT "
                  f"steps, {18 * per_step / ns:.1f}x at 18, {50 * per_step / ns:.1f}x at 50 "
                  "(REFERENCE.md: about 6x)")
    if step_cost:
        res["step_cost"] = bench_step_cost(preset, grids, threads=threads, seed=seed, repeats=repeats,
                                           device=device, model=model)
    return res


# ---------------------------------------------------------------------------- step cost: before vs after
def _count_forwards(model: ARDecoder) -> tuple[dict, object]:
    calls = {"n": 0}

    def hook(_mod, _inp):
        calls["n"] += 1

    return calls, model.register_forward_pre_hook(hook)


def bench_step_cost(preset: str = "tiny", grids: tuple[int, ...] = (16, 32, 64), prompts: int = 1,
                    guidance: float = 3.0, caption: str = "a photo of a red circle",
                    step_preset: str = "shapes-small",
                    step_settings: tuple[tuple[int, float], ...] = ((8, 1.0), (512, 1.0), (8, 0.9)),
                    nf_rows: int = 64, threads: int | None = 1, seed: int = 0, repeats: int = 2,
                    device: str = "cpu", model: ARDecoder | None = None, **overrides) -> dict:
    """Before vs after, same process, alternating runs (best of `repeats`):

    - CFG rows: `generate_images` with constant guidance (unconditional rows at every scale) for
      `prompts` prompts, rows "grouped" (two forwards per scale) vs "padded" (one); the codes of
      both must agree, and the table says so.
    - Truncation step: `truncated_logits_sorted` vs `truncated_logits` then the same draw on
      random logits of the final scale (side² rows) over `step_preset`'s vocabulary restricted
      to its visual codes, for each (top_k, top_p) in `step_settings`; and one row at NextFlow's
      1024² setting (qwen2.5-7b vocabulary, top-k 2, top-p 0.9: REFERENCE.md "Prefix-tuning
      GRPO") on `nf_rows` rows."""
    from rich.console import Console
    from rich.table import Table

    if threads:
        torch.set_num_threads(threads)
    if model is None:
        torch.manual_seed(seed)
        model = ARDecoder(ARConfig.from_name(preset, **overrides)).eval()
        c = model.config
        model.init_visual_from_codebook(torch.nn.functional.normalize(torch.randn(c.codebook_size, c.code_dim), -1))
        model.to(device)
    c = model.config
    cap = [min(i, c.text_vocab_size - 1) for i in caption.encode()]
    cfg = SamplingConfig(seed=seed, guidance=guidance, guidance_schedule="constant")
    generate_images(model, [cap], ScaleSchedule.square(4), cfg)  # warm-up
    res: dict = {"preset": preset, "threads": torch.get_num_threads(), "cfg": {}, "step": []}
    for side in grids:
        sch, out, best = ScaleSchedule.square(side), {}, {}
        for _ in range(repeats):  # alternate, so load from other processes hits both alike
            for rows in ("grouped", "padded"):
                calls, h = _count_forwards(model)
                try:
                    t, out[rows] = _timed(lambda: generate_images(model, [cap] * prompts, sch, cfg, rows=rows))
                finally:
                    h.remove()
                best[rows] = min(best.get(rows, float("inf")), t)
                res["cfg"].setdefault(side, {})[f"{rows}_forwards"] = calls["n"]
        same = all(torch.equal(a, b) for x, y in zip(out["grouped"], out["padded"]) for a, b in zip(x, y))
        res["cfg"][side].update(grouped_s=best["grouped"], padded_s=best["padded"],
                                speedup=best["grouped"] / best["padded"], same_codes=same)

    def step_row(name: str, V, rows: int, k: int, p: float, reps: int):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, rows, V.size, generator=g) * 3
        allowed, step = V.visual_mask(), StepConfig(0.0, 1.0, k, p)
        def before():
            return draw(truncated_logits_sorted(x, step, allowed), torch.Generator().manual_seed(0))

        def after():
            y, offset = truncated_logits(x, step, allowed)
            return draw(y, torch.Generator().manual_seed(0)) + offset

        t_old = t_new = float("inf")
        for _ in range(reps):  # alternate
            t, a = _timed(before)
            t_old = min(t_old, t)
            t, b = _timed(after)
            t_new = min(t_new, t)
        r = {"vocab": name, "rows": rows, "V": V.size, "top_k": k, "top_p": p, "sorted_s": t_old,
             "kth_s": t_new, "speedup": t_old / t_new, "same_ids": bool(torch.equal(a, b))}
        res["step"].append(r)

    Vs = ARConfig.from_name(step_preset).vocab
    for side in grids:
        for k, p in step_settings:
            step_row(step_preset, Vs, side * side, k, p, repeats)
    step_row("qwen2.5-7b", ARConfig.from_name("qwen2.5-7b").vocab, nf_rows, 2, 0.9, 1)

    console = Console(width=150)
    t = Table(title=f"CFG rows, preset {preset!r}, {prompts} prompt(s) + unconditional rows, constant guidance "
                    f"{guidance}, {torch.get_num_threads()} threads: two forwards per scale (before) vs one "
                    "padded forward (after)")
    for col in ("final grid", "before s", "fwd", "after s", "fwd", "before / after", "same codes"):
        t.add_column(col, justify="right")
    for side, r in res["cfg"].items():
        t.add_row(f"{side}x{side}", f"{r['grouped_s']:.3f}", str(r["grouped_forwards"]), f"{r['padded_s']:.3f}",
                  str(r["padded_forwards"]), f"{r['speedup']:.2f}x", str(r["same_codes"]))
    console.print(t)
    t = Table(title="Truncation step (restrict to visual codes, top-k, top-p) + draw: full sort (before) vs "
                    "k-th value / sort of the kept set (after)")
    for col in ("vocabulary", "V", "rows", "top_k", "top_p", "before s", "after s", "before / after", "same ids"):
        t.add_column(col, justify="right")
    for r in res["step"]:
        t.add_row(r["vocab"], str(r["V"]), str(r["rows"]), str(r["top_k"]), f"{r['top_p']:g}",
                  f"{r['sorted_s']:.4f}", f"{r['kth_s']:.4f}", f"{r['speedup']:.2f}x", str(r["same_ids"]))
    console.print(t)
    return res
