"""PretokenizedDataModule: AR training batches from pretokenised shards (CONTRACTS.md).

DDP-safety (node/worker split, equal batch counts per rank, epoch length on the loader) comes
from `ShardDataModule`. Batches are lists of items that share a bucket — the final token grid
(resolution / aspect ratio), the task and a sequence-length bin — so rows of one batch pad
little. An item: {"task", "text_ids", "schedule", "targets", "inputs", "clean_targets", "key",
"fingerprint", "codebook_size"}. Once the AR model hands over its batcher (`use_batcher`, called at
the model's setup), `collate` runs it, so sequences are indexed in the dataloader workers
(`modules.common.sequence.IndexBatch`: ids, positions, blocks, targets, code maps); without one,
batches are lists of items.

Resolution curriculum: `train_dirs` maps a phase name (e.g. the resolution "64") to a shard
directory; `set_phase` switches it (callbacks/curriculum.py calls it; the trainer must run with
`reload_dataloaders_every_n_epochs=1` so the next epoch's loader reads the new directory).
"""
from __future__ import annotations

import json
from typing import Any, Literal

import numpy as np
import torch

from datamodules.base import ShardDataModule
from datamodules.shards import BadSample, decode_npy
from modules.common.errors import ConfigError, require_positive
from modules.common.packing import CostModel, plan_window
from modules.common.sequence import split_scales
from modules.common.scale_schedule import ScaleSchedule
from modules.text import build_text_tokenizer


def _codes(sample: dict[str, Any], key: str, T: int, codebook: int) -> np.ndarray:
    """An index array of a sample as (rows, T) int64, validated: integer dtype, whole rows of the
    schedule's T tokens, ids in [0, codebook)."""
    try:
        a = decode_npy(sample[key])
    except Exception as err:  # noqa: BLE001 - not an .npy payload
        raise BadSample("undecodable", f"{key}: not a readable .npy array ({err})") from None
    if a.dtype.kind not in "ui":
        raise BadSample("dtype", f"{key} has dtype {a.dtype}; token ids must be integers")
    if a.size == 0 or a.size % T:
        raise BadSample("shape", f"{key} has shape {a.shape}, not rows of the {T} tokens its grids give")
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi >= codebook:
        raise BadSample("id_range", f"{key} holds ids in [{lo}, {hi}], outside the codebook [0, {codebook})")
    return a.reshape(-1, T).astype(np.int64)


def decode_pretokenized_item(sample: dict[str, Any], encode_text, *, variant: int | None,
                             rng: np.random.Generator, expect_fingerprint: str | None = None,
                             expect_codebook_size: int | None = None) -> dict[str, Any]:
    """A pretokenised sample -> item, validated (a failure raises `BadSample`: skipped, counted by
    reason): json with positive grids, a positive codebook_size (= `expect_codebook_size`, the AR
    model's, when given), a text, the tokenizer fingerprint = `expect_fingerprint` when both are
    known; targets / inputs / variant_targets of integer ids in [0, codebook_size), whole rows of
    the schedule's token count."""
    for key in ("json", "targets.npy"):
        if key not in sample:
            raise BadSample("missing_key", f"no {key!r} entry (has {sorted(k for k in sample if not k.startswith('__'))})")
    try:
        meta = sample["json"] if isinstance(sample["json"], dict) else json.loads(sample["json"])
        schedule = ScaleSchedule(tuple(tuple(int(x) for x in g) for g in meta["grids"]))
        if any(len(g) != 2 or min(g) < 1 for g in schedule.grids):
            raise ValueError(f"grids {meta['grids']} are not positive (h, w) pairs")
    except Exception as err:  # noqa: BLE001 - malformed JSON, missing or bad grids
        raise BadSample("bad_meta", f"json: {type(err).__name__}: {err}") from None
    codebook = meta.get("codebook_size")
    if isinstance(codebook, bool) or not isinstance(codebook, int) or codebook < 1:
        raise BadSample("bad_meta", f"json codebook_size {codebook!r} is not a positive integer")
    if expect_codebook_size is not None and codebook != expect_codebook_size:
        raise BadSample("codebook_size", f"codebook_size {codebook} but the model expects {expect_codebook_size}")
    fingerprint = meta.get("tokenizer_fingerprint")
    if expect_fingerprint and fingerprint and fingerprint != expect_fingerprint:
        raise BadSample("fingerprint", f"pretokenised by tokenizer {fingerprint} but the model uses {expect_fingerprint}")
    text = meta.get("text")
    if not isinstance(text, str):
        raise BadSample("missing_caption", f"json text is {text!r}; every sample needs its caption")
    N = meta.get("num_images", 1)
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise BadSample("bad_meta", f"json num_images {N!r} is not a positive integer")
    T = schedule.token_count
    clean = _codes(sample, "targets.npy", T, codebook)
    if len(clean) != N:
        raise BadSample("shape", f"targets.npy holds {len(clean)} rows of {T} tokens; expected {N} (num_images)")

    def rows(key):  # (V, N, T): V variants of the N images
        a = _codes(sample, key, T, codebook) if key in sample else clean
        if len(a) % N:
            raise BadSample("shape", f"{key} holds {len(a)} rows of {T} tokens, not whole variants of {N} images")
        return a.reshape(-1, N, T)

    inputs, paired = rows("inputs.npy"), rows("variant_targets.npy")
    v = int(rng.integers(len(inputs))) if variant is None else variant % len(inputs)

    def maps(a):
        return split_scales(torch.from_numpy(np.asarray(a).astype(np.int64)), schedule)

    images = [{"targets": maps(paired[v % len(paired), k]), "inputs": maps(inputs[v, k]),
               "clean_targets": maps(clean[k])} for k in range(N)]
    task = meta.get("task", "t2i")
    item = {"task": task, "text_ids": encode_text(text), "schedule": schedule, **images[0],
            "key": sample.get("__key__"), "fingerprint": fingerprint, "codebook_size": codebook}
    if N > 1:
        item["images"] = images
    if task == "understand":
        qa = meta.get("qa")
        if not isinstance(qa, list) or not qa or not all(isinstance(p, list) and len(p) == 2 for p in qa):
            raise BadSample("bad_meta", f"understand sample: json qa {qa!r} is not a list of [question, answer]")
        question, answer = qa[int(rng.integers(len(qa)))]  # one of the scene's questions per read
        item["prompt_ids"], item["text_ids"] = encode_text(question), encode_text(answer)
    if task == "interleaved":
        texts = meta.get("texts")
        if not isinstance(texts, list) or len(texts) != N or not all(isinstance(t, str) for t in texts):
            raise BadSample("bad_meta", f"interleaved sample: json texts must be {N} strings (one per keyframe)")
        item["texts_ids"] = [encode_text(t) for t in texts]
    if task in ("edit", "subject") and N != 2:
        raise BadSample("shape", f"{task} sample holds {N} images; expected 2 (source, target)")
    return item


