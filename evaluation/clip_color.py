"""GenEval's colour classifier: zero-shot CLIP ViT-L/14 over the ten colour names, from local weights.

Protocol (GenEval evaluate_images.py, `ImageCrops` + `color_classification`): each object is the
image composited over a plain #999999 canvas through its mask, cropped to its box, preprocessed
with CLIP's transform; the class is zero-shot over COLORS with the three templates below
(clip_benchmark's zero_shot_classifier: per colour, mean of the l2-normalised template embeddings,
renormalised; logits = 100 * image_feature @ weights). OpenAI's ViT-L/14 weights need open_clip's
"ViT-L-14-quickgelu" architecture (REFERENCE.md, library pitfalls).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

# GenEval evaluate_images.py: COLORS (order matters only for ties).
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
# GenEval evaluate_images.py color_classification: the zero-shot templates.
COLOR_TEMPLATES = ("a photo of a {color} {cls}", "a photo of a {color}-colored {cls}",
                   "a photo of a {color} object")
CROP_BACKGROUND = "#999999"   # GenEval's default `bgcolor` option ("#999")


def masked_crop(image: np.ndarray, bbox, mask: np.ndarray | None,
                background: str = CROP_BACKGROUND) -> Image.Image:
    """The object as GenEval shows it to CLIP: pasted through its mask on grey, cropped to its box."""
    pil = Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
    if mask is not None:
        if tuple(mask.shape) != pil.size[::-1]:
            raise ValueError(f"mask shape {mask.shape} does not match image {pil.size[::-1]}")
        blank = Image.new("RGB", pil.size, color=background)
        pil = Image.composite(pil, blank, Image.fromarray(np.asarray(mask, bool)))
    return pil.crop(tuple(bbox[:4]))


class ClipColorClassifier:
    """`classify(image, detections, class_name) -> list[colour]` with CLIP from a local checkpoint."""

    def __init__(self, weights_path: str, model_name: str = "ViT-L-14-quickgelu", device: str = "cpu",
                 weights_only: bool = False, batch_size: int = 16):
        if not weights_path or not os.path.isfile(weights_path):
            raise FileNotFoundError(
                f"CLIP weights for the GenEval colour classifier not found at {weights_path!r}: put OpenAI's "
                f"ViT-L/14 checkpoint (ViT-L-14.pt or an open_clip state dict) there and pass its path as "
                f"color_classifier.init_args.weights_path; nothing is downloaded.")
        import open_clip
        # weights_only=False: OpenAI's checkpoint is a TorchScript archive (trusted local file).
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=weights_path, device=device, weights_only=weights_only)
        self._setup(model.eval(), preprocess, open_clip.get_tokenizer(model_name), device, batch_size)

    @classmethod
    def from_model(cls, model: Any, preprocess: Any, tokenizer: Any, device: str = "cpu",
                   batch_size: int = 16) -> "ClipColorClassifier":
        """Wrap an already-built CLIP-like model (encode_image/encode_text), e.g. in tests."""
        self = cls.__new__(cls)
        self._setup(model, preprocess, tokenizer, device, batch_size)
        return self

    def _setup(self, model, preprocess, tokenizer, device, batch_size) -> None:
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device, self.batch_size = device, batch_size
        self._weights: dict[str, Any] = {}

    def text_weights(self, class_name: str):
        """(D, 10) zero-shot weights for one class (clip_benchmark zero_shot_classifier)."""
        import torch
        import torch.nn.functional as F
        if class_name not in self._weights:
            columns = []
            with torch.no_grad():
                for color in GENEVAL_COLORS:
                    texts = [t.format(color=color, cls=class_name) for t in COLOR_TEMPLATES]
                    tokens = self.tokenizer(texts).to(self.device)
                    emb = F.normalize(self.model.encode_text(tokens).float(), dim=-1)
                    columns.append(F.normalize(emb.mean(0), dim=0))
            self._weights[class_name] = torch.stack(columns, dim=1)
        return self._weights[class_name]

    def classify(self, image: np.ndarray, detections: list[dict], class_name: str) -> list[str]:
        import torch
        import torch.nn.functional as F
        if not detections:
            return []
        weights = self.text_weights(class_name)
        crops = [self.preprocess(masked_crop(image, d["bbox"], d.get("mask"))) for d in detections]
        colors = []
        with torch.no_grad():
            for start in range(0, len(crops), self.batch_size):
                batch = torch.stack(crops[start:start + self.batch_size]).to(self.device)
                features = F.normalize(self.model.encode_image(batch).float(), dim=-1)
                logits = 100.0 * features @ weights
                colors += [GENEVAL_COLORS[i] for i in logits.argmax(1).tolist()]
        return colors
