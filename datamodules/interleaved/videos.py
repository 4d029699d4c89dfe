"""Real videos -> interleaved stories -> story shards (then `main.py pretokenize --task interleaved`).

    sources      mp4 / webm files in a folder (side files `<stem>.json` / `<stem>.txt` hold the
                 video's own captions), or webdataset shards whose samples hold an "mp4" / "webm"
                 entry (+ "json" / "txt"); decoded with PyAV
    keyframes    `keyframes.select_keyframes` on the decoded frames (pixel change vs the last
                 keyframe, threshold, min gap, first / last kept, at most K)
    text         a captioner: `SideFileCaptioner` reads the video's own caption track (json
                 {"caption": ..., "segments": [{"start", "end", "text"}]} in seconds, like a subtitle
                 file, or plain text for the opening caption), or any class given by class path
                 (e.g. `TransformersCaptioner`, a local vision-language model) with
                 `caption(frame)` and `transition(frame_a, frame_b)`
    output       story shards: kf000.png ... + json {"kind": "stories", "texts", "keyframes",
                 "times", "video"}; whole videos go to the validation folder (by a hash of the video
                 name, so a video's keyframes never straddle the split)

Corrupt files (unreadable container, no decodable frame) and corrupt frames are skipped with a
warning and counted (`StoryStats`).
"""
from __future__ import annotations

import importlib
import io
import json
import logging
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from datamodules.interleaved.keyframes import KeyframeConfig, select_keyframes

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = (".mp4", ".webm")


def _av():
    try:
        import av
    except ImportError:
        raise ImportError("reading video files needs PyAV: `pip install av` (the video -> interleaved pipeline "
                          "decodes mp4/webm with it)") from None
    return av


@dataclass
class Video:
    name: str
    frames: list[np.ndarray]  # uint8 H×W×3
    times: list[float]  # seconds
    side: dict[str, Any] = field(default_factory=dict)  # the video's own captions, if any


@dataclass
class StoryStats:
    videos: int = 0
    stories_train: int = 0
    stories_val: int = 0
    corrupt_videos: int = 0
    corrupt_frames: int = 0
    short_videos: int = 0  # fewer than 2 keyframes: no story

    def summary(self) -> str:
        return (f"{self.videos} videos -> {self.stories_train} train / {self.stories_val} val stories; skipped "
                f"{self.corrupt_videos} corrupt videos, {self.corrupt_frames} corrupt frames, "
                f"{self.short_videos} videos with fewer than 2 keyframes")


def decode_video(data: bytes | str | Path, stats: StoryStats | None = None, max_frames: int | None = None,
                 stride: int = 1) -> tuple[list[np.ndarray], list[float]]:
    """(frames uint8 H×W×3, times in seconds) of a video file or its bytes, every `stride`-th
    frame; frames that fail to decode are skipped, warned about and counted in `stats`. An
    unreadable container raises ValueError."""
    av = _av()
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data)
    frames, times = [], []
    try:
        container = av.open(source)
    except Exception as err:  # noqa: BLE001 - any container error: a corrupt file
        raise ValueError(f"unreadable video: {type(err).__name__}: {err}") from None
    with container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        packets = container.demux(stream)
        k = 0
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except Exception as err:  # noqa: BLE001 - a corrupt packet
                if stats is not None:
                    stats.corrupt_frames += 1
                warnings.warn(f"skipped an undecodable video packet: {type(err).__name__}: {err}", stacklevel=2)
                break
            try:
                decoded = packet.decode()
            except Exception as err:  # noqa: BLE001 - a corrupt frame
                if stats is not None:
                    stats.corrupt_frames += 1
                warnings.warn(f"skipped a corrupt video frame: {type(err).__name__}: {err}", stacklevel=2)
                continue
            for frame in decoded:
                if k % stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    times.append(float(frame.time) if frame.time is not None else float(k))
                k += 1
                if max_frames is not None and len(frames) >= max_frames:
                    return frames, times
    if not frames:
        raise ValueError("no decodable frame")
    return frames, times


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = 4, codec: str = "libx264") -> None:
    """Frames (uint8 H×W×3, even sides for yuv420p) -> a video file, with PyAV."""
    av = _av()
    h, w = frames[0].shape[:2]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "0", "preset": "ultrafast"}  # near-lossless: colours survive
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _side(meta: bytes | str | None, suffix: str) -> dict[str, Any]:
    if meta is None:
        return {}
    text = meta.decode("utf-8") if isinstance(meta, bytes) else meta
    if suffix == "json":
        data = json.loads(text)
        return data if isinstance(data, dict) else {}
    return {"caption": text.strip()}


