"""Segment lists for each task, fed to `SequenceBuilder` (modules/common/sequence.py), and the
`ItemBatcher` that turns datamodule items into index batches.

    t2i          <t2i> caption(cond) [image, loss]
    i2t          <i2t> [image, no loss, closed] prompt answer <eos> (answer trained); the shards'
                 "understand" task is this with a question as the prompt
    edit         <edit> [source image, no loss, closed] instruction(cond) [target image, loss];
                 the shards' "subject" task is this with the subject image as the source
    interleaved  <interleave> text [image] text [image] ... <eos>; which parts are trained is
                 `story_loss` (default: everything after the first caption)
Condition dropout removes the `cond` segments (text) so the same model learns the
unconditional branch used by classifier-free guidance (NF §4).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from modules.common.packing import SeqStats, attended_pairs
from modules.common.sequence import ImageSeg, IndexBatch, SequenceBuilder, TextSeg, collate_index
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


STORY_LOSS = ("after_first_caption", "all", "images", "texts")


def interleaved(vocab: UnifiedVocab, items: list, story_loss: str = "all", end: bool = False) -> list:
    """items: text id lists and (schedule, targets[, inputs]) tuples, in order. story_loss:
    "all" trains every text and image; "after_first_caption" every part but the first text (the
    story's opening caption is the condition); "images" / "texts" only those (after the first
    caption). end: close the story with <eos> (trained with the texts)."""
    if story_loss not in STORY_LOSS:
        raise ValueError(f"story_loss {story_loss!r} is not one of {STORY_LOSS}")
    segs: list = [TextSeg([vocab.task("interleave")])]
    for k, it in enumerate(items):
        first_text = k == 0 and not isinstance(it, tuple)
        if isinstance(it, tuple):
            segs.append(ImageSeg(it[0], it[1], it[2] if len(it) > 2 else None, loss=story_loss != "texts"))
        else:
            segs.append(TextSeg(list(it), loss=story_loss == "all" or (story_loss in ("after_first_caption", "texts")
                                                                       and not first_text)))
    if end:
        segs.append(TextSeg([vocab.eos], loss=story_loss != "images"))
    return segs


@dataclass
class ItemBatcher:
    """Datamodule items -> `IndexBatch` (index tensors only, no code embeddings), so it runs in
    dataloader workers: `PretokenizedDataModule.collate` calls it once the AR model has handed
    it over (`ARModule.setup`). Items: {"task", "text_ids", "schedule", "targets", "inputs",
    "clean_targets", "key", "fingerprint", "codebook_size"} (+ "images": per-image
    {"targets", "inputs", "clean_targets"} for edit / subject / interleaved, "prompt_ids" for
    understand, "texts_ids" for interleaved); a "train" flag (set by the datamodule's training
    decode) turns on condition dropout; a "loss_weight" (a mixture source's, default 1) scales every
    loss weight of the sample."""

    vocab: UnifiedVocab
    text_vocab_size: int
    codebook_size: int
    rope_C: float
    max_scales: int
    max_len: int | None
    cond_dropout: float
    self_correct: bool = True
    fingerprint: str | None = None
    tokenizer_ckpt: str | None = None
    pack_row_len: int | None = None
    pad_to_multiple: int = 1
    seed: int = 0
    story_loss: str = "after_first_caption"

    def __post_init__(self):
        self._gen: torch.Generator | None = None
        self._builder = SequenceBuilder(self.vocab, None, rope_C=self.rope_C, max_scales=self.max_scales,
                                        cond_dropout=self.cond_dropout, max_len=self.max_len)

    def generator(self) -> torch.Generator:
        """Condition-dropout draws from `seed` (the model sets seed + rank), mixed in a dataloader
        worker with the worker's own seed (torch's, different per worker and epoch)."""
        if self._gen is None:
            info = torch.utils.data.get_worker_info()
            seed = self.seed if info is None else (info.seed + 1_000_003 * self.seed) % 2**63
            self._gen = torch.Generator().manual_seed(seed)
        return self._gen

    def segments(self, item: dict) -> list:
        vocab = self.vocab
        fp = item.get("fingerprint")
        if self.fingerprint and fp and fp != self.fingerprint:
            raise ValueError(f"shard sample {item.get('key')} was pretokenised by tokenizer {fp} but the AR model uses "
                             f"{self.fingerprint}; re-run pretokenize with {self.tokenizer_ckpt}")
        if (item.get("codebook_size") or self.codebook_size) != self.codebook_size:
            raise ValueError(f"shard sample {item.get('key')} has codebook_size {item['codebook_size']} but the AR "
                             f"model expects {self.codebook_size}")
        text = list(item["text_ids"])
        if text and max(text) >= self.text_vocab_size:
            raise ValueError(f"text id {max(text)} >= text_vocab_size {self.text_vocab_size}: text tokenizer and AR "
                             "config disagree")
        inputs = item.get("inputs") if self.self_correct else None
        targets = item["targets"] if inputs is not None else item.get("clean_targets", item["targets"])
        if item["task"] == "t2i":
            return t2i(vocab, text, item["schedule"], targets, inputs)
        if item["task"] == "i2t":
            return i2t(vocab, item["schedule"], item.get("clean_targets", targets), text)
        if item["task"] == "understand":
            return i2t(vocab, item["schedule"], item.get("clean_targets", targets), text, item.get("prompt_ids", ()))
        images = item.get("images")
        if item["task"] in ("edit", "subject", "interleaved") and not images:
            raise ValueError(f"{item['task']} item {item.get('key')} has no 'images' (pretokenise it with "
                             f"`main.py pretokenize --task {item['task']}`)")
        if item["task"] in ("edit", "subject"):
            src, tgt = images
            return edit(vocab, item["schedule"], src["clean_targets"], text, item["schedule"], *self._image(tgt))
        if item["task"] == "interleaved":
            texts = item.get("texts_ids") or []
            if len(texts) != len(images):
                raise ValueError(f"interleaved item {item.get('key')} has {len(texts)} texts for {len(images)} images")
            parts: list = []
            for t, im in zip(texts, images):
                parts += [list(t), (item["schedule"], *self._image(im))]
            return interleaved(vocab, parts, self.story_loss, end=True)
        raise ValueError(f"unknown task {item['task']!r} in batch item {item.get('key')}")

    def sequence_stats(self, item: dict) -> SeqStats:
        """Tokens, attended pairs and trained weight of an item's sequence without condition
        dropout (the same on every rank: compute-budget packing plans from it; dropout only
        shortens a sequence and never changes its trained weight)."""
        tok, refs = self._builder.build_index(self.segments(item), drop_cond=False)
        weight = float((tok.weight > 0).sum()) + sum(r.schedule.token_count for r in refs if r.loss)
        return SeqStats(len(tok), attended_pairs(tok.block), weight)

    def _image(self, im: dict) -> tuple:
        """(targets, inputs) of a trained image: self-corrected inputs with their paired targets,
        or the clean top-1 codes for both."""
        if self.self_correct:
            return im["targets"], im["inputs"]
        return im["clean_targets"], None

    def __call__(self, items: list[dict], *, train: bool | None = None,
                 generator: torch.Generator | None = None, row_len: int | None = None,
                 loss_norm: float | None = None) -> IndexBatch:
        """train None: from the items' "train" flag. generator None: this batcher's own.
        row_len: pack into rows of this length (default `pack_row_len`); loss_norm: the packing
        window's loss normaliser carried by the batch (modules/common/packing.py)."""
        train = bool(items and items[0].get("train")) if train is None else train
        g = generator if generator is not None else self.generator()
        drop = self.cond_dropout if train else 0.0
        samples = []
        for it in items:
            d = drop > 0 and float(torch.rand((), generator=g)) < drop
            tok, refs = self._builder.build_index(self.segments(it), drop_cond=d)
            w = float(it.get("loss_weight", 1.0))
            if w != 1.0:  # a mixture source's loss weight: text tokens here, images in `materialize`
                tok = replace(tok, weight=tok.weight * w)
                refs = [replace(r, loss=float(r.loss) * w) for r in refs]
            samples.append((tok, refs))
        batch = collate_index(samples, row_len=row_len or self.pack_row_len, pad_to_multiple=self.pad_to_multiple,
                              pad_id=self.vocab.pad)
        batch.loss_norm = loss_norm
        return batch
