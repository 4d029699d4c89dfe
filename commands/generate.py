"""`python main.py generate`: images (GenEval layout), edits or text answers from an AR checkpoint."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from commands import UsageError
from evaluation.grids import image_grid
from modules.common.images import to_uint8

PROMPT_KEYS = {"t2i": "prompt", "edit": "instruction", "i2t": "image", "understand": "image", "interleaved": "caption"}


# ---------------------------------------------------------------------------- prompt files
def read_prompt_file(path: str | Path, task: str = "t2i") -> list[dict]:
    """GenEval metadata jsonl (one JSON object per line) or plain text lines (one prompt per line;
    for i2t: one image path per line). The format is detected from the first non-empty line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"prompt file not found at {p}; write prompts with `python main.py world --kind "
                         "geneval` "
                         "or pass a text file with one prompt per line")
    text = p.read_text(encoding="utf-8")
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise UsageError(f"prompt file {p} is empty")
    key, is_json, out = PROMPT_KEYS[task], lines[0][1].startswith("{"), []
    for no, ln in lines:
        if is_json:
            try:
                d = json.loads(ln)
            except json.JSONDecodeError as err:
                raise UsageError(f"{p} line {no}: not valid JSON ({err.msg}); every line of a jsonl prompt "
                                 "file must be one JSON object") from None
            if not isinstance(d, dict) or key not in d:
                raise UsageError(f"{p} line {no}: expected a JSON object with a {key!r} key for task "
                                 f"{task!r}, got {ln[:80]!r}")
            if task == "edit" and "source" not in d:
                raise UsageError(f"{p} line {no}: an edit line needs 'source' (image path) and 'instruction'")
            if task == "interleaved" and "image" not in d:
                raise UsageError(f"{p} line {no}: an interleaved line needs 'caption' and 'image' (the story's "
                                 "first frame)")
            out.append(d)
        else:
            if ln.startswith("{"):
                raise UsageError(f"{p} line {no}: looks like JSON but line {lines[0][0]} is plain text; use "
                                 "one format per file (GenEval metadata jsonl or plain text lines)")
            if task in ("edit", "interleaved"):
                raise UsageError(f"{p} line {no}: {task} prompts need jsonl lines " +
                                 ("{'source': ..., 'instruction': ...}" if task == "edit" else
                                  "{'caption': ..., 'image': ...}"))
            out.append({key: ln})
    return out


def load_sampling(sampling: dict | str | None):
    """SamplingConfig from a YAML path (configs/sampling/*.yaml) or a mapping; unknown keys -> error."""
    from modules.ar.sampler import SamplingConfig

    if isinstance(sampling, str):
        import yaml

        sp = Path(sampling).expanduser()
        if not sp.is_file():
            raise UsageError(f"sampling config not found at {sp}; see configs/sampling/ for examples")
        sampling = yaml.safe_load(sp.read_text()) or {}
    if sampling is not None and not isinstance(sampling, dict):
        raise UsageError(f"sampling config must be a mapping of SamplingConfig keys, got {sampling!r}")
    try:
        cfg = SamplingConfig.from_dict(sampling)
    except (ValueError, TypeError) as err:
        raise UsageError(f"bad sampling config: {err}") from None
    check_sampling_values(cfg)
    return cfg


def check_sampling_values(cfg) -> None:
    """Types and ranges of a SamplingConfig's values (a YAML `guidance: high` or `top_k: -3`)."""

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    rules = {  # key -> (value ok, what it must be)
        "guidance": (lambda v: number(v) and v >= 0, "a number >= 0"),
        "temperature": (lambda v: number(v) and v >= 0, "a number >= 0 (0 = greedy)"),
        "text_temperature": (lambda v: number(v) and v >= 0, "a number >= 0 (0 = greedy)"),
        "top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0 (0 = off)"),
        "text_top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0 (0 = off)"),
        "top_p": (lambda v: number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "text_top_p": (lambda v: number(v) and 0 < v <= 1, "a number in (0, 1]"),
        "max_text_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1"),
        "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
        "guidance_off_from": (lambda v: v is None or (isinstance(v, int) and v >= 0), "null or an integer >= 0"),
    }
    for key, (ok, what) in rules.items():
        value = getattr(cfg, key, None)
        values = value if isinstance(value, (list, tuple)) else [value]
        if value is None and key != "guidance_off_from":
            continue
        if not values or not all(ok(v) for v in values):
            raise UsageError(f"sampling {key}: {value!r} must be {what} (a list of them per scale also works "
                             "for temperature, top_k, top_p)")


