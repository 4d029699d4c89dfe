"""KV-cached generation for the unified decoder: images scale by scale, text token by token.

One place owns the sampling step (`sample_step`): restrict to a modality, classifier-free
guidance, temperature, top-k, top-p, multinomial with a torch.Generator (VAR's order:
REFERENCE.md "Sampling details": top-k then top-p then multinomial). Everything a step feeds is
built by the sequence builder's own functions (modules/ar/tasks.py segments for prefixes,
`boi_block` / `scale_block` / `scale_input_features` for image blocks), so generation sees exactly
the tokens, 3D positions and scale embeddings training saw; attention follows the training rule
(`block_causal_mask`) against the KV cache, and a chunk that is one block on an all-valid cache
runs unmasked (VAR: at inference the cache holds earlier scales; queries = the current scale).

CFG: the unconditional rows (the prefix built with `drop_cond=True`, the way training drops the
condition) run alongside in the same batch; sampled codes are fed to both halves. Their prefix is
shorter, so the batch is left-padded: every row keeps its own exact 3D positions, and each scale
is one forward whose attention masks the padding keys alone (a per-row key mask). Guidance
t_s is constant or VAR's linear ramp t_s = g·s/(K−1), logits = (1+t)·cond − t·uncond (VAR),
and is switched off from `guidance_off_from` on (the unconditional rows are then dropped).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import torch

from modules.ar import tasks
from modules.ar.decode_state import DecodeState, builder_for, prefill, stack_rows
from modules.ar.model import ARDecoder
from modules.common.sequence import (ImageSeg, SequenceBuilder, TextSeg, boi_block, scale_block,
                                 scale_input_features)
from modules.common.rope import text_positions
from modules.common.scale_schedule import ScaleSchedule

PerScale = float | list[float]
RowLayout = Literal["padded", "grouped"]


@dataclass(frozen=True)
class StepConfig:
    guidance: float = 0.0
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off


@dataclass
class SamplingConfig:
    """Sampling settings. Per-scale fields take one value or a list (one per scale; the last
    value repeats for finer scales). Unknown keys in `from_dict` raise, naming the key."""

    guidance: float = 0.0  # CFG scale g; 0 = no unconditional rows
    guidance_schedule: Literal["constant", "linear"] = "linear"  # VAR: linear ramp 0 -> g
    guidance_off_from: int | None = None  # 0-based scale index from which guidance is off
    temperature: PerScale = 1.0
    top_k: int | list[int] = 0
    top_p: PerScale = 1.0
    text_temperature: float = 1.0
    text_top_k: int = 0
    text_top_p: float = 1.0
    max_text_tokens: int = 64
    seed: int = 0
    use_cache: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SamplingConfig":
        d = dict(d or {})
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise ValueError(f"unknown sampling key(s) {unknown}; known keys: {known}")
        if d.get("guidance_schedule", "linear") not in ("constant", "linear"):
            raise ValueError(f"guidance_schedule must be 'constant' or 'linear', "
                             f"got {d['guidance_schedule']!r}")
        return cls(**d)

    @staticmethod
    def _at(v, s: int):
        if isinstance(v, (list, tuple)):
            if not v:
                raise ValueError("a per-scale sampling list must not be empty")
            return v[min(s, len(v) - 1)]
        return v

    def guidance_at(self, s: int, num_scales: int) -> float:
        if self.guidance == 0 or (self.guidance_off_from is not None and s >= self.guidance_off_from):
            return 0.0
        if self.guidance_schedule == "constant":
            return float(self.guidance)
        return float(self.guidance) * s / max(num_scales - 1, 1)  # VAR: t = cfg · si/(K−1)

    def step(self, s: int, num_scales: int) -> StepConfig:
        return StepConfig(self.guidance_at(s, num_scales), float(self._at(self.temperature, s)),
                          int(self._at(self.top_k, s)), float(self._at(self.top_p, s)))

    def text_step(self) -> StepConfig:
        return StepConfig(0.0, self.text_temperature, self.text_top_k, self.text_top_p)


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance as VAR applies it to logits: (1 + t)·cond − t·uncond (`t` a number,
    or a tensor broadcasting against the logits, e.g. one value per token's scale)."""
    return (1 + t) * cond - t * uncond


