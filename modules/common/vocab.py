"""The unified vocabulary: text ids, then visual codes, then specials (NF §3.1).

    [0, text_size)                          text ids (byte-level: 256; Qwen2.5: 152064)
    [text_size, text_size + codebook_size)  visual codes of the tokenizer's shared index
    [.. + codebook_size, size)              specials: <boi> <eoi> <pad> <eos> and task tokens

The AR config, the sequence builder, the loss split and the sampler's vocabulary restriction
all read ids from here; nobody else adds offsets.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

BASE_SPECIALS: tuple[str, ...] = ("<boi>", "<eoi>", "<pad>", "<eos>")
DEFAULT_TASK_TOKENS: tuple[str, ...] = ("<t2i>", "<i2t>", "<edit>", "<interleave>")


@dataclass(frozen=True)
class UnifiedVocab:
    text_size: int
    codebook_size: int
    task_tokens: tuple[str, ...] = DEFAULT_TASK_TOKENS
    specials: tuple[str, ...] = field(init=False)

    def __post_init__(self):
        if self.text_size < 1 or self.codebook_size < 1:
            raise ValueError(f"vocabulary sizes must be positive: text {self.text_size}, codebook {self.codebook_size}")
        object.__setattr__(self, "specials", BASE_SPECIALS + tuple(self.task_tokens))
        if len(set(self.specials)) != len(self.specials):
            raise ValueError(f"duplicate special tokens in {self.specials}")

    # ------------------------------------------------------------------ ranges
    @property
    def visual_offset(self) -> int:
        return self.text_size

    @property
    def special_offset(self) -> int:
        return self.text_size + self.codebook_size

    @property
    def size(self) -> int:
        return self.special_offset + len(self.specials)

    def special(self, name: str) -> int:
        try:
            return self.special_offset + self.specials.index(name)
        except ValueError:
            raise KeyError(f"unknown special token {name!r}; known: {self.specials}") from None

    @property
    def boi(self) -> int:
        return self.special("<boi>")

    @property
    def eoi(self) -> int:
        return self.special("<eoi>")

    @property
    def pad(self) -> int:
        return self.special("<pad>")

    @property
    def eos(self) -> int:
        return self.special("<eos>")

    def task(self, name: str) -> int:
        return self.special(name if name.startswith("<") else f"<{name}>")

    # ------------------------------------------------------------------ conversions
    def visual(self, codes: torch.Tensor) -> torch.Tensor:
        """Codebook indices -> unified ids."""
        return codes + self.visual_offset

    def is_visual(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.visual_offset) & (ids < self.special_offset)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= 0) & (ids < self.text_size)

    def visual_mask(self, padded_size: int | None = None) -> torch.Tensor:
        """(V,) bool, True on visual rows: restrict sampling to codes."""
        m = torch.zeros(padded_size or self.size, dtype=torch.bool)
        m[self.visual_offset:self.special_offset] = True
        return m

    def text_mask(self, padded_size: int | None = None) -> torch.Tensor:
        """(V,) bool, True on text rows plus <eos> and <boi> (what text generation may emit)."""
        m = torch.zeros(padded_size or self.size, dtype=torch.bool)
        m[: self.text_size] = True
        m[self.eos] = m[self.boi] = True
        return m