# ---------------------------------------------------------------------------- atomic writes
def _atomic_write(path: Path, write) -> None:
    """write(tmp_path) then rename: an interrupted run never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_png(path: Path, image_HW3: np.ndarray) -> None:
    from PIL import Image

    _atomic_write(path, lambda tmp: Image.fromarray(image_HW3).save(tmp, format="PNG"))


def save_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def encode_image(tokenizer, path: str, base: Path, schedule, patch: int, index: int):
    """(schedule, per-scale codes (h, w)) of an image file; resized to `schedule`'s final grid
    when given, else its own size (which must tile into whole tokens)."""
    size = None if schedule is None else (schedule.final_grid[0] * patch, schedule.final_grid[1] * patch)
    img = load_image(path, base, size)
    try:
        codes = tokenizer.encode(img.to(tokenizer.device))
    except ValueError as err:
        raise UsageError(f"prompt {index}, image {path}: {err}") from None
    return codes.schedule, [t[0] for t in codes.targets]


def load_image(path: str, base: Path, size: tuple[int, int] | None) -> torch.Tensor:
    """An image file -> (1, 3, H, W) in [-1, 1] (resized to `size` = (H, W) when given)."""
    from PIL import Image

    p = Path(path) if Path(path).is_absolute() else base / path
    if not p.is_file():
        raise UsageError(f"image not found at {p} (paths in the prompt file are relative to the file)")
    im = Image.open(p).convert("RGB")
    if size is not None and im.size != (size[1], size[0]):
        im = im.resize((size[1], size[0]), Image.BICUBIC)
    return torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1


# ---------------------------------------------------------------------------- the command
def run(
    ckpt: str,
    prompts: str,
    out: str = "runs/generate",
    task: Literal["t2i", "edit", "i2t", "understand", "interleaved"] = "t2i",
    tokenizer_ckpt: str | None = None,
    sampling: dict[str, Any] | str | None = None,
    samples: int = 4,
    batch_size: int = 8,
    height: int = 64,
    width: int = 64,
    text_tokenizer: Literal["bytes", "shapes-words", "hf"] | None = None,
    text_tokenizer_path: str | None = None,
    limit: int | None = None,
    device: str = "cpu",
    allow_untrained_scales: bool = False,
    story_images: int = 2,
    refiner: str | None = None,
    refiner_steps: int = 4,
) -> dict:
    """Generate images (GenEval layout), edits or text answers from an AR checkpoint.

    t2i:  <out>/<00000>/metadata.jsonl, samples/0000.png ..., grid.png (official GenEval layout).
          jsonl lines may carry "height"/"width" (pixels) for other aspect ratios.
    edit: jsonl lines {"source": image path, "instruction": ...}: same layout + <out>/edits.jsonl.
    i2t / understand:  jsonl lines {"image": path, "question": optional} or image paths:
          <out>/answers.jsonl.
    interleaved: jsonl lines {"caption": ..., "image": the first frame's path}: the model
          continues the story with up to --story_images frames; <out>/<00000>/frame_00.png (the
          given frame), frame_01.png ..., story.json {"caption", "texts", "frames"}, strip.png.
    N = --samples images per prompt, generated --batch_size at a time (CFG doubles the rows).
    Resumable: finished prompts are skipped; every file is written atomically; seeds depend only
    on the sampling seed and the prompt index, so a resumed run reproduces the same images.

    Args:
        ckpt: AR checkpoint (ARModule Lightning checkpoint, or modules.ar.sampler.save_generator's).
        prompts: GenEval metadata jsonl, or plain text lines (format detected from the first line).
        out: output folder.
        task: t2i, edit, i2t / understand (the same: image + optional question -> text), or
            interleaved (caption + first frame -> transitions and frames).
        tokenizer_ckpt: TokenizerModule checkpoint (default: the one recorded in the AR checkpoint).
        sampling: YAML file (configs/sampling/*.yaml) or mapping of SamplingConfig keys.
        samples: images per prompt (GenEval: 4).
        batch_size: images per sampling call.
        height: default image height in pixels (a jsonl line's "height" overrides it).
        width: default image width in pixels (a jsonl line's "width" overrides it).
        text_tokenizer: default: the one the checkpoint was trained with; or bytes, shapes-words,
            hf (a local tokenizer.json, `text_tokenizer_path`).
        text_tokenizer_path: folder or file of the HF tokenizer.json (default: the checkpoint's).
        limit: only the first `limit` prompts.
        device: cpu or cuda.
        story_images: interleaved: most frames the model draws per story.
        allow_untrained_scales: generate even at a number of scales (resolution) the checkpoint
            never trained on (by default that is refused: those scales' embeddings are untrained).
        refiner: RefinerModule checkpoint (issue 14): t2i/edit images are refined from their codes
            before they are written; one trained on another tokenizer file is refused.
        refiner_steps: the refiner's flow steps.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from modules.ar.sampler import answer, describe_scale_counts, edit_images, generate_images, untrained_scale_counts
    from modules.common.scale_schedule import ScaleSchedule
    from modules.text.tokenizers import build_text_tokenizer

    if samples < 1 or batch_size < 1 or height < 1 or width < 1:
        raise UsageError(f"--samples, --batch_size, --height and --width must be >= 1, got {samples}, {batch_size}, "
                         f"{height} and {width}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be >= 1 (or omitted for every prompt)")
    if story_images < 1:
        raise UsageError(f"--story_images {story_images} must be >= 1")
    task = "i2t" if task == "understand" else task
    cfg = load_sampling(sampling)
    items = read_prompt_file(prompts, task)[:limit]
    base = Path(prompts).expanduser().resolve().parent
    from modules.ar.generator import load_ar_and_tokenizer

    model, meta, tokenizer, tok_path = load_ar_and_tokenizer(ckpt, tokenizer_ckpt, device)
    text_tok = build_text_tokenizer(text_tokenizer or meta.get("text_tokenizer") or "bytes",
                                    text_tokenizer_path or meta.get("text_tokenizer_path"),
                                    model.config.text_vocab_size)
    patch, out_dir = tokenizer.patch, Path(out)
    refiner_module = None
    if refiner:
        from modules.refiner import load_refiner
        from modules.tokenizer import checkpoint_fingerprint

        refiner_module = load_refiner(refiner, tokenizer.tokenizer, checkpoint_fingerprint(tok_path), device)

    def schedule_of(item: dict, no: int) -> ScaleSchedule:
        try:
            h, w = int(item.get("height", height)), int(item.get("width", width))
        except (TypeError, ValueError):
            raise UsageError(f"prompt {no}: height {item.get('height', height)!r} / width "
                             f"{item.get('width', width)!r} must be whole numbers of pixels") from None
        if isinstance(item.get("height", height), bool) or isinstance(item.get("width", width), bool) or min(h, w) < 1:
            raise UsageError(f"prompt {no}: height {h} and width {w} must be positive numbers of pixels")
        try:
            return ScaleSchedule.for_image(h, w, patch)
        except ValueError as err:
            raise UsageError(f"prompt {no} ({h}x{w} px): {err}") from None

    def check_scales(schedule: ScaleSchedule, no: int) -> None:
        bad = untrained_scale_counts(meta.get("trained_scale_counts"), [schedule.num_scales])
        if bad and not allow_untrained_scales:
            h, w = schedule.final_grid
            trained = describe_scale_counts(meta["trained_scale_counts"], patch)
            raise UsageError(f"prompt {no}: {h * patch}x{w * patch} px needs {schedule.num_scales} scales, but the "
                             f"AR checkpoint {ckpt} trained only on scale counts {trained}; generate at a "
                             "trained size (--height/--width) or pass --allow_untrained_scales true")

    schedules = [schedule_of(it, i) for i, it in enumerate(items)]  # all sizes checked before any work
    for i, (it, sch) in enumerate(zip(items, schedules)):
        if task == "t2i" or (task == "edit" and ("height" in it or "width" in it)):
            check_scales(sch, i)
    done = skipped = 0
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn()) as bar:
        job = bar.add_task(f"generate {task}", total=len(items))
        for i, (item, sch) in enumerate(zip(items, schedules)):
            folder = out_dir / f"{i:05d}"
            if _finished(folder, task, samples, out_dir, i):
                skipped += 1
                bar.advance(job)
                continue
            sized = "height" in item or "width" in item
            with torch.no_grad():
                if task == "interleaved":
                    _continue_story(model, tokenizer, text_tok, item, encode_image(
                        tokenizer, item["image"], base, sch if sized else None, patch, i), folder,
                        dataclasses.replace(cfg, seed=cfg.seed + i), story_images)
                elif task == "i2t":
                    src = encode_image(tokenizer, item["image"], base, sch if sized else None, patch, i)
                    q = text_tok.encode(item.get("question", ""))
                    ids = answer(model, [src], [q], dataclasses.replace(cfg, seed=cfg.seed + i))[0]
                    row = {"index": i, **item, "answer": text_tok.decode(ids)}
                    _append_jsonl(out_dir / "answers.jsonl", row)
                else:
                    codes = []
                    src = None
                    if task == "edit":
                        src = encode_image(tokenizer, item["source"], base, None, patch, i)
                    sch = sch if src is None or sized else src[0]
                    check_scales(sch, i)
                    for j in range(0, samples, batch_size):  # seed per (prompt, chunk): resumed runs agree
                        cfg_ij = dataclasses.replace(cfg, seed=cfg.seed + i + 100_003 * (j // batch_size))
                        n = min(batch_size, samples - j)
                        if task == "t2i":
                            cap = text_tok.encode(item["prompt"])
                            codes += generate_images(model, [cap] * n, sch, cfg_ij)
                        else:
                            ins = text_tok.encode(item["instruction"])
                            codes += edit_images(model, [src] * n, [ins] * n, sch, cfg_ij)
                    maps = [torch.stack([c[k] for c in codes]) for k in range(sch.num_scales)]
                    if refiner_module is not None:
                        images = to_uint8(refiner_module.refine_codes(maps, sch, steps=refiner_steps, seed=cfg.seed + i)[0])
                    else:
                        images = to_uint8(tokenizer.decode(maps, sch))
                    _write_prompt_folder(folder, item, images)
                    if task == "edit":
                        _append_jsonl(out_dir / "edits.jsonl", {"index": i, **item, "samples": [
                            str(folder / "samples" / f"{k:04d}.png") for k in range(samples)]})
            done += 1
            bar.advance(job)
    return {"out": str(out_dir), "generated": done, "skipped": skipped}


def _write_prompt_folder(folder: Path, item: dict, images: np.ndarray) -> None:
    """Samples first, metadata.jsonl last: a folder with metadata is complete (GenEval layout)."""
    for k, im in enumerate(images):
        save_png(folder / "samples" / f"{k:04d}.png", im)
    save_png(folder / "grid.png", np.asarray(image_grid(list(images), pad=2)))
    save_text(folder / "metadata.jsonl", json.dumps(item) + "\n")


def _continue_story(model, tokenizer, text_tok, item: dict, src, folder: Path, cfg, story_images: int) -> None:
    """One story: caption + first frame -> the model's texts and frames, written to `folder`
    (story.json last: a folder with it is complete)."""
    from modules.ar.sampler import continue_interleaved

    schedule, codes = src
    new = continue_interleaved(model, [text_tok.encode(item["caption"]), (schedule, codes)], schedule, cfg,
                               max_images=story_images)
    frames = [codes] + [t for t in new if isinstance(t[0], torch.Tensor)]
    texts, pending = [], []
    for t in new:  # the text written before each new frame (joined when several runs precede it)
        if isinstance(t[0], torch.Tensor):
            texts.append(" ".join(pending))
            pending = []
        else:
            pending.append(text_tok.decode(t).strip())
    if pending:
        texts.append(" ".join(pending))
    maps = [torch.stack([f[k] for f in frames]) for k in range(schedule.num_scales)]
    images = to_uint8(tokenizer.decode(maps, schedule))
    for k, im in enumerate(images):
        save_png(folder / f"frame_{k:02d}.png", im)
    save_png(folder / "strip.png", np.asarray(image_grid(list(images), captions=[item["caption"][:30]] +
                                                         [t[:30] for t in texts[:len(images) - 1]], pad=2)))
    save_text(folder / "story.json", json.dumps({**item, "texts": texts, "frames": [
        f"frame_{k:02d}.png" for k in range(len(images))]}) + "\n")


def _finished(folder: Path, task: str, samples: int, out_dir: Path, index: int) -> bool:
    if task == "interleaved":
        return (folder / "story.json").is_file()
    if task == "i2t":
        return index in _jsonl_indices(out_dir / "answers.jsonl")
    if not (folder / "metadata.jsonl").is_file():
        return False
    done = all((folder / "samples" / f"{k:04d}.png").is_file() for k in range(samples))
    return done and (task != "edit" or index in _jsonl_indices(out_dir / "edits.jsonl"))


def _jsonl_indices(path: Path) -> set[int]:
    if not path.is_file():
        return set()
    out = set()
    for ln in path.read_text(encoding="utf-8").splitlines():
        try:
            out.add(int(json.loads(ln)["index"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a line cut by an interruption: that item is redone
    return out


def _append_jsonl(path: Path, row: dict) -> None:
    """Rewrite the file with the new row atomically (small files; no torn lines)."""
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old and not old.endswith("\n"):
        old = old[: old.rfind("\n") + 1]
    save_text(path, old + json.dumps(row) + "\n")