def iter_videos(source: str | Path, stats: StoryStats, max_frames: int | None = None,
                stride: int = 1) -> Iterator[Video]:
    """Videos of a folder of mp4/webm files (side files <stem>.json / .txt) or of webdataset
    shards (a folder of .tar files, or one .tar); corrupt ones skipped, warned about, counted."""
    root = Path(source)
    if root.is_dir() and not any(root.glob("*.tar")):
        items = [(p.name, (lambda p=p: p), p) for p in sorted(root.iterdir()) if p.suffix.lower() in VIDEO_SUFFIXES]
        if not items:
            raise FileNotFoundError(f"no {'/'.join(VIDEO_SUFFIXES)} files in {root}")
        for name, load, p in items:
            side = {}
            for suffix in ("json", "txt"):
                f = p.with_suffix("." + suffix)
                if f.is_file():
                    side = _side(f.read_text(encoding="utf-8"), suffix)
                    break
            video = _decode_one(name, load(), side, stats, max_frames, stride)
            if video is not None:
                yield video
        return
    import webdataset as wds

    urls = sorted(str(p) for p in root.glob("*.tar")) if root.is_dir() else [str(root)]
    if not urls or not Path(urls[0]).exists():
        raise FileNotFoundError(f"no video files or .tar shards at {source}")
    for sample in wds.WebDataset(urls, shardshuffle=False, empty_check=False):
        key = next((k for k in ("mp4", "webm") if k in sample), None)
        if key is None:
            stats.corrupt_videos += 1
            warnings.warn(f"skipped shard sample {sample.get('__key__')!r}: no mp4/webm entry", stacklevel=2)
            continue
        side = _side(sample.get("json"), "json") if "json" in sample else _side(sample.get("txt"), "txt")
        video = _decode_one(str(sample["__key__"]), sample[key], side, stats, max_frames, stride)
        if video is not None:
            yield video


def _decode_one(name, data, side, stats: StoryStats, max_frames, stride) -> Video | None:
    stats.videos += 1
    try:
        frames, times = decode_video(data, stats, max_frames, stride)
    except ValueError as err:
        stats.corrupt_videos += 1
        warnings.warn(f"skipped corrupt video {name!r}: {err}", stacklevel=3)
        return None
    return Video(name, frames, times, side)


class Captioner(Protocol):
    def caption(self, frame: np.ndarray) -> str: ...
    def transition(self, before: np.ndarray, after: np.ndarray) -> str: ...


class SideFileCaptioner:
    """The video's own caption track: "caption" opens the story; each later keyframe gets the
    text of the "segments" entry ({"start", "end", "text"}, seconds) covering its time, or
    "Nothing changes." outside every segment. Needs `use(video)` before each video."""

    def __init__(self):
        self.video: Video | None = None

    def use(self, video: Video) -> None:
        if not video.side.get("caption"):
            raise ValueError(f"video {video.name!r} has no caption side file (<stem>.json with \"caption\" or "
                             "<stem>.txt); give one or use a model captioner (captioner: <class path>)")
        self.video = video

    def caption(self, frame: np.ndarray, time: float = 0.0) -> str:
        return str(self.video.side["caption"])

    def transition(self, before: np.ndarray, after: np.ndarray, time: float = 0.0) -> str:
        for seg in self.video.side.get("segments", []):
            if float(seg["start"]) <= time <= float(seg["end"]):
                return str(seg["text"])
        return "Nothing changes."


