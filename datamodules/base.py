"""ShardDataModule: the one DDP-safe way this project turns shard directories into batches.

Subclasses say how to decode a sample (`decode`), which bucket it belongs to (`bucket_key`:
samples of one batch share it, e.g. the image size) and how to collate a bucket (`collate`).
This class owns the rest: node/worker splitting, shuffling, bucketing, and the epoch length,
which is the same number of batches on every rank (uneven batch counts hang DDP;
REFERENCE.md pitfalls) and is set on the loader, not the dataset.

Corrupt samples: `decode` validates each sample and raises `BadSample(reason, ...)`; the sample is
skipped, warned about once per reason and counted (`SampleCounts`, shared with the workers). Each
run ends (`teardown`) by printing and logging the skipped counts per reason; more than
`max_skipped_fraction` of the samples read skipped stops the run with one clear error.
"""
from __future__ import annotations

import os
from collections.abc import Hashable, Iterable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import webdataset as wds

from datamodules.shards import SampleCounts, make_stream, num_samples_in, shard_urls
from modules.common.errors import ConfigError, require_positive

# the skipped fraction is judged once this many samples were read (and always at the end)
MIN_SAMPLES_FOR_FRACTION = 64


def bucket_batches(
    samples: Iterable[Any],
    batch_size: int,
    key_fn,
    collate,
    flush_partial: bool,
) -> Iterator[Any]:
    """Group a stream into batches whose members share `key_fn(sample)`; a bucket is emitted
    as soon as it holds `batch_size` samples. Partial buckets are emitted at the end of a
    finite stream only when `flush_partial` (evaluation), never during training."""
    buckets: dict[Hashable, list[Any]] = {}
    for sample in samples:
        bucket = buckets.setdefault(key_fn(sample), [])
        bucket.append(sample)
        if len(bucket) == batch_size:
            yield collate(bucket)
            bucket.clear()
    if flush_partial:
        for bucket in buckets.values():
            if bucket:
                yield collate(bucket)