def _contiguous(allowed_V: torch.Tensor) -> tuple[int, int] | None:
    """(lo, hi) when the allowed ids are exactly the range [lo, hi), else None."""
    idx = allowed_V.nonzero()
    if len(idx) == 0:
        return None
    lo, hi = int(idx[0]), int(idx[-1]) + 1
    return (lo, hi) if hi - lo == len(idx) else None


def truncated_logits(logits_BlV: torch.Tensor, step: StepConfig, allowed_V: torch.Tensor | None = None,
                     uncond_BlV: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """The sampling step up to the draw: CFG combine (VAR: (1+t)·cond − t·uncond), vocabulary
    restriction, temperature, top-k, top-p (REFERENCE.md "Sampling details": top-k then top-p then
    multinomial). Returns (logits, offset): ids outside the kept set are −inf, and id i of the
    result is vocabulary id i + offset. Not defined for greedy steps (temperature 0, top_k 1).

    Cost: a restriction that is one id range (the visual codes) slices the logits instead of
    masking them (offset = the range's start); top-k masks below the k-th largest value (an
    unsorted top-k), and top-p sorts only the kept set (the top-k values when top-k is on). Every
    logit tied with the last kept value is kept; otherwise kept set and probabilities are those
    of a full sort (benchmarks/sampling.py `truncated_logits_sorted`, tests/test_sampler.py)."""
    x = logits_BlV.float()
    if uncond_BlV is not None and step.guidance != 0:
        x = cfg_combine(x, uncond_BlV.float(), step.guidance)
    offset = 0
    if allowed_V is not None:
        span = _contiguous(allowed_V)
        if span is not None:
            offset, x = span[0], x[..., span[0]:span[1]]
        else:
            x = x.masked_fill(~allowed_V.to(x.device), float("-inf"))
    if step.temperature <= 0 or step.top_k == 1:
        return x, offset
    x = x / step.temperature
    top_k = step.top_k if 0 < step.top_k < x.shape[-1] else 0
    if step.top_p < 1.0:  # the kept set in descending order: the top-k values, or a full sort
        srt = x.topk(top_k, dim=-1).values if top_k else x.sort(-1, descending=True).values
        p = srt.softmax(-1)
        keep = (p.cumsum(-1) - p) <= step.top_p  # the smallest prefix reaching top_p
        thr = srt.gather(-1, keep.sum(-1, keepdim=True).clamp_min(1) - 1)  # >= 1 token
        x = x.masked_fill(x < thr, float("-inf"))
    elif top_k:
        thr = x.topk(top_k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
        x = x.masked_fill(x < thr, float("-inf"))
    return x, offset


def draw(x_BlV: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Multinomial over softmax(x) by inverse CDF (one uniform per row; faster than
    torch.multinomial on CPU), never an id whose logit is −inf. -> (B, l)."""
    V = x_BlV.shape[-1]
    cdf = x_BlV.softmax(-1).reshape(-1, V).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True)
    last = V - 1 - (x_BlV.reshape(-1, V) > float("-inf")).flip(-1).float().argmax(-1, keepdim=True)
    return torch.minimum(idx, last).view(x_BlV.shape[:-1])


def sample_step(logits_BlV: torch.Tensor, step: StepConfig, allowed_V: torch.Tensor | None = None,
                generator: torch.Generator | None = None,
                uncond_BlV: torch.Tensor | None = None) -> torch.Tensor:
    """The sampling step: logits of the current step -> ids (B, l) (`truncated_logits`, then
    `draw`). temperature 0 or top_k 1 is greedy (argmax)."""
    x, offset = truncated_logits(logits_BlV, step, allowed_V, uncond_BlV)
    if step.temperature <= 0 or step.top_k == 1:
        return x.argmax(-1) + offset
    return draw(x, generator) + offset


def block_features(builder: SequenceBuilder, codes: list[torch.Tensor], schedule: ScaleSchedule,
                   s: int) -> torch.Tensor:
    """(B, h_s·w_s, D) input features of image block s (1..K−1; K = the closing block) from the
    codes sampled so far (per scale (B, h, w)), computed by the builder's `scale_input_features`.
    Residual inputs read only scale s−1, so the builder runs on the two-scale schedule
    (grid s−1, grid s); accumulated inputs need the final grid, so the builder runs on the whole
    schedule with not-yet-sampled scales zero-filled (block s reads scales < s only)."""
    K, out = schedule.num_scales, []
    for b in range(codes[0].shape[0]):
        if builder.visual_inputs == "residual":
            sub = ScaleSchedule(schedule.grids[s - 1:s + 1])
            pad = [torch.zeros(schedule.grids[s], dtype=torch.long)] if s < K else []  # never read
            feats = scale_input_features(builder.code_emb, [codes[s - 1][b].cpu(), *pad], sub, "residual",
                                         builder.upsample, closing=s == K)
        else:
            sub = schedule
            full = [codes[k][b].cpu() if k < len(codes) else torch.zeros(g, dtype=torch.long)
                    for k, g in enumerate(schedule.grids)]
            feats = scale_input_features(builder.code_emb, full, sub, builder.visual_inputs, builder.upsample,
                                         closing=s == K)
        out.append(feats[-1] if builder.visual_inputs == "residual" else feats[s - 1])
    return torch.stack(out)


@torch.no_grad()
def sample_image(st: DecodeState, builder: SequenceBuilder, schedule: ScaleSchedule, cfg: SamplingConfig,
                 generator: torch.Generator | None, n_cond: int, close: bool = False,
                 given: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Scale by scale on top of `st` (rows [0, n_cond) conditional, the rest unconditional).
    Returns per-scale codes (n_cond, h, w). `close` feeds the closing block and <eoi> after.
    `given`: codes (n_cond, h, w) of the first len(given) scales, taken instead of sampled (the
    model still reads them as its inputs: coarse scales from the truth, the rest sampled)."""
    given = list(given or [])
    if len(given) > schedule.num_scales:
        raise ValueError(f"{len(given)} given scales but the schedule has {schedule.num_scales}")
    V, C, K = builder.vocab, builder.rope_C, schedule.num_scales
    D = builder.code_emb.shape[1]
    allowed = V.visual_mask().to(st.device)
    p_B = list(st.next_t)
    codes: list[torch.Tensor] = []
    for s in range(K):
        if s == 0:  # NF: the first scale is predicted from the <boi> position
            rows = [boi_block(schedule, p, V, D, C) for p in p_B]
        else:
            feats = block_features(builder, codes, schedule, s)
            rows = [scale_block(schedule, s, p, feats[b % n_cond], V, C, builder.max_scales)
                    for b, p in enumerate(p_B)]
        logits = st.feed(stack_rows(rows, st.next_block()))
        step = cfg.step(s, K)
        uncond = logits[n_cond:] if len(p_B) > n_cond else None
        if s < len(given):
            codes.append(given[s].to(st.device).view(n_cond, *schedule.grids[s]))
        else:
            idx = sample_step(logits[:n_cond], step, allowed, generator, uncond)
            codes.append((idx - V.visual_offset).view(n_cond, *schedule.grids[s]))
        if len(p_B) > n_cond and all(cfg.guidance_at(r, K) == 0 for r in range(s + 1, K)):
            st.keep_rows(n_cond)  # guidance is off for every remaining scale
            p_B = p_B[:n_cond]
    st.next_t = [p + K for p in p_B]
    if close:  # closing block (the finest scale's own codes) + <eoi>, as the builder lays it out
        feats = block_features(builder, codes, schedule, K)
        st.feed(stack_rows([scale_block(schedule, K, p, feats[b % n_cond], V, C, builder.max_scales)
                        for b, p in enumerate(p_B)], st.next_block()))
        feed_text(st, torch.full((len(p_B),), V.eoi), [p + K + 1 for p in p_B], builder)
        st.next_t = [p + K + 2 for p in p_B]
    return codes


def feed_text(st: DecodeState, ids_B: torch.Tensor, t_B: list[int], builder: SequenceBuilder) -> torch.Tensor:
    """One text/special token per row at sequence position t_B (its own block) -> logits (B, V).
    The token's fields come from the builder (a one-token text segment), moved to position t."""
    one = builder.build([TextSeg([builder.vocab.pad])], drop_cond=False)
    tok = stack_rows([one] * len(t_B), st.next_block())
    tok.ids = ids_B.view(-1, 1).to(tok.ids)
    t_B11 = torch.tensor(t_B, dtype=torch.float32).view(-1, 1, 1)
    tok.pos = text_positions(1)[None].repeat(len(t_B), 1, 1) + t_B11
    return st.feed(tok)[:, -1]


@torch.no_grad()
def sample_text(st: DecodeState, builder: SequenceBuilder, logits_BV: torch.Tensor, cfg: SamplingConfig,
                generator: torch.Generator | None,
                allow_image: bool = False) -> tuple[list[list[int]], list[int | None]]:
    """Token by token from the logits of each row's last token, restricted to the text vocabulary
    (plus <eos>, and <boi> when `allow_image`: the model decides between text and an image).
    Stops a row at <eos> or <boi>; returns (text ids per row, stop token per row or None)."""
    V = builder.vocab
    allowed = V.text_mask().to(st.device)
    if not allow_image:
        allowed[V.boi] = False
    B = logits_BV.shape[0]
    out, stop = [[] for _ in range(B)], [None] * B
    for _ in range(cfg.max_text_tokens):
        ids = sample_step(logits_BV[:, None], cfg.text_step(), allowed, generator)[:, 0]
        for b, i in enumerate(ids.tolist()):
            if stop[b] is None:
                if i in (V.eos, V.boi):
                    stop[b] = i
                else:
                    out[b].append(i)
        if all(s is not None for s in stop):
            break
        logits_BV = feed_text(st, ids, st.next_t, builder)
        st.next_t = [t + 1 for t in st.next_t]
    return out, stop


def _generator(cfg: SamplingConfig, device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(cfg.seed))


def _buckets(keys: Sequence) -> dict:
    """Indices grouped by key, first-seen order (several aspect ratios in one call)."""
    groups: dict = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    return groups


@torch.no_grad()
def _image_task(model: ARDecoder, prefixes: list[list], schedules: Sequence[ScaleSchedule],
                cfg: SamplingConfig, record: list | None = None, stats: dict | None = None,
                rows: RowLayout = "padded", given: list[list[torch.Tensor]] | None = None) -> list[list[torch.Tensor]]:
    if rows not in ("padded", "grouped"):
        raise ValueError(f"rows must be 'padded' or 'grouped', got {rows!r}")
    builder, out = builder_for(model), [None] * len(prefixes)
    for schedule, idx in _buckets(schedules).items():
        segs = [prefixes[i] for i in idx]
        guided = cfg.guidance != 0 and any(cfg.guidance_at(s, schedule.num_scales) != 0
                                           for s in range(schedule.num_scales))
        n = len(segs)
        batch, drop = (segs + segs, [False] * n + [True] * n) if guided else (segs, [False] * n)
        st, _ = prefill(model, builder, batch, drop, cfg.use_cache, record,
                        max_groups=1 if rows == "padded" else 2)
        forced = None
        if given is not None:  # per prompt: its first m scales' codes -> per scale: (n, h, w)
            forced = [torch.stack([given[i][k] for i in idx]) for k in range(len(given[idx[0]]))]
        codes = sample_image(st, builder, schedule, cfg, _generator(cfg, st.device), len(segs), given=forced)
        for j, i in enumerate(idx):
            out[i] = [c[j] for c in codes]
        if stats is not None:
            stats["forwards"] = stats.get("forwards", 0) + st.forwards
    return out


def generate_images(model: ARDecoder, captions: list[list[int]],
                    schedules: ScaleSchedule | Sequence[ScaleSchedule],
                    cfg: SamplingConfig | None = None, *, record: list | None = None,
                    stats: dict | None = None, rows: RowLayout = "padded",
                    given: list[list[torch.Tensor]] | None = None) -> list[list[torch.Tensor]]:
    """Text-to-image: caption text ids per prompt -> per-scale codes (h_k, w_k) per prompt.
    `given` (per prompt, the same number m for all): the codes (h_k, w_k) of the first m scales,
    taken instead of sampled; the rest is sampled on top of them (a diagnostic: which scales fail).
    `schedules`: one for all, or one per prompt (bucketed by schedule). `rows`: "padded" runs
    every row (CFG's conditional and unconditional ones included) as one left-padded batch, one
    forward per scale; "grouped" runs each prefix length apart (the earlier layout, kept as the
    benchmark's baseline); both give the same logits."""
    cfg = cfg or SamplingConfig()
    V = model.config.vocab
    schedules = [schedules] * len(captions) if isinstance(schedules, ScaleSchedule) else list(schedules)
    prefixes = [_drop_image(tasks.t2i(V, list(c), s, [])) for c, s in zip(captions, schedules)]
    if given is not None and len({len(g) for g in given}) > 1:
        raise ValueError("given: every prompt needs the same number of given scales")
    return _image_task(model, prefixes, schedules, cfg, record, stats, rows, given)


def edit_images(model: ARDecoder, sources: list[tuple[ScaleSchedule, list[torch.Tensor]]],
                instructions: list[list[int]],
                target_schedules: ScaleSchedule | Sequence[ScaleSchedule] | None = None,
                cfg: SamplingConfig | None = None, *, record: list | None = None) -> list[list[torch.Tensor]]:
    """Editing: (source schedule, source codes) + instruction ids -> target codes. The source image
    stays in the unconditional rows (training drops only the instruction)."""
    cfg = cfg or SamplingConfig()
    V = model.config.vocab
    if target_schedules is None:
        target_schedules = [s for s, _ in sources]
    elif isinstance(target_schedules, ScaleSchedule):
        target_schedules = [target_schedules] * len(sources)
    prefixes = [_drop_image(tasks.edit(V, ss, list(sc), list(ins), ts, []))
                for (ss, sc), ins, ts in zip(sources, instructions, target_schedules)]
    return _image_task(model, prefixes, list(target_schedules), cfg, record)


@torch.no_grad()
def answer(model: ARDecoder, images: list[tuple[ScaleSchedule, list[torch.Tensor]]],
           prompts: list[list[int]] | None = None,
           cfg: SamplingConfig | None = None, *, record: list | None = None) -> list[list[int]]:
    """Image-to-text (caption, or answer the question in `prompts`): text ids per image."""
    cfg = cfg or SamplingConfig()
    V, builder = model.config.vocab, builder_for(model)
    prompts = prompts or [[] for _ in images]
    prefixes = [tasks.i2t(V, s, list(c), [], list(p))[:-1] for (s, c), p in zip(images, prompts)]
    st, last = prefill(model, builder, prefixes, [False] * len(prefixes), cfg.use_cache, record)
    text, _ = sample_text(st, builder, last, cfg, _generator(cfg, st.device), allow_image=False)
    return text


@torch.no_grad()
def continue_interleaved(model: ARDecoder, items: list, schedule: ScaleSchedule,
                         cfg: SamplingConfig | None = None,
                         *, max_images: int = 1, record: list | None = None) -> list:
    """Continue one interleaved sequence (items: text id lists and (schedule, codes) tuples).
    The model decides between text and <boi>; images use `schedule`. Returns the new items:
    text id lists and per-scale code lists. CFG is not used here (no unconditional stream)."""
    cfg = cfg or SamplingConfig()
    V, builder = model.config.vocab, builder_for(model)
    segs = tasks.interleaved(V, [tuple(it) if isinstance(it, tuple) else list(it) for it in items])
    for seg in segs:
        if isinstance(seg, ImageSeg):
            seg.close = True  # text follows every image of the context
    st, last = prefill(model, builder, [segs], [False], cfg.use_cache, record)
    g, new, images = _generator(cfg, st.device), [], 0
    while True:
        text, stop = sample_text(st, builder, last, cfg, g, allow_image=images < max_images)
        if text[0]:
            new.append(text[0])
        if stop[0] != V.boi:
            return new
        codes = sample_image(st, builder, schedule, cfg, g, 1, close=True)
        new.append([c[0] for c in codes])
        images += 1
        last = st.last_logits  # after the image's <eoi>


def _drop_image(segs: list) -> list:
    """A task's segments without the trailing image to generate (the prefix)."""
    if not segs or not isinstance(segs[-1], ImageSeg):
        raise ValueError("expected the task's segments to end with the image to generate")
    return segs[:-1]


# ---------------------------------------------------------------------------- checkpoints
def save_generator(model: ARDecoder, path, tokenizer_ckpt: str | None = None, text_tokenizer: str = "bytes",
                   text_tokenizer_path: str | None = None, trained_scale_counts: dict[int, int] | None = None) -> None:
    """A self-contained sampler checkpoint: {"ar_config", "state_dict", "tokenizer_ckpt",
    "text_tokenizer", "text_tokenizer_path", "trained_scale_counts"} (the last: {number of scales:
    images trained}, None = not recorded)."""
    cfg = {f.name: getattr(model.config, f.name) for f in dataclasses.fields(model.config) if f.init}
    torch.save({"ar_config": cfg, "state_dict": model.state_dict(), "tokenizer_ckpt": tokenizer_ckpt,
                "text_tokenizer": text_tokenizer, "text_tokenizer_path": text_tokenizer_path,
                "trained_scale_counts": trained_scale_counts}, path)


def load_generator(ckpt_path: str, map_location: str = "cpu",
                   tokenizer_ckpt: str | None = None) -> tuple[ARDecoder, dict]:
    """ARDecoder (eval) + metadata from a sampler checkpoint (`save_generator`) or an ARModule
    Lightning checkpoint (its `.model`; `tokenizer_ckpt` overrides the path saved in its
    hyper-parameters). Metadata: "tokenizer_ckpt", "text_tokenizer", "text_tokenizer_path",
    "trained_scale_counts" ({number of scales: images} the model trained on; None when the
    checkpoint recorded none) and "tokenizer_fingerprint" (of the tokenizer it trained with, when
    recorded)."""
    from pathlib import Path

    from modules.ar.config import ARConfig

    p = Path(ckpt_path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"AR checkpoint not found at {p}; train one with `python main.py fit "
                                "--config "
                                "configs/experiment/<ar experiment>.yaml` or pass the right --ckpt path")
    from modules.common.checkpoints import load_checkpoint

    raw = load_checkpoint(p, "ar", what="AR checkpoint", map_location=map_location)  # weights_only=True
    if isinstance(raw, dict) and "ar_config" in raw:
        # sampler checkpoints written before the RoPE layout was a config field used "sectioned"
        model = ARDecoder(ARConfig(**{"rope_layout": "sectioned", **raw["ar_config"]}))
        prefix = raw.get("ar_state_prefix", "")  # RL (GRPOModule) checkpoints: the policy under "model."
        model.load_state_dict({k[len(prefix):]: v for k, v in raw["state_dict"].items() if k.startswith(prefix)})
        return model.to(map_location).eval(), {"tokenizer_ckpt": tokenizer_ckpt or raw.get("tokenizer_ckpt"),
                                               "text_tokenizer": raw.get("text_tokenizer", "bytes"),
                                               "text_tokenizer_path": raw.get("text_tokenizer_path"),
                                               "trained_scale_counts": _counts(raw.get("trained_scale_counts")),
                                               "tokenizer_fingerprint": None}
    try:
        from modules.ar.module import ARModule  # the AR training LightningModule (issue 4)
    except ImportError as err:
        raise ValueError(f"{p} is not a sampler checkpoint (no 'ar_config') and ARModule is unavailable "
                         f"to read it as a Lightning checkpoint: {err}") from err
    hp = dict(raw.get("hyper_parameters", {})) if isinstance(raw, dict) else {}
    if "state_dict" not in raw:
        raise ValueError(f"{p} is neither a sampler checkpoint ('ar_config') nor a Lightning checkpoint "
                         "('state_dict')")
    tok = tokenizer_ckpt or hp.get("tokenizer_ckpt")
    module = ARModule.load_from_checkpoint(str(p), map_location=map_location, weights_only=True,
                                           tokenizer_ckpt=tok)
    model = next((m for m in module.modules() if isinstance(m, ARDecoder)), None)
    if model is None:
        raise ValueError(f"no ARDecoder inside the ARModule checkpoint {p}")
    return model.eval(), {"tokenizer_ckpt": tok, "text_tokenizer": hp.get("text_tokenizer", "bytes"),
                          "text_tokenizer_path": hp.get("text_tokenizer_path"),
                          "trained_scale_counts": _counts(raw.get("ar_trained_scale_counts")),
                          "tokenizer_fingerprint": raw.get("ar_tokenizer_fingerprint")}


def _counts(d) -> dict[int, int] | None:
    return {int(n): int(k) for n, k in d.items()} if d else None


def untrained_scale_counts(trained: dict[int, int] | None, needed) -> list[int]:
    """The scale counts in `needed` that `trained` ({count: images}) never saw; [] when nothing was
    recorded (an untrained model, or a checkpoint from before counts were recorded)."""
    return sorted({int(n) for n in needed} - set(trained)) if trained else []


def describe_scale_counts(counts, patch: int | None = None) -> str:
    """'8 scales (64 px square)' style text naming counts and, with the tokenizer patch, the square
    resolution each count is on the NextFlow 1:1 schedule."""
    from modules.common.scale_schedule import NEXTFLOW_SIDES

    def one(n):
        side = NEXTFLOW_SIDES[n - 1] if 1 <= n <= len(NEXTFLOW_SIDES) else None
        return f"{n}" + (f" ({side * patch} px square)" if side and patch else "")

    return ", ".join(one(int(n)) for n in sorted(counts))


def code_fingerprint(code_emb_KD: torch.Tensor) -> str:
    """First 16 hex digits of the SHA-256 of the code embeddings as float32 (for messages)."""
    import hashlib

    return hashlib.sha256(code_emb_KD.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def tokenizer_mismatch(model: ARDecoder, tokenizer_codes_KD: torch.Tensor, rtol: float = 1e-2) -> str | None:
    """None when the tokenizer's code embeddings are the ones the AR model was trained with
    (`ARDecoder.code_emb`, within rtol of their largest magnitude: bf16 copies pass, a retrained
    codebook does not); otherwise why not (shapes, largest difference, both fingerprints)."""
    mine = model.code_emb.detach().float().cpu()
    theirs = tokenizer_codes_KD.detach().float().cpu()
    if mine.shape != theirs.shape:
        return (f"code embeddings of shape {tuple(theirs.shape)} but the AR model's are {tuple(mine.shape)}")
    diff = float((mine - theirs).abs().max()) if mine.numel() else 0.0
    if diff <= rtol * max(float(mine.abs().max()) if mine.numel() else 0.0, 1e-12):
        return None
    return (f"code embeddings {code_fingerprint(theirs)} differ from the AR model's {code_fingerprint(mine)} "
            f"(max |difference| {diff:.3g})")
