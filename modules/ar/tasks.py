"""Segment lists for each task, fed to `SequenceBuilder.build` (modules/common/sequence.py).

    t2i          <t2i> caption(cond) [image, loss]
    i2t          <i2t> [image, no loss, closed] prompt answer <eos> (answer trained)
    edit         <edit> [source image, no loss, closed] instruction(cond) [target image, loss]
    interleaved  <interleave> text [image] text [image] ... (everything trained)
Condition dropout removes the `cond` segments (text) so the same model learns the
unconditional branch used by classifier-free guidance (NF §4).
"""
from __future__ import annotations

import numpy as np
import torch

from modules.common.sequence import ImageSeg, TextSeg, split_scales
from modules.common.vocab import UnifiedVocab
from modules.common.scale_schedule import ScaleSchedule


def t2i(vocab: UnifiedVocab, caption: list[int], schedule: ScaleSchedule, targets, inputs=None) -> list:
    return [TextSeg([vocab.task("t2i")]), TextSeg(list(caption), cond=True),
            ImageSeg(schedule, targets, inputs, loss=True)]


def i2t(vocab: UnifiedVocab, schedule: ScaleSchedule, codes, answer: list[int], prompt: list[int] = ()) -> list:
    return [TextSeg([vocab.task("i2t")]), ImageSeg(schedule, codes, None, loss=False, close=True),
            TextSeg(list(prompt)), TextSeg(list(answer) + [vocab.eos], loss=True)]


def edit(vocab: UnifiedVocab, src_schedule: ScaleSchedule, src_codes, instruction: list[int],
         tgt_schedule: ScaleSchedule, tgt_targets, tgt_inputs=None) -> list:
    return [TextSeg([vocab.task("edit")]), ImageSeg(src_schedule, src_codes, None, loss=False, close=True),
            TextSeg(list(instruction), cond=True), ImageSeg(tgt_schedule, tgt_targets, tgt_inputs, loss=True)]


def interleaved(vocab: UnifiedVocab, items: list) -> list:
    """items: text id lists and (schedule, targets[, inputs]) tuples, in order."""
    segs: list = [TextSeg([vocab.task("interleave")])]
    for it in items:
        if isinstance(it, tuple):
            segs.append(ImageSeg(it[0], it[1], it[2] if len(it) > 2 else None, loss=True))
        else:
            segs.append(TextSeg(list(it), loss=True))
    return segs


def from_pretokenized(sample: dict, vocab: UnifiedVocab, text_ids: list[int], *, variant: int | None = 0,
                      expected_codebook: int | None = None, generator: torch.Generator | None = None) -> list:
    """Segments of one sample from `datamodules.pretokenized.read_pretokenized` ({"json",
    "targets" (T,), "inputs" (V, T), "variant_targets" (V, T)}; raw "targets.npy"/"inputs.npy"
    keys are accepted too). `variant`: which self-corrected input row (None: drawn at random);
    its paired targets are used, since self-corrected targets depend on the corrupted history."""
    meta = sample["json"]
    K = meta.get("codebook_size")
    if expected_codebook is not None and K is not None and K != expected_codebook:
        raise ValueError(f"pretokenised sample {sample.get('key', sample.get('__key__', '?'))} has codebook_size {K} "
                         f"but the AR model expects {expected_codebook}; re-run pretokenize with the matching tokenizer")
    schedule = ScaleSchedule(tuple(tuple(g) for g in meta["grids"]))
    T = schedule.token_count
    targets = np.asarray(sample["targets"] if "targets" in sample else sample["targets.npy"]).reshape(-1, T)
    raw_inputs = sample.get("inputs", sample.get("inputs.npy"))
    inputs = None
    if raw_inputs is not None:
        rows = np.asarray(raw_inputs).reshape(-1, T)
        v = int(torch.randint(len(rows), (), generator=generator)) if variant is None else variant % len(rows)
        paired = np.asarray(sample.get("variant_targets", targets)).reshape(-1, T)
        targets = paired[v % len(paired)]
        inputs = split_scales(torch.from_numpy(rows[v].astype(np.int64)), schedule)
    targets = split_scales(torch.from_numpy(np.asarray(targets).reshape(-1)[:T].astype(np.int64)), schedule)
    task = meta.get("task", "t2i")
    if task == "t2i":
        return t2i(vocab, text_ids, schedule, targets, inputs)
    if task == "i2t":
        return i2t(vocab, schedule, targets, text_ids)
    raise ValueError(f"pretokenised task {task!r} is not supported by from_pretokenized (t2i, i2t)")
