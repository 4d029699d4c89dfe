"""Decoding state for KV-cached generation: the rows decoded together, their caches and key ids.

`prefill` builds each row's prefix with the sequence builder (modules/common/sequence.py) and runs
it; `DecodeState.feed` runs one chunk (a text token, the <boi> block, an image scale block) on
top of the cache under the training rule (`block_causal_mask` against the cached keys' block and
sample ids), unmasked when the chunk is one block over all-valid keys (VAR: at inference the cache
holds earlier scales and the queries are the current scale). `use_cache=False` reruns the whole
history each step under the same mask (the no-cache baseline, and the tests' reference).
Rows of different prefix lengths (CFG's conditional vs shorter unconditional rows, captions of
different lengths) are left-padded into one batch: each row keeps its own 3D positions, the
prefill runs under the block-causal mask, and every later one-block chunk needs only a per-row key
mask that hides the padding (one forward per step for all rows). `GroupedState` instead runs each
prefix length as its own unpadded state (one forward per group per step; `prefill(max_groups=2)`,
the text sampler's default and the sampling benchmark's baseline).
"""
from __future__ import annotations

import dataclasses

import torch

from modules.ar.model import ARDecoder, KVCache
from modules.common.sequence import SequenceBuilder, Tokens
from modules.common.attention_mask import block_causal_mask


def pad_rows(rows: list[Tokens], pad_id: int) -> Tokens:
    """1-D samples -> (B, L), left-padded (padding: sample −1, block −1), so row ends align."""
    L = max(len(r) for r in rows)
    out = {f.name: [] for f in dataclasses.fields(Tokens)}
    for r in rows:
        n = L - len(r)
        for f in dataclasses.fields(Tokens):
            if f.name == "sample":
                v = torch.cat([torch.full((n,), -1), torch.zeros(len(r), dtype=torch.long)])
            else:
                v = getattr(r, f.name)
                fill = {"ids": pad_id, "block": -1}.get(f.name, 0)
                v = torch.cat([torch.full((n, *v.shape[1:]), fill, dtype=v.dtype), v])
            out[f.name].append(v)
    return Tokens(**{k: torch.stack(v) for k, v in out.items()})


class DecodeState:
    """Rows decoded together: KV cache (or the full history when `use_cache` is off), block and
    sample ids of every key, next sequence position per row, forward-pass count."""

    def __init__(self, model: ARDecoder, use_cache: bool = True, record: list | None = None):
        self.model, self.use_cache, self.record = model, use_cache, record
        self.cache = KVCache() if use_cache else None
        self.history: list[Tokens] = []
        self.block_BL = self.sample_BL = None
        self.next_t: list[int] = []
        self.forwards = 0
        self.last_logits: torch.Tensor | None = None

    @property
    def device(self):
        return self.model.code_emb.device

    def feed(self, tok: Tokens) -> torch.Tensor:
        """Run a chunk (B, l) with `block`/`sample` set; returns its logits (B, l, V)."""
        tok = tok.to(self.device)
        blk_k = tok.block if self.block_BL is None else torch.cat([self.block_BL, tok.block], 1)
        smp_k = tok.sample if self.sample_BL is None else torch.cat([self.sample_BL, tok.sample], 1)
        l = tok.ids.shape[1]
        if self.use_cache:
            logits = self.model(**tok.model_inputs(), mask=self._chunk_mask(tok, blk_k, smp_k), cache=self.cache)
        else:  # full recomputation with the training-time block-causal mask
            self.history.append(tok)
            full = Tokens(**{f.name: torch.cat([getattr(h, f.name) for h in self.history], 1)
                             for f in dataclasses.fields(Tokens)})
            logits = self.model(**full.model_inputs(), mask=full.mask())[:, -l:]
        self.block_BL, self.sample_BL, self.last_logits = blk_k, smp_k, logits[:, -1]
        self.forwards += 1
        if self.record is not None:
            self.record.append(logits.detach().float().cpu())
        return logits

    def next_block(self) -> int:
        return int(self.block_BL.max()) + 1

    @staticmethod
    def _chunk_mask(tok: Tokens, blk_k: torch.Tensor, smp_k: torch.Tensor) -> torch.Tensor | None:
        """The training rule for a chunk against the cached keys. A chunk that is one block, later
        than every cached block, of one sample per row, needs only a per-row key mask (B, 1, 1, Lk):
        the rule reduces to sample_k == the row's sample, which drops left padding (sample −1)
        alone; it is None when no key is masked (VAR's unmasked inference step)."""
        blk_q, smp_q = tok.block[:, :1], tok.sample[:, :1]
        one_block = bool((tok.block == blk_q).all()) and bool((tok.sample == smp_q).all()) \
            and bool((blk_k <= blk_q).all())
        if not one_block:
            return block_causal_mask(tok.block, tok.sample, blk_k, smp_k)
        keys_BLk = smp_k == smp_q
        return None if bool(keys_BLk.all()) else keys_BLk[:, None, None]

    def keep_rows(self, n: int) -> None:
        """Keep the first n rows (drop the unconditional half once guidance is off)."""
        if self.cache is not None:
            self.cache.k = [k[:n] for k in self.cache.k]
            self.cache.v = [v[:n] for v in self.cache.v]
        self.history = [Tokens(**{f.name: getattr(h, f.name)[:n] for f in dataclasses.fields(Tokens)})
                        for h in self.history]
        self.block_BL, self.sample_BL, self.next_t = self.block_BL[:n], self.sample_BL[:n], self.next_t[:n]
        self.last_logits = None if self.last_logits is None else self.last_logits[:n]


