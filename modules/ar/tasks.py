"""Segment lists for each task, fed to `SequenceBuilder` (modules/common/sequence.py), and the
`ItemBatcher` that turns datamodule items into index batches.

    t2i          <t2i> caption(cond) [image, loss]
    i2t          <i2t> [image, no loss, closed] prompt answer <eos> (answer trained)
    edit         <edit> [source image, no loss, closed] instruction(cond) [target image, loss]
    interleaved  <interleave> text [image] text [image] ... (everything trained)
Condition dropout removes the `cond` segments (text) so the same model learns the
unconditional branch used by classifier-free guidance (NF §4).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from modules.common.sequence import (ImageSeg, IndexBatch, SequenceBuilder, TextSeg, collate_index,
                                     split_scales)
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
