"""webdataset shards: writing (atomic, resumable, with a progress bar) and reading (DDP-safe
splitting, corrupt-sample skipping with counts per reason: decoders validate each sample and
raise `BadSample(reason, ...)`; `SampleCounts` keeps the tallies across dataloader workers).

Layout of a shard directory::

    <dir>/shard-000000.tar ...     complete shards (written to .tmp, renamed when closed)
    <dir>/index.json               {"shards": {name: num_samples}, "total": N, ...}

Writers of every kind of data (world, pretokenize, interleaved) go through `write_shards`, readers
through `shard_urls` + `ShardStream`, so resume, counting and splitting exist once.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import webdataset as wds

log = logging.getLogger(__name__)
INDEX_FILE = "index.json"


# ----------------------------------------------------------------------------- writing
def _shard_name(prefix: str, number: int) -> str:
    return f"{prefix}-{number:06d}.tar"


def write_shard(path: Path, samples: Iterable[dict[str, Any]]) -> int:
    """Write one shard atomically: a crash leaves a `.tmp` file, never a truncated `.tar`."""
    tmp = path.with_suffix(".tar.tmp")
    count = 0
    with open(tmp, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=True)
        for sample in samples:
            writer.write(sample)
            count += 1
        writer.close()
    os.replace(tmp, path)
    return count


@dataclass
class ShardStats:
    out_dir: str
    shards_written: int = 0
    shards_skipped: int = 0  # already complete from an earlier run (resume)
    samples_written: int = 0
    samples_skipped: int = 0  # producer returned None (e.g. corrupt input), counted, never silent
    per_shard: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.out_dir}: {self.shards_written} shards written, {self.shards_skipped} reused, "
            f"{self.samples_written} samples, {self.samples_skipped} skipped"
        )


def write_shards(
    make_sample: Callable[[int], dict[str, Any] | None],
    num_samples: int,
    out_dir: str | os.PathLike,
    *,
    prefix: str = "shard",
    samples_per_shard: int = 1000,
    description: str = "writing shards",
    metadata: dict[str, Any] | None = None,
) -> ShardStats:
    """Write samples 0..num_samples-1 produced by `make_sample(i)` into shards of
    `samples_per_shard`. Resumable: shards already complete on disk are skipped without
    calling `make_sample` for their indices. `make_sample` returning None skips (and counts)
    the sample. Writes `index.json` at the end."""
    from rich.progress import Progress

    if num_samples < 0 or samples_per_shard < 1:
        raise ValueError(f"num_samples ({num_samples}) must be >= 0 and samples_per_shard ({samples_per_shard}) >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats = ShardStats(out_dir=str(out))
    index = read_index(out) if (out / INDEX_FILE).exists() else {"shards": {}}
    num_shards = (num_samples + samples_per_shard - 1) // samples_per_shard
    with Progress(transient=False) as progress:
        task = progress.add_task(description, total=num_samples)
        for number in range(num_shards):
            name = _shard_name(prefix, number)
            lo, hi = number * samples_per_shard, min(num_samples, (number + 1) * samples_per_shard)
            if (out / name).exists() and name in index["shards"]:
                stats.shards_skipped += 1
                stats.per_shard[name] = index["shards"][name]
                progress.advance(task, hi - lo)
                continue

            def produce(lo=lo, hi=hi) -> Iterator[dict[str, Any]]:
                for i in range(lo, hi):
                    sample = make_sample(i)
                    progress.advance(task)
                    if sample is None:
                        stats.samples_skipped += 1
                        continue
                    sample.setdefault("__key__", f"{i:09d}")
                    yield sample

            count = write_shard(out / name, produce())
            stats.shards_written += 1
            stats.samples_written += count
            stats.per_shard[name] = count
            index["shards"][name] = count
            _write_index(out, index, metadata)  # after every shard: a crash keeps finished shards usable
    _write_index(out, index, metadata)
    return stats


def _write_index(out: Path, index: dict, metadata: dict[str, Any] | None) -> None:
    index["total"] = int(sum(index["shards"].values()))
    if metadata is not None:
        index["metadata"] = metadata
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
    os.replace(tmp, out / INDEX_FILE)


# ----------------------------------------------------------------------------- reading
def read_index(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"shard index {path} not found; was this directory written by `main.py world` or `pretokenize`?")
    return json.loads(path.read_text())


Locations = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def _as_list(location: Locations) -> list:
    return [location] if isinstance(location, (str, os.PathLike)) else list(location)


def shard_urls(location: Locations) -> list[str]:
    """All complete `.tar` shards in a directory (sorted), the files a glob names, or those of
    several directories in turn (a list: e.g. general scenes plus larger-scale ones)."""
    locations = _as_list(location)
    if len(locations) != 1:
        if not locations:
            raise FileNotFoundError("an empty list of shard directories was given")
        return [url for loc in locations for url in shard_urls(loc)]
    location = locations[0]
    path = Path(location)
    if any(ch in str(location) for ch in "*?["):
        urls = sorted(str(p) for p in Path().glob(str(location)))
    elif path.is_dir():
        urls = sorted(str(p) for p in path.glob("*.tar"))
    else:
        raise FileNotFoundError(
            f"shard directory {path} does not exist; write it first, e.g. "
            f"`python main.py world --out {path}`"
        )
    if not urls:
        raise FileNotFoundError(f"no .tar shards found at {location}")
    return urls


def num_samples_in(location: Locations) -> int:
    """Sample count from index.json (exact; summed over a list of directories), used to size
    epochs equally on every rank."""
    return sum(int(read_index(loc)["total"]) for loc in _as_list(location))


# Why a sample is skipped; decoders raise BadSample(reason, message) after validating a sample.
SKIP_REASONS = ("undecodable", "missing_key", "bad_image", "image_size", "label_shape", "bad_meta", "missing_caption",
                "dtype", "shape", "id_range", "codebook_size", "fingerprint")


class BadSample(ValueError):
    """A sample that fails validation: skipped and counted under `reason` (one of SKIP_REASONS)."""

    def __init__(self, reason: str, message: str):
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; one of {SKIP_REASONS}")
        super().__init__(message)
        self.reason = reason


class SampleCounts:
    """Samples read and skipped per reason, in shared memory: dataloader workers (one row each,
    row 0 = the main process) count into the same tensor the main process reports from."""

    def __init__(self, num_workers: int = 0):
        import torch

        self.table = torch.zeros(max(0, num_workers) + 1, len(SKIP_REASONS) + 1, dtype=torch.long).share_memory_()

    def _row(self) -> int:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        return 0 if info is None else min(info.id + 1, self.table.shape[0] - 1)

    def count(self, reason: str | None) -> int:
        """Count one sample read (`reason` None) or skipped; returns the run's total for that reason."""
        col = 0 if reason is None else 1 + SKIP_REASONS.index(reason)
        self.table[self._row(), col] += 1
        return int(self.table[:, col].sum())

    @property
    def read(self) -> int:
        return int(self.table[:, 0].sum()) + self.skipped

    @property
    def skipped(self) -> int:
        return int(self.table[:, 1:].sum())

    def per_reason(self) -> dict[str, int]:
        sums = self.table[:, 1:].sum(0).tolist()
        return {reason: int(n) for reason, n in zip(SKIP_REASONS, sums) if n}

    def summary(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.per_reason().items()) or "none"
        return f"skipped {self.skipped} of {self.read} samples read ({reasons})"