def builder_for(model: ARDecoder) -> SequenceBuilder:
    c = model.config
    return SequenceBuilder(c.vocab, model.code_emb.detach().float().cpu(), rope_C=c.rope_C,
                           max_scales=c.max_scales,
                           visual_inputs=c.visual_inputs, upsample=c.upsample_mode, cond_dropout=0.0)


class GroupedState:
    """Rows split into groups of equal prefix length, each its own DecodeState: no padded keys, so
    every later chunk runs without a mask, at one forward per group per step. Same interface as
    DecodeState; logits come back in the original row order."""

    def __init__(self, groups: list[tuple[list[int], DecodeState]], record: list | None):
        self.groups, self.record = groups, record
        self.B = sum(len(rows) for rows, _ in groups)

    device = property(lambda self: self.groups[0][1].device)
    forwards = property(lambda self: max(st.forwards for _, st in self.groups))

    @property
    def next_t(self) -> list[int]:
        out = [0] * self.B
        for rows, st in self.groups:
            for r, t in zip(rows, st.next_t):
                out[r] = t
        return out

    @next_t.setter
    def next_t(self, values: list[int]) -> None:
        for rows, st in self.groups:
            st.next_t = [values[r] for r in rows]

    @property
    def last_logits(self) -> torch.Tensor:
        return self._merge([st.last_logits for _, st in self.groups])

    def _merge(self, parts: list[torch.Tensor]) -> torch.Tensor:
        out = parts[0].new_empty(self.B, *parts[0].shape[1:])
        for (rows, _), x in zip(self.groups, parts):
            out[torch.tensor(rows, device=out.device)] = x
        return out

    def feed(self, tok: Tokens) -> torch.Tensor:
        parts = [st.feed(Tokens(**{f.name: getattr(tok, f.name)[rows] for f in dataclasses.fields(Tokens)}))
                 for rows, st in self.groups]
        logits = self._merge(parts)
        if self.record is not None:
            self.record.append(logits.detach().float().cpu())
        return logits

    def next_block(self) -> int:
        return max(st.next_block() for _, st in self.groups)

    def keep_rows(self, n: int) -> None:
        kept = []
        for rows, st in self.groups:
            m = sum(r < n for r in rows)
            if m:
                st.keep_rows(m)  # rows are ascending, so the kept ones come first
                kept.append((rows[:m], st))
        self.groups, self.B = kept, n


def prefill(model: ARDecoder, builder: SequenceBuilder, prefixes: list[list], drop_cond: list[bool],
            use_cache: bool = True, record: list | None = None, max_groups: int = 2):
    """Build each row's prefix segments with the sequence builder and run them. Rows of equal
    length form groups run apart (at most `max_groups`, else one left-padded, masked batch).
    Returns the state and the logits of every row's last prefix token (B, V)."""
    rows = [builder.build(segs, drop_cond=d) for segs, d in zip(prefixes, drop_cond)]
    lengths = sorted({len(r) for r in rows})
    if len(lengths) == 1 or len(lengths) > max_groups:
        st = DecodeState(model, use_cache, record)
        st.next_t = [int(r.pos[:, 0].max()) + 1 if len(r) else 0 for r in rows]
        return st, st.feed(pad_rows(rows, builder.vocab.pad))[:, -1]
    groups, recs = [], []
    for n in lengths:
        idx = [i for i, r in enumerate(rows) if len(r) == n]
        recs.append([] if record is not None else None)
        sub, _ = prefill(model, builder, [prefixes[i] for i in idx], [drop_cond[i] for i in idx], use_cache,
                         recs[-1])
        sub.record = None  # the grouped state records merged rows from here on
        groups.append((idx, sub))
    st = GroupedState(groups, record)
    if record is not None:  # prefill logits left-padded with zeros, as the padded batch lays them out
        L = lengths[-1]
        record.append(st._merge([torch.nn.functional.pad(r[0], (0, 0, L - r[0].shape[1], 0)) for r in recs]))
    return st, st.last_logits


def stack_rows(rows: list[Tokens], block: int) -> Tokens:
    """Equal-length 1-D rows -> one chunk (B, l) that is a single new block."""
    tok = Tokens(**{f.name: torch.stack([getattr(r, f.name) for r in rows])
                    for f in dataclasses.fields(Tokens) if f.name != "sample"})
    tok.block = torch.full_like(tok.block, block)
    tok.sample = torch.zeros_like(tok.block)
    return tok
