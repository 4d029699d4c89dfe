"""The unified sequence: single owner of token ids, 3D positions, block ids and loss weights.

One stream for every task (NF §3.1): `text … <boi> [scale blocks] [closing block] <eoi> text …`

  <boi> block    h_1·w_1 <boi> tokens (one for the 1×1 first scale) -> predict scale 1's codes
  scale block s  input = features of scale s−1's own codes upsampled to grid s (NF §3.3,
                 "residual"), or VAR's accumulated f̂ area-downsampled to grid s ("accumulated")
                 -> predict scale s's top-1 codes (self-correction: inputs from the corrupted
                 variant, targets top-1)
  closing block  the finest scale's own codes at its grid (no target): makes the whole image
                 visible to what follows; only when something follows (image-to-text, editing
                 source, interleaved), then <eoi>
Positions (modules/common/rope.py): text (t,t,t); <boi> at p (its grid positions if h_1·w_1>1),
block s at scale coordinate p+s (s = 1..K−1), closing at p+K, <eoi> at p+K+1, text continues.
Blocks: every text/special token is its own block; each image block is one block.
Loss weights: text 1; vision k_s from ScaleSchedule.loss_weights(alpha) (NF §4.3).

Two ways to a batch, with one layout:
  training  `SequenceBuilder.build_index` per sample + `collate_index` (dataloader workers): index
            tensors only (ids, positions, blocks, targets, text weights, scale ids) plus, per
            group of images sharing a schedule, their input codes and token offsets
            (`IndexBatch`); on the device `IndexBatch.materialize` gathers code embeddings,
            upsamples each scale once for the whole group and sets the vision weights for α.
  sampler   `SequenceBuilder.build` (and `boi_block` / `scale_block`): features computed per
            sample on the CPU; also the reference the batched path is tested against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F

from modules.common.vocab import UnifiedVocab
from modules.common.attention_mask import block_causal_mask
from modules.common.rope import image_positions, text_positions
from modules.common.scale_schedule import ScaleSchedule

IGNORE = -100


@dataclass
class Tokens:
    """Per-token fields of one sample (1-D, length L) or of a batch (B, L) after `collate`."""

    ids: torch.Tensor  # unified ids (visual input tokens hold <pad>; their input is `vis`)
    vis: torch.Tensor  # (.., D) code-embedding features of visual input tokens, 0 elsewhere
    vis_mask: torch.Tensor  # bool
    pos: torch.Tensor  # (.., 3) float (t, row, col)
    block: torch.Tensor  # long, non-decreasing within a sample
    scale: torch.Tensor  # long: scale a block predicts (0 = <boi>), max_scales = closing, -1 text
    nscales: torch.Tensor  # long: the image's number of scales, 0 for text
    target: torch.Tensor  # long: next-token target (unified id) or IGNORE
    weight: torch.Tensor  # float loss weight (0 where no loss)
    sample: torch.Tensor | None = None  # long, packed-sample id (-1 padding); set by collate

    def __len__(self) -> int:
        return self.ids.shape[-1]

    @staticmethod
    def cat(parts: list["Tokens"]) -> "Tokens":
        return Tokens(**{f.name: torch.cat([getattr(p, f.name) for p in parts], 0)
                         for f in fields(Tokens) if f.name != "sample"})

    def to(self, device) -> "Tokens":
        return Tokens(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                         for f in fields(self)})

    def mask(self) -> torch.Tensor:
        """Dense block-causal SDPA mask (B, 1, L, L) of a collated batch."""
        return block_causal_mask(self.block, self.sample)

    def model_inputs(self) -> dict:
        return dict(ids_BL=self.ids, pos_BL3=self.pos, vis_BLD=self.vis, vis_mask_BL=self.vis_mask,
                    scale_BL=self.scale, nscales_BL=self.nscales)


@dataclass
class TextSeg:
    ids: list[int]  # unified ids (text ids or specials such as task tokens / <eos>)
    loss: bool = False  # train next-token prediction of these tokens
    cond: bool = False  # dropped with the condition-dropout rate (CFG, NF §4)


@dataclass
class ImageSeg:
    schedule: ScaleSchedule
    targets: list[torch.Tensor]  # per scale (h, w) long top-1 codes
    inputs: list[torch.Tensor] | None = None  # self-corrected variant; None = targets
    loss: bool = True
    close: bool | None = None  # closing block + <eoi>; None = only when something follows


def split_scales(flat: torch.Tensor, schedule: ScaleSchedule) -> list[torch.Tensor]:
    """Scale-major, row-major flat codes (pretokenised `targets.npy`) -> per-scale (h, w) maps."""
    flat = torch.as_tensor(flat).long().reshape(-1)
    if flat.numel() != schedule.token_count:
        raise ValueError(f"{flat.numel()} codes do not fit {schedule} ({schedule.token_count} tokens)")
    return [flat[o:o + a].view(h, w) for o, a, (h, w) in zip(schedule.offsets, schedule.areas, schedule.grids)]


def _resize(f_NDHW: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(f_NDHW.shape[-2:]) == tuple(size):
        return f_NDHW
    if mode == "area":
        return F.interpolate(f_NDHW, size=size, mode="area")
    kw = {} if mode == "nearest" else {"align_corners": False}
    return F.interpolate(f_NDHW, size=size, mode=mode, **kw)


def batched_input_features(code_emb_KD: torch.Tensor, codes: list[torch.Tensor], schedule: ScaleSchedule,
                           mode: Literal["residual", "accumulated"] = "residual", upsample: str = "bicubic",
                           closing: bool = False) -> list[torch.Tensor]:
    """Input features (N, h_s·w_s, D) of the blocks predicting scales 2..K (+ the closing block)
    of N images sharing `schedule`; codes per scale (N, h, w). One interpolate per scale.

    residual (NF §3.3): block s = up(E[codes[s−1]], grid s).
    accumulated (VAR): f̂_s = Σ_{s'<s} up(E[codes[s']], final grid); block s = area(f̂_s, grid s)."""
    grids, out = schedule.grids, []
    emb = [code_emb_KD[c.to(code_emb_KD.device)].permute(0, 3, 1, 2) for c in codes]  # (N, D, h, w)
    n = len(grids) - 1 + (1 if closing else 0)
    if mode == "residual":
        for s in range(1, len(grids)):
            out.append(_resize(emb[s - 1], grids[s], upsample))
        if closing:
            out.append(emb[-1])
    elif mode == "accumulated":
        f_hat = torch.zeros_like(_resize(emb[0], grids[-1], upsample))
        for s in range(1, n + 1):
            f_hat = f_hat + _resize(emb[s - 1], grids[-1], upsample)
            out.append(_resize(f_hat, grids[min(s, len(grids) - 1)], "area"))
    else:
        raise ValueError(f"visual_inputs must be 'residual' or 'accumulated', got {mode!r}")
    return [f.flatten(2).transpose(1, 2) for f in out]


def scale_input_features(code_emb_KD: torch.Tensor, codes: list[torch.Tensor], schedule: ScaleSchedule,
                         mode: Literal["residual", "accumulated"] = "residual", upsample: str = "bicubic",
                         closing: bool = False) -> list[torch.Tensor]:
    """`batched_input_features` of one image: codes per scale (h, w) -> features (h_s·w_s, D)."""
    return [f[0] for f in batched_input_features(code_emb_KD, [c[None] for c in codes], schedule, mode,
                                                 upsample, closing)]


def _text_tokens(ids: list[int], t0: int, D: int) -> Tokens:
    n = len(ids)
    return Tokens(ids=torch.tensor(ids, dtype=torch.long).reshape(n), vis=torch.zeros(n, D),
                  vis_mask=torch.zeros(n, dtype=torch.bool), pos=text_positions(n, t0),
                  block=torch.zeros(n, dtype=torch.long), scale=torch.full((n,), -1),
                  nscales=torch.zeros(n, dtype=torch.long), target=torch.full((n,), IGNORE),
                  weight=torch.zeros(n))


def boi_block(schedule: ScaleSchedule, p: int, vocab: UnifiedVocab, D: int, C: float) -> Tokens:
    """The <boi> block at scale coordinate p (predicts scale 1). Shared with the sampler."""
    h, w = schedule.grids[0]
    tok = _text_tokens([vocab.boi] * (h * w), p, D)
    if h * w > 1:
        tok.pos = image_positions(h, w, p, C)
    tok.scale.zero_()
    tok.nscales.fill_(schedule.num_scales)
    return tok


def scale_block(schedule: ScaleSchedule, s: int, p: int, feats_lD: torch.Tensor, vocab: UnifiedVocab,
                C: float, closing_index: int) -> Tokens:
    """Visual input block s (1..K−1 predicts scale s+1 in 1-based terms; s == K is the closing
    block) at scale coordinate p+s. Shared with the sampler."""
    h, w = schedule.grids[min(s, schedule.num_scales - 1)]
    n = h * w
    if feats_lD.shape[0] != n:
        raise ValueError(f"block {s} of {schedule} needs {n} input features, got {feats_lD.shape[0]}")
    return Tokens(ids=torch.full((n,), vocab.pad), vis=feats_lD.float(),
                  vis_mask=torch.ones(n, dtype=torch.bool), pos=image_positions(h, w, p + s, C),
                  block=torch.zeros(n, dtype=torch.long),
                  scale=torch.full((n,), s if s < schedule.num_scales else closing_index),
                  nscales=torch.full((n,), schedule.num_scales), target=torch.full((n,), IGNORE),
                  weight=torch.zeros(n))


@dataclass
class ImageRef:
    """Where one image of a sample sits, for the batched feature path: its tokens (<boi> block,
    scale blocks, closing block) are contiguous from `start`."""

    schedule: ScaleSchedule
    codes: torch.Tensor  # (T,) long input codes (self-corrected variant or top-1), scale-major
    start: int
    close: bool
    loss: bool | float  # trained (a float: the sample's loss weight)


@dataclass
class SequenceBuilder:
    vocab: UnifiedVocab
    code_emb: torch.Tensor | None  # (K, D) tokenizer code embeddings (ARDecoder.code_emb); None: build_index only
    rope_C: float = 64.0
    max_scales: int = 18  # ScaleEmbedding index of the closing block
    visual_inputs: Literal["residual", "accumulated"] = "residual"
    upsample: str = "bicubic"
    alpha: float = 0.9  # NF §4.3 scale-aware reweighting; 0 = uniform
    cond_dropout: float = 0.1  # NF: text condition dropped for CFG
    max_len: int | None = None
    _weights: dict = field(default_factory=dict, repr=False)
    _templates: dict = field(default_factory=dict, repr=False)

    def loss_weights(self, schedule: ScaleSchedule) -> torch.Tensor:
        key = (schedule, self.alpha)
        if key not in self._weights:
            self._weights[key] = schedule.loss_weights(self.alpha)
        return self._weights[key]

    def build(self, segments: list[TextSeg | ImageSeg], *, drop_cond: bool | None = None,
              generator: torch.Generator | None = None) -> Tokens:
        """Tokens of one sample with visual input features (`vis`) and vision loss weights.
        `drop_cond` None draws condition dropout at `cond_dropout`."""
        if self.code_emb is None:
            raise ValueError("SequenceBuilder.build needs code_emb; without it use build_index")
        return self._build(segments, drop_cond, generator, features=True)[0]

    def build_index(self, segments: list[TextSeg | ImageSeg], *, drop_cond: bool | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tokens, list[ImageRef]]:
        """The same layout without features: `vis` is (L, 0), image tokens have weight 0, and each
        image is returned as an `ImageRef` for `collate_index` / `IndexBatch.materialize`."""
        return self._build(segments, drop_cond, generator, features=False)

    def _build(self, segments, drop_cond, generator, features: bool) -> tuple[Tokens, list[ImageRef]]:
        if drop_cond is None:
            drop_cond = self.cond_dropout > 0 and float(torch.rand((), generator=generator)) < self.cond_dropout
        segs = [s for s in segments if not (drop_cond and isinstance(s, TextSeg) and s.cond)]
        segs = [s for s in segs if not (isinstance(s, TextSeg) and not s.ids)]
        D = self.code_emb.shape[1] if features else 0
        parts, refs, t, block, n = [], [], 0, 0, 0
        for k, seg in enumerate(segs):
            follows = k + 1 < len(segs)
            if isinstance(seg, TextSeg):
                tok = _text_tokens(list(seg.ids), t, D)
                tok.block = torch.arange(block, block + len(tok))
                t, block, n = t + len(tok), block + len(tok), n + len(tok)
                parts.append(tok)
                self._link(parts, seg.loss)
                continue
            sched, V = seg.schedule, self.vocab
            inputs = seg.inputs if seg.inputs is not None else seg.targets
            if len(seg.targets) != sched.num_scales or len(inputs) != sched.num_scales:
                raise ValueError(f"image has {len(seg.targets)} target / {len(inputs)} input scales but its "
                                 f"schedule has {sched.num_scales}")
            close = follows if seg.close is None else seg.close
            if not features:  # cached layout; only the targets and block ids are per sample
                boi, rest = self._image_template(sched, t, close)
                tgt = V.visual(torch.cat([c.reshape(-1) for c in seg.targets]).long().cpu())
                a0 = sched.areas[0]
                rest_target = rest.target.clone()
                rest_target[:len(tgt) - a0] = tgt[a0:]
                refs.append(ImageRef(sched, torch.cat([c.reshape(-1) for c in inputs]).long(), n, close, seg.loss))
                parts.append(replace(boi, target=tgt[:a0], block=boi.block + block))
                self._link(parts, seg.loss)  # the token before <boi> predicts <boi>
                parts.append(replace(rest, target=rest_target, block=rest.block + block))
                block, n = block + sched.num_scales + (1 if close else 0), n + len(boi) + len(rest)
            else:
                feats = scale_input_features(self.code_emb, inputs, sched, self.visual_inputs, self.upsample, close)
                blocks = [boi_block(sched, t, V, D, self.rope_C)]
                blocks += [scale_block(sched, s, t, f, V, self.rope_C, self.max_scales) for s, f in enumerate(feats, 1)]
                w_all = self.loss_weights(sched) if seg.loss else torch.zeros(sched.token_count)
                for s in range(sched.num_scales):  # block s predicts scale s (0-based)
                    o, a = sched.offsets[s], sched.areas[s]
                    blocks[s].target = V.visual(seg.targets[s].reshape(-1).long().cpu())
                    blocks[s].weight = w_all[o:o + a].clone()
                for b in blocks:
                    b.block.fill_(block)
                    block += 1
                    n += len(b)
                parts.append(blocks[0])
                self._link(parts, seg.loss)  # the token before <boi> predicts <boi>
                parts.extend(blocks[1:])
            t += sched.num_scales + (1 if close else 0)
            if close:
                eoi = _text_tokens([V.eoi], t, D)
                eoi.block.fill_(block)
                parts.append(eoi)
                t, block, n = t + 1, block + 1, n + 1
        out = Tokens.cat(parts) if parts else _text_tokens([], 0, D)
        if self.max_len is not None and len(out) > self.max_len:
            raise ValueError(f"sequence of {len(out)} tokens is longer than the configured maximum "
                             f"{self.max_len}; raise max_len (ARConfig.block_size) or use a lower resolution")
        return out, refs

    def _image_template(self, schedule: ScaleSchedule, t: int, close: bool) -> tuple[Tokens, Tokens]:
        """(<boi> block, the other blocks) of an image at scale coordinate t without features,
        targets IGNORE, block ids from 0: the same `boi_block` / `scale_block` layout, cached."""
        key = (schedule, t, close)
        if key not in self._templates:
            K = schedule.num_scales
            blocks = [boi_block(schedule, t, self.vocab, 0, self.rope_C)]
            blocks += [scale_block(schedule, s, t, torch.zeros(schedule.areas[min(s, K - 1)], 0), self.vocab,
                                   self.rope_C, self.max_scales) for s in range(1, K + (1 if close else 0))]
            for i, b in enumerate(blocks):
                b.block.fill_(i)
            self._templates[key] = (blocks[0], Tokens.cat(blocks[1:]))
        return self._templates[key]

    @staticmethod
    def _link(parts: list[Tokens], loss: bool) -> None:
        """Next-token targets into parts[-1]'s tokens from the text-like token before each."""
        new = parts[-1]
        if new.vis_mask.any():
            return
        first = new.ids[:1]
        # inside a text run: token i predicts token i+1
        if len(new) > 1 and new.scale[0] < 0:
            new.target[:-1] = new.ids[1:]
            new.weight[:-1] = float(loss)
        if len(parts) > 1:
            prev = parts[-2]
            if prev.scale[-1] < 0 and not prev.vis_mask[-1]:  # previous token is text-like
                prev.target[-1] = first[0]
                prev.weight[-1] = float(loss)


