"""Task mixtures: several sample streams drawn by weight, then bucketed into batches.

`mix_samples` draws the next sample's source with probability weight_k / Σ weights from its own
numpy Generator (seeded per run, epoch and dataloader worker, so a mixture is reproducible;
webdataset's `RandomMix` draws from the process-global `random`). `MixedBatches` is the
IterableDataset a loader runs: mix, then `bucket_batches` (samples of one batch share the
bucket key: resolution, task, length bin). Its epoch length is set on the loader
(`WebLoader.with_epoch`) like every other training stream here, so every rank yields the same
number of batches.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from datamodules.base import bucket_batches


def mix_samples(sources: Sequence[Iterator[Any]], weights: Sequence[float], rng: np.random.Generator) -> Iterator[Any]:
    """Samples of `sources` (infinite iterators), each drawn from source k with probability
    weights[k] / Σ weights; stops when a drawn source is exhausted."""
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(sources) or len(w) == 0 or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"mixture weights {list(weights)} must be {len(sources)} non-negative numbers with a positive sum")
    p = w / w.sum()
    while True:
        k = int(rng.choice(len(p), p=p))
        try:
            yield next(sources[k])
        except StopIteration:
            return


class MixedBatches(torch.utils.data.IterableDataset):
    """Batches of a weighted mixture of `datasets` (iterable sample streams, e.g. webdataset
    pipelines split by node and worker), bucketed by `key_fn` and collated by `collate`."""

    def __init__(self, datasets: Sequence[Iterable[Any]], weights: Sequence[float], batch_size: int,
                 key_fn: Callable[[Any], Any], collate: Callable[[list], Any], seed: int = 0):
        super().__init__()
        self.datasets, self.weights = list(datasets), list(weights)
        self.batch_size, self.key_fn, self.collate, self.seed = batch_size, key_fn, collate, seed

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        rank = int(torch.distributed.get_rank()) if torch.distributed.is_available() and \
            torch.distributed.is_initialized() else 0
        rng = np.random.default_rng([self.seed, rank, 0 if info is None else info.id])
        samples = mix_samples([iter(d) for d in self.datasets], self.weights, rng)
        return bucket_batches(samples, self.batch_size, self.key_fn, self.collate, flush_partial=False)
