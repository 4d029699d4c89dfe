"""Reader for pretokenised shards written by `main.py pretokenize` (CONTRACTS.md)."""
from __future__ import annotations

import io
import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_pretokenized(urls: str | Iterable[str]) -> Iterator[dict[str, Any]]:
    """Iterate decoded samples in shard order: {"key", "json", "text", "targets" int32 (T,),
    "inputs" int32 (V, T), "variant_targets" int32 (V, T) (targets paired with each input row;
    == targets[None] when V = 1)}. `urls`: a shard directory, a glob, or a list of .tar paths."""
    import webdataset as wds

    from datamodules.shards import shard_urls

    urls = shard_urls(urls) if isinstance(urls, str) else list(urls)
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        targets, inputs = _npy(sample["targets.npy"]), _npy(sample["inputs.npy"])
        variant_targets = _npy(sample["variant_targets.npy"]) if "variant_targets.npy" in sample else targets[None]
        yield {"key": sample["__key__"], "json": meta, "text": meta.get("text", ""), "targets": targets,
               "inputs": inputs, "variant_targets": variant_targets}
