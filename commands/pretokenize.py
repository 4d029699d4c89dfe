"""`python main.py pretokenize`: raw image shards + tokenizer checkpoint -> pretokenised shards.

Per image (CONTRACTS.md, "Pretokenised sample"): json {text, height, width, grids, codebook_size,
tokenizer_fingerprint, task, variants, self_correct, topk, meta}; targets.npy int32 (T,) top-1
indices, scales concatenated scale-major / row-major; inputs.npy int32 (V, T) self-corrected
inputs. With self-correction the targets depend on the corrupted history (REFERENCE.md
"Self-correction"), so for V > 1 `variant_targets.npy` (V, T) holds the targets that pair with
each input row; `targets.npy` is row 0. The encoders run once per image; the V variants re-run
only the quantiser.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from commands import UsageError

log = logging.getLogger(__name__)


class _RawShardEncoder:
    """make_sample(i) for write_shards: encodes the raw shard holding sample i in batches on
    first use (one encoder pass per image) and serves its samples from a one-shard cache."""

    def __init__(self, raw_dir: Path, index: dict, tok, *, fingerprint: str, self_correct: float, topk: int,
                 variants: int, batch_size: int, resize_to: int | None, task: str, seed: int, device: str):
        self.tok, self.device = tok, torch.device(device)
        self.names = sorted(index["shards"])
        self.counts = [int(index["shards"][n]) for n in self.names]
        self.starts = np.cumsum([0] + self.counts)[:-1]
        self.raw_dir, self.fingerprint, self.task = raw_dir, fingerprint, task
        self.self_correct, self.topk, self.variants = self_correct, topk, variants
        self.batch_size, self.resize_to, self.seed = batch_size, resize_to, seed
        self.cached: int | None = None
        self.cache: dict[int, dict[str, Any] | None] = {}
        self.images_encoded = 0

    @property
    def total(self) -> int:
        return int(sum(self.counts))

    def __call__(self, i: int) -> dict[str, Any] | None:
        j = int(np.searchsorted(self.starts, i, side="right") - 1)
        if self.cached != j:
            self._encode_shard(j)
        return self.cache.get(i - int(self.starts[j]))

    def _encode_shard(self, j: int) -> None:
        import webdataset as wds

        from datamodules.raw import decode_raw_sample

        self.cached, self.cache = j, {}
        decoded: list[tuple[int, dict]] = []
        url = str(self.raw_dir / self.names[j])
        raw = wds.WebDataset([url], shardshuffle=False, empty_check=False, handler=wds.warn_and_continue)
        for pos, sample in enumerate(raw):
            try:
                item = decode_raw_sample(sample, self.resize_to, self.tok.patch)
                self.tok.schedule_for(*item["image"].shape[1:])  # aspect ratio / size check
            except Exception as err:  # noqa: BLE001 - corrupt or unusable sample: skipped, counted by write_shards
                log.warning("skipping corrupt sample %r in %s: %s", sample.get("__key__"), url, err)
                continue
            decoded.append((pos, item))
        buckets: dict[tuple[int, int], list[tuple[int, dict]]] = {}
        for pos, item in decoded:
            buckets.setdefault(tuple(item["image"].shape[1:]), []).append((pos, item))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + j)  # resumable: per-shard seed
        for (h, w), members in sorted(buckets.items()):
            for b in range(0, len(members), self.batch_size):
                chunk = members[b: b + self.batch_size]
                images = torch.stack([it["image"] for _, it in chunk]).to(self.device)
                codes = self.tok.encode_variants(images, self.variants, self.self_correct, self.topk, generator)
                self.images_encoded += len(chunk)
                targets_VBT = torch.stack([c.flat("targets") for c in codes]).to(torch.int32).cpu().numpy()
                inputs_VBT = torch.stack([c.flat("inputs") for c in codes]).to(torch.int32).cpu().numpy()
                grids = [list(g) for g in codes[0].schedule.grids]
                for n, (pos, item) in enumerate(chunk):
                    sample = {
                        "__key__": item["key"] or f"{int(self.starts[j]) + pos:09d}",
                        "json": {"text": item["text"], "height": h, "width": w, "grids": grids,
                                 "codebook_size": self.tok.codebook_size,
                                 "tokenizer_fingerprint": self.fingerprint, "task": self.task,
                                 "variants": self.variants, "self_correct": self.self_correct,
                                 "topk": self.topk, "meta": item["meta"]},
                        "targets.npy": np.ascontiguousarray(targets_VBT[0, n]),
                        "inputs.npy": np.ascontiguousarray(inputs_VBT[:, n]),
                    }
                    if self.variants > 1:
                        sample["variant_targets.npy"] = np.ascontiguousarray(targets_VBT[:, n])
                    self.cache[pos] = sample


def run(
    raw: str = "data/shapes/tok64m16/train",
    checkpoint: str = "runs/tokenizer_shapes/stage3/last.ckpt",
    out: str = "data/shapes/pretok64/train",
    self_correct: float = 0.6,
    topk: int = 8,
    variants: int = 1,
    batch_size: int = 64,
    samples_per_shard: int = 1000,
    resize_to: int | None = None,
    task: str = "t2i",
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Pretokenise raw image shards with a trained tokenizer (targets + self-corrected inputs) into webdataset shards.

    Resumable: output shards already complete are skipped without re-encoding. Corrupt raw
    samples are skipped and counted.

    Args:
        raw: directory of raw shards (written by `main.py world`).
        checkpoint: tokenizer checkpoint (a TokenizerModule .ckpt, e.g. stage 3's last.ckpt).
        out: output directory for the pretokenised shards.
        self_correct: fraction of positions per scale whose input code is sampled from the top-k
            nearest (NextFlow: 0.6); 0 gives inputs == targets.
        topk: k of the top-k sampling (unstated in NextFlow; 8 here).
        variants: self-corrected input variants per image (encoder runs once for all of them).
        batch_size: images per encoder batch (same-size images are batched together).
        samples_per_shard: samples per output shard.
        resize_to: optional nominal side; images are rescaled to about resize_to^2 pixels.
        task: task tag stored per sample ("t2i", ...).
        seed: base seed of the self-correction sampling (per raw shard, so resumes are identical).
        device: torch device for the tokenizer ("cpu", "cuda").
    """
    from datamodules.shards import read_index, shard_urls, write_shards
    from modules.tokenizer import checkpoint_fingerprint, load_tokenizer

    if not 0.0 <= self_correct <= 1.0:
        raise UsageError(f"--self_correct {self_correct} is not a fraction; use a value in [0, 1] (NextFlow: 0.6)")
    if topk < 1 or variants < 1 or batch_size < 1 or samples_per_shard < 1:
        raise UsageError(f"--topk ({topk}), --variants ({variants}), --batch_size ({batch_size}) and "
                         f"--samples_per_shard ({samples_per_shard}) must be >= 1")
    if resize_to is not None and resize_to < 1:
        raise UsageError(f"--resize_to {resize_to} must be a positive side in pixels (or omitted)")
    try:
        shard_urls(raw)
        index = read_index(raw)
    except FileNotFoundError as err:
        raise UsageError(f"raw shards: {err}") from None
    ckpt = Path(checkpoint).expanduser()
    if not ckpt.is_file():
        raise UsageError(f"tokenizer checkpoint not found at {ckpt}; train it with `python main.py fit --config "
                         f"configs/experiment/tokenizer_shapes_stage1.yaml` (then stage2, stage3) or pass --checkpoint")
    from modules.common.devices import require_device

    require_device(device)
    module = load_tokenizer(str(ckpt), map_location=device)  # weights_only, kind checked: one-line errors
    fingerprint = checkpoint_fingerprint(ckpt)
    encoder = _RawShardEncoder(Path(raw), index, module.tokenizer.to(device).eval(), fingerprint=fingerprint,
                               self_correct=self_correct, topk=topk, variants=variants, batch_size=batch_size,
                               resize_to=resize_to, task=task, seed=seed, device=device)
    stats = write_shards(encoder, encoder.total, out, prefix="pretok", samples_per_shard=samples_per_shard,
                         description=f"pretokenising {raw}",
                         metadata={"tokenizer_fingerprint": fingerprint, "checkpoint": str(ckpt),
                                   "codebook_size": module.codebook_size, "variants": variants,
                                   "self_correct": self_correct, "topk": topk})
    print(stats.summary() + f"; {stats.samples_skipped} corrupt raw samples skipped; "
          f"{encoder.images_encoded} images encoded")
    return {"out": str(out), "shards_written": stats.shards_written, "shards_skipped": stats.shards_skipped,
            "samples_written": stats.samples_written, "samples_skipped": stats.samples_skipped,
            "images_encoded": encoder.images_encoded, "tokenizer_fingerprint": fingerprint}