class CorruptSampleCounter:
    """Skips samples whose decoding or validation fails, counting them per reason (`SampleCounts`,
    shared with the workers) and warning once per reason per run."""

    def __init__(self, decode: Callable[[dict], Any], counts: SampleCounts | None = None):
        self.decode = decode
        self.counts = counts if counts is not None else SampleCounts()

    @property
    def skipped(self) -> int:
        return self.counts.skipped

    def __call__(self, samples: Iterable[dict]) -> Iterator[Any]:
        for sample in samples:
            try:
                item = self.decode(sample)
            except Exception as err:  # noqa: BLE001 - any decode failure means a corrupt sample
                reason = err.reason if isinstance(err, BadSample) else "undecodable"
                if self.counts.count(reason) == 1:  # the first of its kind in this run
                    warnings.warn(
                        f"skipped corrupt sample {sample.get('__key__')!r} from {sample.get('__url__')!r} "
                        f"({reason}): {type(err).__name__}: {err}; further {reason} samples are skipped "
                        "silently and counted (summary at the end of the run)",
                        stacklevel=2,
                    )
                continue
            self.counts.count(None)
            yield item


def _warn_and_count_tar_errors(exn: Exception) -> bool:
    warnings.warn(f"skipped unreadable shard data: {type(exn).__name__}: {exn}", stacklevel=2)
    return True


def split_samples(reader: int, readers: int) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """Keep every `readers`-th sample of a stream, starting at `reader` (sample-level splitting)."""

    def select(samples: Iterable[dict]) -> Iterator[dict]:
        for i, sample in enumerate(samples):
            if i % readers == reader:
                yield sample

    return select


