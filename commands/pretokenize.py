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
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from commands import UsageError

log = logging.getLogger(__name__)


# task -> the raw shard kinds (`main.py world --kind`) it is written from
TASKS: dict[str, tuple[str, ...]] = {
    "t2i": ("scenes", "geneval", "dpg"), "i2t": ("scenes", "geneval", "dpg"), "understand": ("scenes",),
    "edit": ("edits",), "subject": ("subject",), "interleaved": ("videos", "stories")}


class _RawShardEncoder:
    """make_sample(i) for write_shards: encodes the raw shard holding sample i in batches on
    first use (one encoder pass per image; a sample of several images — edit and subject pairs,
    a story's keyframes — has all of them encoded, same-size images batched across samples) and
    serves its samples from a one-shard cache."""

    def __init__(self, raw_dir: Path, index: dict, tok, *, fingerprint: str, self_correct: float, topk: int,
                 variants: int, batch_size: int, resize_to: int | None, task: str, seed: int, device: str,
                 keyframes=None):
        self.tok, self.device = tok, torch.device(device)
        self.names = sorted(index["shards"])
        self.counts = [int(index["shards"][n]) for n in self.names]
        self.starts = np.cumsum([0] + self.counts)[:-1]
        self.raw_dir, self.fingerprint, self.task = raw_dir, fingerprint, task
        self.self_correct, self.topk, self.variants = self_correct, topk, variants
        self.batch_size, self.resize_to, self.seed = batch_size, resize_to, seed
        self.keyframes = keyframes
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

    def _image(self, sample: dict, key: str) -> torch.Tensor:
        """One PNG entry of a raw sample as a (3, H, W) tensor in [-1, 1], validated and resized
        exactly like a scene image (datamodules.raw.decode_raw_sample)."""
        from datamodules.raw import decode_raw_sample
        from datamodules.shards import BadSample

        if key not in sample:
            raise BadSample("missing_key", f"no {key!r} entry")
        return decode_raw_sample({"png": sample[key], "json": b'{"caption": "-"}'}, self.resize_to,
                                 self.tok.patch)["image"]

    def _plan(self, sample: dict) -> dict[str, Any]:
        """A raw sample -> {"key", "text", "meta", "images": [(3, H, W)], "extra": json fields}
        for this task (BadSample / ValueError: corrupt or unusable, skipped and counted)."""
        from datamodules.raw import decode_raw_sample
        from datamodules.shards import BadSample, decode_json

        task, key = self.task, sample.get("__key__")
        if task in ("t2i", "i2t", "understand"):
            item = decode_raw_sample(sample, self.resize_to, self.tok.patch)
            plan = {"key": item["key"], "text": item["text"], "meta": item["meta"], "images": [item["image"]],
                    "extra": {}}
            if task == "understand":
                from shapes.questions import scene_items
                from shapes.scene import Scene

                meta = item["meta"]
                if not isinstance(meta.get("scene"), dict):
                    raise BadSample("bad_meta", "json has no scene; understanding pairs need a world scene")
                rng = np.random.default_rng([self.seed, zlib.crc32(str(key).encode())])
                qa = [[it["question"], it["answer"]] for it in scene_items(
                    Scene.from_dict(meta["scene"]), rng, int(meta.get("width", 64)), int(meta.get("height", 64)))]
                plan["text"], plan["extra"] = qa[0][1], {"qa": qa}
            return plan
        try:
            meta = decode_json(sample["json"])
        except Exception as err:  # noqa: BLE001 - missing or malformed JSON
            raise BadSample("bad_meta", f"json: {type(err).__name__}: {err}") from None
        if task in ("edit", "subject"):
            text = meta.get("instruction" if task == "edit" else "prompt")
            if not isinstance(text, str) or not text:
                raise BadSample("missing_caption", f"{task} sample has no {'instruction' if task == 'edit' else 'prompt'}")
            return {"key": key, "text": text, "meta": meta, "images": [self._image(sample, "src.png"),
                                                                      self._image(sample, "tgt.png")], "extra": {}}
        if meta.get("kind") == "stories":  # real videos, keyframes and texts chosen (datamodules/interleaved/videos.py)
            texts = meta.get("texts")
            n = len(texts) if isinstance(texts, list) else 0
            if n < 1 or not all(isinstance(t, str) for t in texts):
                raise BadSample("bad_meta", f"story json texts {texts!r} is not a list of strings")
            return {"key": key, "text": texts[0], "meta": {"video": meta.get("video"), "kind": "stories"},
                    "images": [self._image(sample, f"kf{i:03d}.png") for i in range(n)],
                    "extra": {"texts": texts, "keyframes": meta.get("keyframes"), "times": meta.get("times")}}
        from datamodules.interleaved.stories import shapes_story
        from datamodules.shards import decode_png

        n = int(meta.get("num_frames", len(meta.get("frames", []))))
        names = [f"f{t:03d}.png" for t in range(n)]
        frames = [decode_png(sample[k]) if k in sample else None for k in names]
        if any(f is None for f in frames):
            raise BadSample("missing_key", f"video has {sum(f is not None for f in frames)} of its {n} frames")
        story = shapes_story(meta, frames, self.keyframes)
        return {"key": key, "text": story["texts"][0], "meta": {k: meta[k] for k in ("events", "object_ids", "kind")
                                                                 if k in meta},
                "images": [self._image(sample, names[t]) for t in story["keyframes"]],
                "extra": {"texts": story["texts"], "keyframes": story["keyframes"],
                          "frames": [meta["frames"][t] for t in story["keyframes"]]}}

    def _encode_shard(self, j: int) -> None:
        import webdataset as wds

        self.cached, self.cache = j, {}
        plans: list[tuple[int, dict]] = []
        url = str(self.raw_dir / self.names[j])
        raw = wds.WebDataset([url], shardshuffle=False, empty_check=False, handler=wds.warn_and_continue)
        for pos, sample in enumerate(raw):
            try:
                plan = self._plan(sample)
                sizes = {tuple(im.shape[1:]) for im in plan["images"]}
                if len(sizes) != 1:
                    raise ValueError(f"the sample's images differ in size {sorted(sizes)}")
                self.tok.schedule_for(*plan["images"][0].shape[1:])  # aspect ratio / size check
            except Exception as err:  # noqa: BLE001 - corrupt or unusable sample: skipped, counted by write_shards
                log.warning("skipping corrupt sample %r in %s: %s", sample.get("__key__"), url, err)
                continue
            plans.append((pos, plan))
        # every image of every sample, bucketed by size: (pos, image index, tensor)
        buckets: dict[tuple[int, int], list[tuple[int, int, torch.Tensor]]] = {}
        for pos, plan in plans:
            for k, image in enumerate(plan["images"]):
                buckets.setdefault(tuple(image.shape[1:]), []).append((pos, k, image))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + j)  # resumable: per-shard seed
        codes_of: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}  # (pos, k) -> (targets_VT, inputs_VT)
        grids_of: dict[tuple[int, int], list] = {}
        for (h, w), members in sorted(buckets.items()):
            for b in range(0, len(members), self.batch_size):
                chunk = members[b: b + self.batch_size]
                images = torch.stack([im for _, _, im in chunk]).to(self.device)
                codes = self.tok.encode_variants(images, self.variants, self.self_correct, self.topk, generator)
                self.images_encoded += len(chunk)
                targets_VBT = torch.stack([c.flat("targets") for c in codes]).to(torch.int32).cpu().numpy()
                inputs_VBT = torch.stack([c.flat("inputs") for c in codes]).to(torch.int32).cpu().numpy()
                grids_of[(h, w)] = [list(g) for g in codes[0].schedule.grids]
                for n, (pos, k, _) in enumerate(chunk):
                    codes_of[(pos, k)] = (targets_VBT[:, n], inputs_VBT[:, n])
        for pos, plan in plans:
            N = len(plan["images"])
            h, w = plan["images"][0].shape[1:]
            targets_VNT = np.stack([codes_of[(pos, k)][0] for k in range(N)], 1)
            inputs_VNT = np.stack([codes_of[(pos, k)][1] for k in range(N)], 1)
            squeeze = (lambda a: a[:, 0]) if N == 1 else (lambda a: a)  # one image: the (V, T) layout
            sample = {
                "__key__": plan["key"] or f"{int(self.starts[j]) + pos:09d}",
                "json": {"text": plan["text"], "height": h, "width": w, "grids": grids_of[(h, w)],
                         "codebook_size": self.tok.codebook_size,
                         "tokenizer_fingerprint": self.fingerprint, "task": self.task,
                         "variants": self.variants, "self_correct": self.self_correct,
                         "topk": self.topk, "meta": plan["meta"], "num_images": N, **plan["extra"]},
                "targets.npy": np.ascontiguousarray(targets_VNT[0] if N > 1 else targets_VNT[0, 0]),
                "inputs.npy": np.ascontiguousarray(squeeze(inputs_VNT)),
            }
            if self.variants > 1:
                sample["variant_targets.npy"] = np.ascontiguousarray(squeeze(targets_VNT))
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
    keyframe_threshold: float = 0.02,
    keyframe_min_gap: int = 1,
    max_keyframes: int = 4,
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
        task: what to write, each sample tagged with it: t2i / i2t (caption <-> image, from scene,
            geneval or dpg shards), understand (a scene's questions and answers of
            shapes/questions.py, one drawn per read; from scene shards), edit (source image +
            instruction + target image, from edits shards), subject (subject image + prompt +
            target image, from subject shards), interleaved (a world video's keyframes with the
            caption and the transition texts between them, from videos shards; or the story
            shards of real videos, datamodules/interleaved/videos.py).
        keyframe_threshold / keyframe_min_gap / max_keyframes: task interleaved: keyframe selection
            (datamodules/interleaved/keyframes.py: a frame is kept when its mean pixel change from
            the last keyframe is at least the threshold, min_gap frames apart; first and last kept).
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
    if task not in TASKS:
        raise UsageError(f"unknown --task {task!r}; choose one of: {', '.join(TASKS)}")
    try:
        shard_urls(raw)
        index = read_index(raw)
    except FileNotFoundError as err:
        raise UsageError(f"raw shards: {err}") from None
    kind = (index.get("metadata") or {}).get("kind")
    if kind is not None and kind not in TASKS[task]:
        raise UsageError(f"--task {task} reads `main.py world --kind {'/'.join(TASKS[task])}` shards, but {raw} holds "
                         f"kind {kind!r}; pass a matching --raw or --task")
    from datamodules.interleaved.keyframes import KeyframeConfig

    try:
        keyframes = KeyframeConfig(threshold=keyframe_threshold, min_gap=keyframe_min_gap,
                                   max_keyframes=max_keyframes)
    except ValueError as err:
        raise UsageError(f"keyframe selection: {err}") from None
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
                               resize_to=resize_to, task=task, seed=seed, device=device,
                               keyframes=keyframes)
    stats = write_shards(encoder, encoder.total, out, prefix="pretok", samples_per_shard=samples_per_shard,
                         description=f"pretokenising {raw}",
                         metadata={"tokenizer_fingerprint": fingerprint, "checkpoint": str(ckpt),
                                   "codebook_size": module.codebook_size, "variants": variants,
                                   "self_correct": self_correct, "topk": topk, "task": task})
    print(stats.summary() + f"; {stats.samples_skipped} corrupt raw samples skipped; "
          f"{encoder.images_encoded} images encoded")
    return {"out": str(out), "shards_written": stats.shards_written, "shards_skipped": stats.shards_skipped,
            "samples_written": stats.samples_written, "samples_skipped": stats.samples_skipped,
            "images_encoded": encoder.images_encoded, "tokenizer_fingerprint": fingerprint}
