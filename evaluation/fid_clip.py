"""FID (clean-fid) and CLIPScore (open_clip) with weights from LOCAL paths only.

Nothing here downloads (REFERENCE.md, "Pitfalls"):
- clean-fid fetches Inception weights at run time unless a file is already at its cache path
  (/tmp/inception-2015-12-05.pt on Linux) or a `custom_feat_extractor` is passed. We always pass
  one: the torchscript Inception from `inception_path` (or clean-fid's cache file when it already
  exists), wrapped exactly like clean-fid's "clean" mode (x - 128) / 128 -> pool3 (2048-d).
  Tests and experiments may pass any other feature extractor instead.
- open_clip loads a local checkpoint file with `pretrained=<path>`; OpenAI CLIP weights need the
  `-quickgelu` model names (ViT-L-14-quickgelu for GenEval's CLIP ViT-L/14).
A metric whose weights are not configured is skipped with a warning and reported as
{"status": "skipped", "reason": ...}, never faked. A configured path that does not exist is an
error naming it (BackendError).

CLIPScore follows torchmetrics' convention: 100 * max(cos(image, text), 0), averaged over images
(Hessel et al. 2021 define CLIP-S = 2.5 * max(cos, 0); the ranking is the same).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from evaluation.backends import BackendError

CLEANFID_CACHE = Path("/tmp/inception-2015-12-05.pt")   # where clean-fid looks (features.py)


def skipped(metric: str, reason: str) -> dict[str, Any]:
    warnings.warn(f"{metric} skipped: {reason}", stacklevel=2)
    return {"status": "skipped", "reason": reason}


def _require(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise BackendError(f"{what} not found at {str(path)!r}; give the local file (nothing is downloaded)")
    return path


class CleanInception(torch.nn.Module):
    """clean-fid's InceptionV3W in "clean" mode, loaded from a local torchscript file."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.base = torch.jit.load(str(_require(path, "Inception weights")), map_location="cpu").eval()
        self.layers = self.base.layers

    @torch.no_grad()
    def forward(self, x_B3HW: torch.Tensor) -> torch.Tensor:   # values in [0, 255], 299 x 299
        return self.layers((x_B3HW - 128) / 128).view(x_B3HW.shape[0], 2048)


def fid(real_dir: str | Path, fake_dir: str | Path, *, inception_path: str | Path | None = None,
        feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str = "cpu", batch_size: int = 32) -> dict[str, Any]:
    """clean-fid FID between two image folders; skipped when no Inception weights are available."""
    from cleanfid import fid as cleanfid

    for folder in (real_dir, fake_dir):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"FID image folder not found: {folder}")
    if feature_extractor is None:
        if inception_path is None and CLEANFID_CACHE.is_file():
            inception_path = CLEANFID_CACHE
        if inception_path is None:
            return skipped("fid", f"no Inception weights: set inception_path (clean-fid's "
                                  f"inception-2015-12-05.pt) or put the file at {CLEANFID_CACHE}")
        model = CleanInception(inception_path).to(device)
        feature_extractor = model
    value = cleanfid.compute_fid(str(real_dir), str(fake_dir), mode="clean", device=torch.device(device),
                                 custom_feat_extractor=feature_extractor, num_workers=0,
                                 batch_size=batch_size, verbose=False, use_dataparallel=False)
    return {"status": "ok", "value": float(value), "real_dir": str(real_dir), "fake_dir": str(fake_dir)}


def load_clip(model_name: str, checkpoint: str | Path, device: str = "cpu"):
    """(model, preprocess, tokenizer) from a local open_clip checkpoint."""
    import open_clip

    if model_name not in open_clip.list_models():
        raise BackendError(f"unknown open_clip model {model_name!r} (OpenAI CLIP ViT-L/14 weights "
                           f"need 'ViT-L-14-quickgelu')")
    config = open_clip.get_model_config(model_name) or {}
    if config.get("text_cfg", {}).get("hf_tokenizer_name"):
        raise BackendError(f"open_clip model {model_name!r} needs a Hugging Face tokenizer download; "
                           f"use a CLIP model with the built-in tokenizer")
    path = _require(checkpoint, f"CLIP checkpoint for {model_name}")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=str(path), device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name)


@torch.no_grad()
def clip_score(images: Sequence[np.ndarray], prompts: Sequence[str], *, model_name: str = "ViT-L-14-quickgelu",
               checkpoint: str | Path | None = None, device: str = "cpu", batch_size: int = 32) -> dict[str, Any]:
    """Mean CLIPScore of images (H x W x 3 uint8) against their prompts; skipped without weights."""
    if len(images) != len(prompts):
        raise ValueError(f"clip_score got {len(images)} images but {len(prompts)} prompts")
    if checkpoint is None:
        return skipped("clip_score", f"no CLIP weights: set clip_checkpoint to a local {model_name} file")
    from PIL import Image

    model, preprocess, tokenizer = load_clip(model_name, checkpoint, device)
    scores = []
    for start in range(0, len(images), batch_size):
        chunk = slice(start, start + batch_size)
        pixels = torch.stack([preprocess(Image.fromarray(np.asarray(im, np.uint8))) for im in images[chunk]])
        image_BD = torch.nn.functional.normalize(model.encode_image(pixels.to(device)).float(), dim=-1)
        text_BD = torch.nn.functional.normalize(model.encode_text(tokenizer(list(prompts[chunk])).to(device)).float(), dim=-1)
        scores.append(100 * (image_BD * text_BD).sum(-1).clamp(min=0))
    per_image = torch.cat(scores).cpu().numpy()
    return {"status": "ok", "value": float(per_image.mean()), "per_image": per_image.tolist(), "model": model_name}


def compute_metrics(*, real_dir: str | Path | None = None, fake_dir: str | Path | None = None,
                    images: Sequence[np.ndarray] | None = None, prompts: Sequence[str] | None = None,
                    inception_path: str | Path | None = None, clip_model: str = "ViT-L-14-quickgelu",
                    clip_checkpoint: str | Path | None = None, device: str = "cpu") -> dict[str, dict]:
    """Both metrics where their inputs are given; each entry says "ok" or why it was skipped."""
    out: dict[str, dict] = {}
    if real_dir is not None and fake_dir is not None:
        out["fid"] = fid(real_dir, fake_dir, inception_path=inception_path, device=device)
    else:
        out["fid"] = skipped("fid", "no reference image folder (real_dir) to compare against")
    if images is not None and prompts is not None:
        out["clip_score"] = clip_score(images, prompts, model_name=clip_model, checkpoint=clip_checkpoint, device=device)
    else:
        out["clip_score"] = skipped("clip_score", "no images with prompts given")
    return out