def _reader_index(rank: int, num_workers: int) -> int:
    """This reader's number among world_size x num_workers (rank-major)."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return rank * max(1, num_workers) + (0 if info is None else info.id)


def _all_shards(src):
    """Node splitter that keeps every shard (each rank reads the whole stream)."""
    yield from src


def shard_sizes(urls: Sequence[str]) -> list[int] | None:
    """Samples per shard from each shard directory's index.json; None when a shard has no entry
    (e.g. a glob over files written elsewhere)."""
    indexes: dict[Path, dict] = {}
    sizes = []
    for url in urls:
        path = Path(url)
        if path.parent not in indexes:
            index_file = path.parent / INDEX_FILE
            indexes[path.parent] = json.loads(index_file.read_text()).get("shards", {}) if index_file.is_file() else {}
        if path.name not in indexes[path.parent]:
            return None
        sizes.append(int(indexes[path.parent][path.name]))
    return sizes


def shuffled_passes(urls: Sequence[str], sizes: Sequence[int], seed: int, position: int) -> Iterator[tuple[str, int]]:
    """One reader's endless shard sequence, from its sample `position` on: pass p reads every shard
    once, in the order `random.Random(seed * 1_000_003 + p)` shuffles them to. Yields (shard,
    samples to drop from its start): nonzero only for the first shard, where `position` lies.

    Why: Lightning rebuilds the loader every (virtual) epoch (`reload_dataloaders_every_n_epochs`,
    which the resolution curriculum needs), and a rebuilt webdataset pipeline starts each shard
    at its first sample. With epochs shorter than a shard (the quickstart's 40 batches of 8 vs
    1,000-sample shards) the tail of every shard was never read (60 epochs saw 1,687 of 3,000
    scenes). Starting each epoch where the last one stopped reads them all, once per pass."""
    total = int(sum(sizes))
    p, offset = divmod(int(position), total) if total > 0 else (0, 0)
    while True:
        idx = _pass_order(len(urls), seed, p)
        for i in idx:
            if offset >= sizes[i]:  # before `position`: skipped unread
                offset -= sizes[i]
                continue
            yield urls[i], offset
            offset = 0
        p += 1


def _pass_order(n: int, seed: int, p: int) -> list[int]:
    """Shard order of pass p; a pass never starts with the shard the previous one ended with, so
    the shuffle buffer does not hold one sample twice across the seam (two shards: always 0, 1)."""
    if n <= 2:
        return list(range(n))
    idx, previous = list(range(n)), list(range(n))
    random.Random(seed * 1_000_003 + p).shuffle(idx)
    random.Random(seed * 1_000_003 + p - 1).shuffle(previous)  # its last shard is never swapped (n > 2)
    if p > 0 and idx[0] == previous[-1]:
        idx[0], idx[1] = idx[1], idx[0]
    return idx


class _StreamWindow:
    """webdataset shard-list stage (node and worker split in one): this reader's shards as
    `shuffled_passes` from its share of the global `position`; `drop_head` then drops the samples
    of the first shard that lie before it. One object serves both stages, in each worker."""

    def __init__(self, sizes: dict[str, int], seed: int, position: int, rank: int, ranks: int, by_sample: bool):
        self.sizes, self.seed, self.position = sizes, seed, position
        self.rank, self.ranks, self.by_sample = rank, ranks, by_sample
        self.head: tuple[str, int] | None = None
        self.pass_samples = self.first_pass_left = 0  # as this reader's shuffle stage sees them

    def __call__(self, src):
        from torch.utils.data import get_worker_info

        urls = [entry["url"] for entry in src]
        info = get_worker_info()
        workers = 1 if info is None else info.num_workers
        readers = self.ranks * workers
        if self.by_sample:  # every reader reads every shard and keeps every n-th sample after this
            reader, mine, position, kept = 0, urls, self.position, readers
        else:
            reader = self.rank * workers + (0 if info is None else info.id)
            mine, position, kept = urls[reader::readers], self.position // readers, 1
        total = max(1, sum(self.sizes[u] for u in mine))
        self.pass_samples = max(1, total // kept)
        self.first_pass_left = max(1, (total - position % total) // kept)
        for k, (url, skip) in enumerate(shuffled_passes(mine, [self.sizes[u] for u in mine], self.seed + reader,
                                                        position)):
            if k == 0:
                self.head = (url, skip)
            yield {"url": url}

    def shuffle(self, size: int, rng: random.Random):
        """A shuffle buffer of `size` that empties itself at every pass's end, so each pass reaches
        the model as a permutation of its samples (a pass shorter than the buffer included) and
        no sample comes twice before the pass is over. Pass ends are counted in samples (the
        index's counts), so a corrupt sample the reader skips moves the seam by one."""

        def stage(src):
            buffer: list = []
            left = None
            for sample in src:
                if left is None:
                    left = self.first_pass_left
                buffer.append(sample)
                left -= 1
                if left == 0:  # the pass's last sample: every one of the pass leaves now
                    rng.shuffle(buffer)
                    yield from buffer
                    buffer, left = [], self.pass_samples
                elif len(buffer) >= size:
                    k = rng.randrange(len(buffer))
                    buffer[k], buffer[-1] = buffer[-1], buffer[k]
                    yield buffer.pop()
            rng.shuffle(buffer)
            yield from buffer

        return stage

    def drop_head(self, src):
        dropped = 0
        for sample in src:
            if self.head is not None and sample.get("__url__") == self.head[0] and dropped < self.head[1]:
                dropped += 1
                continue
            if self.head is not None and sample.get("__url__") != self.head[0]:
                self.head = None  # past the first shard
            yield sample


def make_stream(
    urls: list[str],
    decode: Callable[[dict], Any],
    *,
    shuffle: bool,
    seed: int,
    repeat: bool,
    world_size: int,
    num_workers: int,
    shuffle_buffer: int = 256,
    counts: SampleCounts | None = None,
    rank: int = 0,
    split_nodes: bool = True,
    position: int | None = None,
) -> tuple[wds.WebDataset, CorruptSampleCounter]:
    """A webdataset pipeline split across the readers (ranks x dataloader workers), every sample
    read by exactly one of them per pass. With at least as many shards as readers, shards are split
    (by node, then by worker; REFERENCE.md pitfalls: the node splitter must be passed explicitly).
    With fewer, every reader reads every shard in the same order (shard shuffle seeded alike on all
    readers) and keeps every n-th sample (`split_samples`), before the per-reader shuffle buffer and
    before decoding, so no sample is decoded twice; each reader then reads all the bytes, hence
    the warning. Epoch length is fixed on the loader (`with_epoch`) so every rank yields the same
    number of batches. split_nodes False: every rank reads the same stream (only workers split
    it; compute-budget packing plans each window for all ranks and keeps its own part).

    position (training: shuffle and repeat): the stream is one endless sequence of shuffled passes
    (`shuffled_passes`) and this call starts at its sample `position` (samples read so far by all
    readers), so consecutive epochs read consecutive windows; None (or shards without index
    counts): the shard order is shuffled with `seed` and every shard starts at its first sample."""
    ranks = max(1, world_size) if split_nodes else 1
    readers = ranks * max(1, num_workers)
    by_sample = len(urls) < readers
    if by_sample:
        log.warning("only %d shard(s) for %d readers (%d rank(s) x %d worker(s)): every reader reads all shards "
                    "and keeps every %d-th sample; write at least %d shards to split by shard instead",
                    len(urls), readers, ranks, max(1, num_workers), readers, readers)
    no_split = lambda src: src  # noqa: E731 - sample-level splitting below replaces shard splitting
    sizes = shard_sizes(urls) if (position is not None and shuffle and repeat) else None
    if position and sizes is None:
        log.warning("no index.json counts for these shards: every epoch starts each shard at its first sample")
    window = None
    if sizes is not None:
        window = _StreamWindow(dict(zip(urls, sizes)), seed, int(position), rank if split_nodes else 0,
                               ranks, by_sample)
        seed = seed * 1_000_003 + int(position)  # the shuffle buffer draws differently in every window
        splitter = {"nodesplitter": window, "workersplitter": None}
    elif by_sample:
        splitter = {"nodesplitter": no_split, "workersplitter": no_split}
    else:
        splitter = {"nodesplitter": wds.split_by_node if split_nodes else _all_shards,
                    "workersplitter": wds.split_by_worker}
    dataset = wds.WebDataset(
        urls,
        handler=_warn_and_count_tar_errors,
        shardshuffle=(100 if shuffle and window is None else False),
        detshuffle=shuffle and window is None,
        seed=seed,
        repeat=repeat and window is None,  # the window's passes are endless already
        empty_check=False,
        **splitter,
    )
    if window is not None:
        dataset = dataset.compose(window.drop_head)
    if by_sample:
        node = rank if split_nodes else 0  # the worker's number is known only inside the worker
        dataset = dataset.compose(lambda src: split_samples(_reader_index(node, num_workers), readers)(src))
    if window is not None:
        dataset = dataset.compose(window.shuffle(shuffle_buffer, random.Random(seed)))
    elif shuffle:
        dataset = dataset.shuffle(shuffle_buffer, rng=random.Random(seed))
    counter = CorruptSampleCounter(decode, counts)
    return dataset.compose(counter), counter


# ----------------------------------------------------------------------------- decoding helpers
def decode_png(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.array(image)  # a writable copy (torch.from_numpy warns on read-only arrays)


def decode_json(data: bytes) -> dict[str, Any]:
    return json.loads(data)


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)