class TransformersCaptioner:
    """A local image-to-text model (a Hugging Face folder with its weights) as the captioner; the
    transition text is the caption of the later keyframe prefixed by "Then". Nothing is
    downloaded: a missing folder is an error naming the path."""

    def __init__(self, model_path: str, max_new_tokens: int = 40):
        if not Path(model_path).is_dir():
            raise FileNotFoundError(f"captioner weights not found at {model_path}; give a local image-to-text "
                                    "model folder (config.json + weights) or use captioner: side_file")
        from transformers import pipeline

        self.pipe = pipeline("image-to-text", model=model_path)
        self.max_new_tokens = max_new_tokens

    def caption(self, frame: np.ndarray, time: float = 0.0) -> str:
        from PIL import Image

        return self.pipe(Image.fromarray(frame), max_new_tokens=self.max_new_tokens)[0]["generated_text"].strip()

    def transition(self, before: np.ndarray, after: np.ndarray, time: float = 0.0) -> str:
        return "Then " + self.caption(after, time)


def build_captioner(spec: str | dict[str, Any]):
    """"side_file", or {"class_path": "pkg.mod.Class", "init_args": {...}}."""
    if spec == "side_file":
        return SideFileCaptioner()
    if isinstance(spec, str):
        spec = {"class_path": spec}
    path = spec.get("class_path", "")
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"captioner class {path!r} not found; give 'side_file' or an importable class path "
                         "such as datamodules.interleaved.videos.TransformersCaptioner") from None
    return cls(**spec.get("init_args", {}))


def video_story(video: Video, captioner, cfg: KeyframeConfig) -> dict[str, Any] | None:
    """{"keyframes", "times", "texts"} of one video, None when fewer than 2 keyframes."""
    keys = select_keyframes(video.frames, cfg)
    if len(keys) < 2:
        return None
    if hasattr(captioner, "use"):
        captioner.use(video)
    times = [video.times[k] for k in keys]
    texts = [captioner.caption(video.frames[keys[0]], times[0])]
    texts += [captioner.transition(video.frames[a], video.frames[b], t) for a, b, t in zip(keys, keys[1:], times[1:])]
    return {"keyframes": keys, "times": times, "texts": texts}


def is_validation(name: str, val_fraction: float) -> bool:
    """Whole videos held out: a stable hash of the video's name."""
    return (zlib.crc32(name.encode("utf-8")) % 10_000) < val_fraction * 10_000


def write_story_shards(source, out_train: str | Path, out_val: str | Path, *, captioner="side_file",
                       keyframes: KeyframeConfig = KeyframeConfig(), val_fraction: float = 0.1,
                       max_frames: int | None = None, stride: int = 1, samples_per_shard: int = 500) -> StoryStats:
    """Videos (a folder / shards, see `iter_videos`, or an iterable of `Video`) -> story shards in
    two folders (train, val: whole videos held out)."""
    from datamodules.shards import write_shards

    stats = StoryStats()
    cap = build_captioner(captioner)
    stories: dict[str, list[dict[str, Any]]] = {"train": [], "val": []}
    videos = iter_videos(source, stats, max_frames, stride) if isinstance(source, (str, Path)) else source
    for video in videos:
        if not isinstance(source, (str, Path)):
            stats.videos += 1
        story = video_story(video, cap, keyframes)
        if story is None:
            stats.short_videos += 1
            continue
        sample = {f"kf{i:03d}.png": video.frames[k] for i, k in enumerate(story["keyframes"])}
        sample["json"] = {"kind": "stories", "video": video.name, **story,
                          "height": int(video.frames[0].shape[0]), "width": int(video.frames[0].shape[1])}
        stories["val" if is_validation(video.name, val_fraction) else "train"].append(sample)
    for split, out in (("train", out_train), ("val", out_val)):
        items = stories[split]
        setattr(stats, f"stories_{split}", len(items))
        write_shards(lambda i, items=items: dict(items[i]), len(items), out, samples_per_shard=samples_per_shard,
                     description=f"stories ({split})", metadata={"kind": "stories", "val_fraction": val_fraction,
                                "keyframes": vars(keyframes) if hasattr(keyframes, "__dict__") else None})
    log.info(stats.summary())
    return stats