def _pack(lengths: list[int], row_len: int | None) -> list[list[int]]:
    """Sample indices per row: one per row (row_len None) or greedy first-fit in order."""
    if row_len is None:
        return [[i] for i in range(len(lengths))]
    rows: list[list[int]] = []
    used: list[int] = []
    for i, n in enumerate(lengths):
        if n > row_len:
            raise ValueError(f"sample of {n} tokens exceeds the packing row length {row_len}")
        for r, u in enumerate(used):
            if u + n <= row_len:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    return rows


def collate(samples: list[Tokens], *, row_len: int | None = None, pad_to_multiple: int = 1,
            pad_id: int) -> Tokens:
    """Pack samples into rows (B, L). row_len None: one sample per row, padded to the longest;
    otherwise greedy first-fit packing in order into rows of row_len tokens (samples isolated by
    sample ids, positions restart per sample). Lengths are padded to `pad_to_multiple` (128 for
    flex_attention)."""
    return _collate(samples, _pack([len(s) for s in samples], row_len), row_len, pad_to_multiple, pad_id)


def _collate(samples: list[Tokens], rows: list[list[int]], row_len: int | None, pad_to_multiple: int,
             pad_id: int) -> Tokens:
    L = row_len or max(len(s) for s in samples)
    L = int(math.ceil(L / pad_to_multiple) * pad_to_multiple)
    out_rows = []
    for row in rows:
        blocks, sample_ids, b0 = [], [], 0
        for i, s in enumerate(samples[j] for j in row):
            blocks.append(s.block - (s.block[0] if len(s) else 0) + b0)
            b0 = int(blocks[-1][-1]) + 1 if len(s) else b0
            sample_ids.append(torch.full((len(s),), i))
        tok = Tokens.cat([samples[j] for j in row])
        tok.block, tok.sample = torch.cat(blocks), torch.cat(sample_ids)
        n = L - len(tok)
        if n:
            D = tok.vis.shape[1]
            pad = _text_tokens([pad_id] * n, 0, D)
            pad.pos.zero_()
            pad.block = torch.arange(b0, b0 + n)
            pad.sample = torch.full((n,), -1)
            tok = Tokens(**{f.name: torch.cat([getattr(tok, f.name), getattr(pad, f.name)]) for f in fields(Tokens)})
        out_rows.append(tok)
    return Tokens(**{f.name: torch.stack([getattr(r, f.name) for r in out_rows]) for f in fields(Tokens)})