class PretokenizedDataModule(ShardDataModule):
    """Args:
        train_dir / val_dir: pretokenised shard directories (`python main.py pretokenize`).
        train_dirs: optional {phase: directory} for the resolution curriculum; `phase` picks the
            starting one (default: the first).
        text_tokenizer / text_tokenizer_path: None (default) takes the AR model's tokenizer at
            setup (`ARModule(text_tokenizer=...)` owns it); set it only to read shards without a
            model ("bytes", "shapes-words", or "hf" + a local tokenizer.json).
        length_bin: sequence-length bucket width in tokens.
        variant: self-corrected input row to use; None draws one per sample.
        packing: "bucket" (default): batches of `batch_size` items sharing a bucket. "compute":
            compute-budget packing of training batches (NF §4.1; modules/common/packing.py): every
            rank reads the same stream, each window of `pack_window` samples is packed into
            micro-batches of at most `pack_token_cap` tokens (memory) and `pack_cost_cap` cost
            (compute; None: tokens only), one packed row each, balanced over the ranks with
            `pack_balance` ("kk" Karmarkar-Karp, "lpt" greedy) and equal counts; each rank keeps
            its own, and every batch carries the window's loss normaliser (its mean trained weight
            per micro-batch), so samples keep their unpacked loss weights: averaged over the ranks
            (DDP) and over a window's K micro-batches per rank the loss is Σ w·CE / Σ w of the
            whole window, every token weighted alike; an optimizer step accumulating M of them
            (Lightning divides by M) takes K/M times its part of that sum. The epoch is `batch_size`-sized batches' worth of micro-batches
            per rank. Needs the AR model's batcher (it measures the sequences).
        pack_costs: the cost model JSON (`python main.py bench packing --calibrate`); None: the
            default constants (verl's token/pair ratio).
        mixture: task mixture instead of train_dir: a list of sources {train_dir, weight,
            loss_weight, val_dir} (one task's pretokenised shards each; `main.py pretokenize
            --task ...`). Each training sample is drawn from source k with probability weight_k /
            Σ weights (datamodules/mixture.py), every loss weight of its sequence scaled by
            loss_weight (default 1); batches stay bucketed by resolution, task and length, and
            an epoch is Σ samples / (ranks × batch_size) batches on every rank. With no val_dir,
            validation reads every source's val_dir. (Not combined with packing="compute" yet.)
    """

    def __init__(self, train_dir: str | None = None, val_dir: str | list[str] | None = None,
                 train_dirs: dict[str, str] | None = None, phase: str | None = None, batch_size: int = 8,
                 val_batch_size: int | None = None, num_workers: int = 0, text_tokenizer: str | None = None,
                 text_tokenizer_path: str | None = None, length_bin: int = 256, variant: int | None = None,
                 seed: int = 0, shuffle_buffer: int = 256, max_skipped_fraction: float = 0.1,
                 packing: Literal["bucket", "compute"] = "bucket", pack_token_cap: int = 4096,
                 pack_cost_cap: float | None = None, pack_window: int = 64, pack_costs: str | None = None,
                 pack_balance: Literal["kk", "lpt"] = "kk", mixture: list[dict[str, Any]] | None = None):
        if mixture and packing == "compute":
            raise ConfigError("data.init_args.mixture with packing='compute' is not supported yet (the packer plans "
                              "one stream); use packing='bucket' with a mixture, or one train_dir with compute packing")
        self.mixture = self._check_mixture(mixture, train_dir, train_dirs)
        if self.mixture and val_dir is None:
            val_dir = [src["val_dir"] for src in self.mixture if src.get("val_dir")] or None
        super().__init__(train_dir, val_dir, batch_size, val_batch_size, num_workers, seed, shuffle_buffer,
                         max_skipped_fraction)
        require_positive(length_bin=length_bin, pack_token_cap=pack_token_cap, pack_window=pack_window)
        if packing not in ("bucket", "compute"):
            raise ConfigError(f"packing={packing!r} is not one of 'bucket', 'compute'")
        if pack_balance not in ("kk", "lpt"):
            raise ConfigError(f"pack_balance={pack_balance!r} is not one of 'kk', 'lpt'")
        if pack_cost_cap is not None and pack_cost_cap <= 0:
            raise ConfigError(f"pack_cost_cap={pack_cost_cap} must be positive (or null for tokens only)")
        self.packing, self.pack_token_cap, self.pack_cost_cap = packing, pack_token_cap, pack_cost_cap
        self.pack_window, self.pack_balance = pack_window, pack_balance
        self.cost_model = CostModel.load(pack_costs) if pack_costs is not None else CostModel()
        self.train_dirs = {str(k): v for k, v in (train_dirs or {}).items()}
        self.length_bin, self.variant = length_bin, variant
        self.text_tokenizer_kind = text_tokenizer
        self.text_tokenizer = build_text_tokenizer(text_tokenizer or "bytes", text_tokenizer_path)
        self.phase = None
        if self.train_dirs:
            self.set_phase(phase if phase is not None else next(iter(self.train_dirs)))
        self._rng = np.random.default_rng(seed)
        self.batcher = None

    @staticmethod
    def _check_mixture(mixture, train_dir, train_dirs) -> list[dict[str, Any]]:
        if not mixture:
            return []
        if train_dir is not None or train_dirs:
            raise ConfigError("data.init_args.mixture replaces train_dir / train_dirs; set one of them, not both")
        out = []
        for k, src in enumerate(mixture):
            if not isinstance(src, dict) or not isinstance(src.get("train_dir"), str):
                raise ConfigError(f"mixture source {k} is {src!r}; each needs a train_dir (and optional weight, "
                                  "loss_weight, val_dir)")
            unknown = set(src) - {"train_dir", "weight", "loss_weight", "val_dir"}
            if unknown:
                raise ConfigError(f"mixture source {k} has unknown keys {sorted(unknown)}; use train_dir, weight, "
                                  "loss_weight, val_dir")
            src = {"weight": 1.0, "loss_weight": 1.0, **src}
            for key in ("weight", "loss_weight"):
                if isinstance(src[key], bool) or not isinstance(src[key], (int, float)) or src[key] < 0:
                    raise ConfigError(f"mixture source {k} ({src['train_dir']}): {key} {src[key]!r} must be a "
                                      "number >= 0")
            out.append(src)
        if sum(src["weight"] for src in out) <= 0:
            raise ConfigError(f"mixture weights {[s['weight'] for s in out]} sum to 0; give a source a positive weight")
        return out

    def train_dataloader(self):
        if not self.mixture:
            return super().train_dataloader()
        import functools

        import webdataset as wds

        from datamodules.mixture import MixedBatches
        from datamodules.shards import make_stream, shard_urls

        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        # one position for the whole mixture; each source has read its weight's share of it
        position = self.stream_position(str([src["train_dir"] for src in self.mixture]))
        total_weight = sum(src["weight"] for src in self.mixture)
        streams = []
        for k, src in enumerate(self.mixture):
            stream, counter = make_stream(
                shard_urls(src["train_dir"]), functools.partial(self._decode_source, float(src["loss_weight"])),
                shuffle=True, seed=self.seed + 7919 * k, repeat=True, world_size=self.world_size,
                num_workers=self.num_workers, shuffle_buffer=self.shuffle_buffer, counts=self.sample_counts["train"],
                position=int(position * src["weight"] / total_weight))
            self.skipped_counters.append(counter)
            streams.append(stream)
        batches = MixedBatches(streams, [src["weight"] for src in self.mixture], self.batch_size, self.bucket_key,
                               self.collate, seed=self.seed + epoch)
        loader = wds.WebLoader(batches, batch_size=None, num_workers=self.num_workers, persistent_workers=False)
        return loader.with_epoch(self.batches_per_rank([src["train_dir"] for src in self.mixture], self.batch_size))

    def _decode_source(self, loss_weight: float, sample):
        item = self.decode_train(sample)
        return item if loss_weight == 1.0 else {**item, "loss_weight": loss_weight}

    def use_text_tokenizer(self, tokenizer, kind: str) -> None:
        """Called by the AR model at setup: encode captions with the model's own tokenizer."""
        if self.text_tokenizer_kind not in (None, kind):
            raise ValueError(f"the datamodule's text_tokenizer={self.text_tokenizer_kind!r} differs from the AR "
                             f"model's {kind!r}; drop data.init_args.text_tokenizer (the model's is used)")
        self.text_tokenizer = tokenizer

    def use_batcher(self, batcher) -> None:
        """Called by the AR model at setup: a callable items -> index batch (`tasks.ItemBatcher`),
        run by `collate` in the dataloader workers."""
        self.batcher = batcher

    def set_phase(self, phase: str) -> None:
        phase = str(phase)
        if phase not in self.train_dirs:
            raise ConfigError(f"curriculum phase {phase!r} has no shard directory; train_dirs has {sorted(self.train_dirs)}")
        self.phase, self.train_dir = phase, self.train_dirs[phase]

    def setup(self, stage: str) -> None:
        """Validate samples against the model being trained: its tokenizer fingerprint and codebook."""
        module = self.trainer.lightning_module if self.trainer is not None else None
        self.expect_fingerprint = getattr(module, "tokenizer_fingerprint", None)
        self.expect_codebook_size = getattr(getattr(module, "config", None), "codebook_size", None)

    def decode(self, sample):
        return decode_pretokenized_item(sample, self.text_tokenizer.encode, variant=self.variant, rng=self._rng,
                                        expect_fingerprint=getattr(self, "expect_fingerprint", None),
                                        expect_codebook_size=getattr(self, "expect_codebook_size", None))

    def decode_train(self, sample):
        return {**self.decode(sample), "train": True}  # the batcher applies condition dropout to these

    def bucket_key(self, item):
        images = len(item.get("images", ())) or 1
        texts = sum(len(t) for t in item.get("texts_ids", [item["text_ids"]])) + len(item.get("prompt_ids", ()))
        length = texts + images * item["schedule"].token_count
        return item["schedule"].final_grid, item["task"], length // self.length_bin

    def collate(self, items):
        return list(items) if self.batcher is None else self.batcher(list(items))

    # ------------------------------------------------------------ compute-budget packing
    def split_nodes(self, train: bool) -> bool:
        return not (train and self.packing == "compute")  # every rank plans the same windows

    def batch_stream(self, samples, batch_size: int, train: bool):
        if not (train and self.packing == "compute"):
            return super().batch_stream(samples, batch_size, train)
        if self.batcher is None:
            raise ConfigError("packing='compute' measures sequences with the AR model's batcher; train it with an "
                              "ARModule (or use packing='bucket')")
        return self._packed(samples, self.global_rank, self.world_size)

    def _packed(self, samples, rank: int, world: int):
        """Windows of `pack_window` samples -> this rank's packed micro-batches (IndexBatch), the
        same plan on every rank (same stream, no condition dropout in the measurement)."""
        window: list = []
        for item in samples:
            window.append(item)
            if len(window) < max(self.pack_window, world):
                continue
            stats = [self.batcher.sequence_stats(it) for it in window]
            plan = plan_window(stats, self.cost_model, world=world, token_cap=self.pack_token_cap,
                               cost_cap=self.pack_cost_cap, method=self.pack_balance)
            for mb in plan.ranks[rank]:
                yield self.batcher([window[i] for i in mb], row_len=sum(stats[i].tokens for i in mb),
                                   loss_norm=plan.loss_norm)
            window = []

    def val_dataloader(self):
        return [] if self.val_dir is None else super().val_dataloader()  # no val_dir: no validation

    def state_dict(self) -> dict:
        return {**super().state_dict(), "phase": self.phase}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("phase") is not None and self.train_dirs:
            self.set_phase(state["phase"])
