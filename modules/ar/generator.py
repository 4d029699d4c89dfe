"""ARGenerator: an AR decoder + its tokenizer seen as "prompts in, pixels / text out".

This is the adapter the benchmark suite (evaluation/suite.py) talks to: it owns no sampling
logic (modules/ar/sampler.py does) and no scoring (the evaluators do); it turns strings and
uint8 images into token ids / codes and back.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from modules.ar.sampler import SamplingConfig, answer, continue_interleaved, edit_images, generate_images
from modules.common.images import from_uint8, to_uint8
from modules.common.scale_schedule import ScaleSchedule
from modules.text.tokenizers import default_text_tokenizer


class ARGenerator:
    """`refiner` (optional): a RefinerModule (modules/refiner) for this tokenizer, applied to every
    generated image's codes before it is returned (`refiner_steps` flow steps, seeded like the
    sampling)."""

    def __init__(self, model, tokenizer, text_tokenizer=None, sampling: SamplingConfig | None = None,
                 batch_size: int = 8, refiner=None, refiner_steps: int = 4):
        self.model, self.tokenizer = model, tokenizer
        self.refiner, self.refiner_steps = refiner, refiner_steps
        self.text = default_text_tokenizer(model.config.text_vocab_size, text_tokenizer)
        self.sampling = sampling or SamplingConfig()
        self.batch_size = batch_size

    @property
    def device(self):
        return next(self.model.parameters()).device

    def _decode(self, codes: list[list[torch.Tensor]], schedule: ScaleSchedule, seed: int = 0) -> list[np.ndarray]:
        # every scale given, or a prefix of them (the tokenizer decodes the coarse scales alone)
        maps = [torch.stack([c[k] for c in codes]) for k in range(len(codes[0]))]
        if self.refiner is not None:
            return list(to_uint8(self.refiner.refine_codes(maps, schedule, steps=self.refiner_steps, seed=seed)[0]))
        return list(to_uint8(self.tokenizer.decode(maps, schedule)))

    @torch.no_grad()
    def text_to_image(self, prompts: list[str], height: int, width: int, seed: int,
                      offset: int = 0) -> list[np.ndarray]:
        """`offset`: these prompts are items offset, offset+1, ... of a larger call with this seed
        (evaluation.suite shards a call across ranks in batch_size pieces): each batch is seeded by
        its position in the whole call, so an image does not depend on which rank made it."""
        schedule = ScaleSchedule.for_image(height, width, self.tokenizer.patch)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            cfg = dataclasses.replace(self.sampling, seed=seed * 1_000_003 + offset + i)
            ids = [self.text.encode(p) for p in prompts[i:i + self.batch_size]]
            out += self._decode(generate_images(self.model, ids, schedule, cfg), schedule, cfg.seed)
        return out

    def _encode(self, images: list[np.ndarray]) -> list[tuple[ScaleSchedule, list[torch.Tensor]]]:
        codes = self.tokenizer.encode(from_uint8(images, self.device))
        return [(codes.schedule, [t[b] for t in codes.targets]) for b in range(len(images))]

    @torch.no_grad()
    def edit(self, sources: list[np.ndarray], instructions: list[str], seed: int,
             offset: int = 0) -> list[np.ndarray]:
        out = []
        for i in range(0, len(sources), self.batch_size):
            src = self._encode(sources[i:i + self.batch_size])
            cfg = dataclasses.replace(self.sampling, seed=seed * 1_000_003 + offset + i)
            ids = [self.text.encode(t) for t in instructions[i:i + self.batch_size]]
            codes = edit_images(self.model, src, ids, None, cfg)
            out += self._decode(codes, src[0][0], cfg.seed)
        return out

    @torch.no_grad()
    def answer(self, images: list[np.ndarray], questions: list[str]) -> list[str]:
        cfg = dataclasses.replace(self.sampling, text_temperature=0.0)
        out = []
        for i in range(0, len(images), self.batch_size):
            src = self._encode(images[i:i + self.batch_size])
            ids = answer(self.model, src, [self.text.encode(q) for q in questions[i:i + self.batch_size]], cfg)
            out += [self.text.decode(t) for t in ids]
        return out

    @torch.no_grad()
    def continue_story(self, captions: list[str], images: list[np.ndarray], seed: int,
                       max_images: int = 1, offset: int = 0) -> list[tuple[str, np.ndarray | None]]:
        """Interleaved: each story's opening caption + first frame -> (the text the model writes
        next, the frame it draws after it, None if it stopped first), up to `max_images` frames
        (the texts between them joined)."""
        out = []
        for i, (caption, image) in enumerate(zip(captions, images)):
            (schedule, codes), = self._encode([image])
            cfg = dataclasses.replace(self.sampling, seed=seed * 1_000_003 + offset + i)
            new = continue_interleaved(self.model, [self.text.encode(caption), (schedule, codes)], schedule, cfg,
                                       max_images=max_images)
            texts = [self.text.decode(t) for t in new if not isinstance(t[0], torch.Tensor)]
            frames = [t for t in new if isinstance(t[0], torch.Tensor)]
            frame = self._decode([frames[-1]], schedule)[0] if frames else None
            out.append((" ".join(t.strip() for t in texts), frame))
        return out


def load_ar_and_tokenizer(ckpt: str, tokenizer_ckpt: str | None = None, device: str = "cpu"):
    """(model, meta, tokenizer, tokenizer path) for an AR (or RL) checkpoint and the tokenizer it
    was trained with (`tokenizer_ckpt` overrides the path the checkpoint recorded). Every mismatch
    a user can cause (missing file, no tokenizer path, another codebook, code embeddings other
    than the AR model's) raises one ConfigError naming the paths and the fix."""
    from modules.ar.sampler import load_generator, tokenizer_mismatch
    from modules.common.errors import ConfigError
    from modules.tokenizer import checkpoint_fingerprint, load_tokenizer

    try:
        model, meta = load_generator(ckpt, map_location=device, tokenizer_ckpt=tokenizer_ckpt)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    tok_path = tokenizer_ckpt or meta.get("tokenizer_ckpt")
    if tok_path is None:
        raise ConfigError("no tokenizer checkpoint: pass --tokenizer_ckpt (the TokenizerModule checkpoint "
                          "whose codebook the AR model was trained on)")
    try:
        tokenizer = load_tokenizer(tok_path, map_location=device)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from None
    if tokenizer.codebook_size != model.config.codebook_size:
        raise ConfigError(f"tokenizer {tok_path} has codebook_size {tokenizer.codebook_size} but the AR "
                          f"checkpoint {ckpt} expects {model.config.codebook_size}; pass the tokenizer it was "
                          "trained with")
    why = tokenizer_mismatch(model, tokenizer.code_embeddings())
    if why is not None:
        trained = meta.get("tokenizer_fingerprint")
        raise ConfigError(f"tokenizer {tok_path} (file {checkpoint_fingerprint(tok_path)}) does not match the AR "
                          f"checkpoint {ckpt}: its {why}; the AR model was trained with "
                          f"{'tokenizer file ' + trained if trained else 'another tokenizer'}: pass that one "
                          "with --tokenizer_ckpt")
    return model, meta, tokenizer, tok_path