@dataclass
class ImageGroup:
    """The images of a batch that share a schedule and closing flag."""

    schedule: ScaleSchedule
    close: bool
    codes: torch.Tensor  # (N, T) long input codes, scale-major
    start: torch.Tensor  # (N,) long flat index (row·L + offset) of each image's first token
    loss: torch.Tensor  # (N,) float: the image's loss weight (0: not trained; 1, or a mixture source's weight)

    def to(self, device) -> "ImageGroup":
        return replace(self, codes=self.codes.to(device, non_blocking=True),
                       start=self.start.to(device, non_blocking=True), loss=self.loss.to(device, non_blocking=True))


@dataclass
class IndexBatch:
    """A collated batch before its visual features exist: `tokens.vis` is (B, L, 0) and image
    tokens have weight 0 until `materialize`."""

    tokens: Tokens
    images: list[ImageGroup]
    # compute-budget packing (modules/common/packing.py): divide Σ w·CE by this instead of the
    # batch's own Σ w (the mean trained weight per micro-batch of its packing window); None: own
    loss_norm: float | None = None

    def to(self, device) -> "IndexBatch":
        return IndexBatch(self.tokens.to(device), [g.to(device) for g in self.images], self.loss_norm)

    def materialize(self, code_emb_KD: torch.Tensor, *, alpha: float,
                    mode: Literal["residual", "accumulated"] = "residual", upsample: str = "bicubic") -> Tokens:
        """Tokens with `vis` (B, L, D) and vision loss weights, on code_emb's device: per group one
        embedding gather and one interpolate per scale (`batched_input_features`)."""
        tok, dev = self.tokens, code_emb_KD.device
        B, L = tok.ids.shape
        D = code_emb_KD.shape[1]
        vis = torch.zeros(B * L, D, device=dev)
        weight = tok.weight.to(dev).reshape(-1).clone()
        for g in self.images:
            sch = g.schedule
            T, a0, N = sch.token_count, sch.areas[0], g.codes.shape[0]
            idx_NM = g.start[:, None] + torch.arange(T + (sch.areas[-1] if g.close else 0), device=dev)
            maps = [g.codes[:, o:o + a].reshape(N, h, w) for o, a, (h, w) in zip(sch.offsets, sch.areas, sch.grids)]
            feats = batched_input_features(code_emb_KD, maps, sch, mode, upsample, g.close)
            vis[idx_NM[:, a0:].reshape(-1)] = torch.cat(feats, 1).reshape(-1, D).float()
            w_T = sch.loss_weights(alpha).to(dev)
            weight[idx_NM[:, :T].reshape(-1)] = (w_T[None] * g.loss[:, None]).reshape(-1)
        return replace(tok, vis=vis.view(B, L, D), weight=weight.view(B, L))


def collate_index(samples: list[tuple[Tokens, list[ImageRef]]], *, row_len: int | None = None,
                  pad_to_multiple: int = 1, pad_id: int) -> IndexBatch:
    """`collate` of `build_index` outputs, with each image's input codes and flat token offset
    grouped by (schedule, closing)."""
    toks = [t for t, _ in samples]
    rows = _pack([len(t) for t in toks], row_len)
    tok = _collate(toks, rows, row_len, pad_to_multiple, pad_id)
    L = tok.ids.shape[1]
    groups: dict[tuple, list[tuple]] = {}
    for r, row in enumerate(rows):
        offset = 0
        for j in row:
            for ref in samples[j][1]:
                groups.setdefault((ref.schedule, ref.close), []).append((ref.codes, r * L + offset + ref.start, ref.loss))
            offset += len(toks[j])
    images = [ImageGroup(sch, close, torch.stack([c for c, _, _ in refs]), torch.tensor([s for _, s, _ in refs]),
                         torch.tensor([float(lo) for _, _, lo in refs]))
              for (sch, close), refs in groups.items()]
    return IndexBatch(tok, images)