class ShardDataModule(pl.LightningDataModule):
    def __init__(
        self,
        train_dir: str | list[str] | None = None,
        val_dir: str | None = None,
        batch_size: int = 16,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        shuffle_buffer: int = 256,
        max_skipped_fraction: float = 0.1,
    ):
        super().__init__()
        require_positive(batch_size=batch_size, val_batch_size=val_batch_size, shuffle_buffer=shuffle_buffer)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        if not 0.0 <= max_skipped_fraction <= 1.0:
            raise ConfigError(f"max_skipped_fraction {max_skipped_fraction} is not a fraction; use a value in [0, 1]")
        self.train_dir, self.val_dir = train_dir, val_dir
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.seed, self.shuffle_buffer = num_workers, seed, shuffle_buffer
        self.max_skipped_fraction = max_skipped_fraction
        self.skipped_counters: list = []
        self.sample_counts = {"train": SampleCounts(num_workers), "val": SampleCounts(num_workers)}
        # samples read so far from each training stream, by all ranks (saved in checkpoints), and
        # the stream now open with the train count at its opening: each epoch's loader starts where
        # the last one of its stream stopped (shards.shuffled_passes says why)
        self.stream_positions: dict[str, int] = {}
        self._open_stream: tuple[str, int] | None = None

    # --------------------------------------------------------------- subclass hooks
    def decode(self, sample: dict[str, Any]) -> Any:
        raise NotImplementedError

    def decode_train(self, sample: dict[str, Any]) -> Any:
        """Training samples (augmentation goes here); validation always uses `decode`."""
        return self.decode(sample)

    def bucket_key(self, item: Any) -> Hashable:
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        raise NotImplementedError

    # --------------------------------------------------------------- plumbing
    @property
    def world_size(self) -> int:
        if self.trainer is not None:
            return self.trainer.world_size
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size()
        return int(os.environ.get("WORLD_SIZE", 1))  # set by torchrun/SLURM launchers before init

    @property
    def global_rank(self) -> int:
        if self.trainer is not None:
            return self.trainer.global_rank
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank()
        return int(os.environ.get("RANK", 0))

    def split_nodes(self, train: bool) -> bool:
        """Whether each rank reads its own shards (True) or every rank the same stream (a subclass
        that plans batches for all ranks at once, e.g. compute-budget packing)."""
        return True

    def batch_stream(self, samples: Iterable[Any], batch_size: int, train: bool) -> Iterator[Any]:
        """Decoded samples -> batches (default: buckets of `bucket_key`, `collate`d)."""
        return bucket_batches(samples, batch_size, self.bucket_key, self.collate, flush_partial=False)

    def batches_per_rank(self, directory: str | list[str], batch_size: int) -> int:
        """Equal on every rank: the samples one rank would see in a pass, in whole batches."""
        total = num_samples_in(directory)
        if total < self.world_size * batch_size:
            raise ConfigError(f"{directory} holds {total} samples, fewer than one batch of {batch_size} on each of "
                             f"{self.world_size} rank(s); lower the batch size or write more samples")
        return total // (self.world_size * batch_size)

    # --------------------------------------------------------------- stream positions
    def _close_stream(self) -> None:
        """Add what the open training stream read (all ranks: every rank reads as many) to its position."""
        if self._open_stream is not None:
            key, read_at_open = self._open_stream
            read = self.sample_counts["train"].read
            ranks = self.world_size if self.split_nodes(True) else 1
            self.stream_positions[key] = self.stream_positions.get(key, 0) + ranks * (read - read_at_open)
            self._open_stream = (key, read)

    def stream_position(self, key: str) -> int:
        """Where the training stream `key` resumes; from now on, reads count towards it."""
        self._close_stream()
        self._open_stream = (key, self.sample_counts["train"].read)
        return self.stream_positions.get(key, 0)

    def state_dict(self) -> dict[str, Any]:
        self._close_stream()
        return {"stream_positions": dict(self.stream_positions)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.stream_positions = {str(k): int(v) for k, v in state_dict.get("stream_positions", {}).items()}
        self._open_stream = None

    def _loader(self, directory: str | list[str] | None, batch_size: int, train: bool):
        if directory is None:
            raise ConfigError(
                f"{type(self).__name__} has no {'train_dir' if train else 'val_dir'}; set "
                f"`data.init_args.{'train_dir' if train else 'val_dir'}` in the config"
            )
        urls = shard_urls(directory)
        stream, counter = make_stream(
            urls,
            self.decode_train if train else self.decode,
            shuffle=train,
            seed=self.seed,
            repeat=True,  # infinite per worker; the loader cuts equal epochs per rank
            position=self.stream_position(str(directory)) if train else None,
            world_size=self.world_size,
            num_workers=self.num_workers,
            shuffle_buffer=self.shuffle_buffer,
            counts=self.sample_counts["train" if train else "val"],
            rank=self.global_rank,
            split_nodes=self.split_nodes(train),
        )
        self.skipped_counters.append(counter)
        batched = stream.compose(lambda src: self.batch_stream(src, batch_size, train))
        loader = wds.WebLoader(batched, batch_size=None, num_workers=self.num_workers,
                               persistent_workers=False)
        return loader.with_epoch(self.batches_per_rank(directory, batch_size))

    def train_dataloader(self):
        return self._loader(self.train_dir, self.batch_size, train=True)

    def val_dataloader(self):
        return self._loader(self.val_dir, self.val_batch_size, train=False)

    def skipped_samples(self) -> int:
        """Corrupt samples skipped so far in this run (dataloader workers included)."""
        return sum(c.skipped for c in self.sample_counts.values())

    def skipped_by_reason(self) -> dict[str, dict[str, int]]:
        """{"train"/"val": {reason: count}} for the splits that skipped anything."""
        return {split: c.per_reason() for split, c in self.sample_counts.items() if c.skipped}

    def check_skipped_fraction(self, final: bool = False) -> None:
        """ConfigError when more than `max_skipped_fraction` of the samples read were skipped."""
        for split, c in self.sample_counts.items():
            read = c.read
            if read and (final or read >= MIN_SAMPLES_FOR_FRACTION) and c.skipped > self.max_skipped_fraction * read:
                raise ConfigError(f"{split} data {getattr(self, f'{split}_dir', None)}: {c.summary()}, more than "
                                  f"max_skipped_fraction={self.max_skipped_fraction}; fix or rewrite the shards "
                                  "(or raise data.init_args.max_skipped_fraction)")

    def on_before_batch_transfer(self, batch, dataloader_idx):
        self.check_skipped_fraction()
        return batch

    def teardown(self, stage: str) -> None:
        """End of a run: print and log the skipped samples per reason, then judge the fraction."""
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        for split, c in self.sample_counts.items():
            if not c.read:
                continue
            print(f"data ({split}, {stage}): {c.summary()}", flush=True)
            trainer = self.trainer
            if trainer is not None and trainer.logger is not None and c.skipped:
                metrics = {f"data/{split}_skipped_{reason}": float(n) for reason, n in c.per_reason().items()}
                metrics[f"data/{split}_skipped"] = float(c.skipped)
                trainer.logger.log_metrics(metrics, step=trainer.global_step)
        self.check_skipped_fraction(final=True)
