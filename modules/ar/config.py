"""ARConfig: one dataclass describing the unified decoder (litgpt style).

Presets via `ARConfig.from_name(name, **overrides)`: "tiny" (tests), "shapes-small" (the
quickstart, a few M parameters) and "qwen2.5-7b" (the LLM of Qwen2.5-VL-7B, NF §3.1:
28 layers, hidden 3584, 28 query / 4 KV heads, FFN 18944, text vocab 152064).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from modules.common.vocab import DEFAULT_TASK_TOKENS, UnifiedVocab


@dataclass
class ARConfig:
    name: str = "tiny"
    # ---- transformer (Qwen2 layout)
    n_layer: int = 2
    n_embd: int = 64
    n_head: int = 4
    n_query_groups: int = 2  # KV heads (GQA)
    intermediate_size: int = 128
    norm_eps: float = 1e-6
    attn_bias: bool = True  # Qwen2: biases on q/k/v, none on o
    tie_embeddings: bool = True  # Qwen2.5-0.5B..3B tie; 7B does not
    # ---- vocabulary (modules/common/vocab.py owns the layout)
    text_vocab_size: int = 256
    codebook_size: int = 64
    task_tokens: tuple[str, ...] = DEFAULT_TASK_TOKENS
    padded_vocab_multiple: int = 64
    # ---- visual input: code embeddings (tokenizer, Tensor[K, code_dim]) -> connector -> n_embd
    code_dim: int = 40  # CONTRACTS: concat of semantic (32) + pixel (8) code vectors
    connector: Literal["linear", "mlp"] = "linear"
    visual_inputs: Literal["residual", "accumulated"] = "residual"  # NF §3.3 vs VAR ablation
    upsample_mode: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    # ---- multiscale 3D RoPE (NF §3.2)
    rope_theta: float = 1_000_000.0
    rope_sections: tuple[int, int, int] | None = None  # frequency pairs per axis (t, row, col)
    rope_layout: Literal["alternating", "interleaved", "sectioned"] = "alternating"  # rope.py says why
    rope_C: float = 64.0  # spatial range [0, C]; unstated in NF, 64 = unit spacing at the 64x64 grid
    max_scales: int = 18  # NF: 18 scales at 1024 px
    block_size: int = 4096  # longest packed row accepted
    # ---- derived (filled in __post_init__)
    head_size: int = field(init=False)
    vocab_size: int = field(init=False)
    padded_vocab_size: int = field(init=False)

    def __post_init__(self):
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if self.n_head % self.n_query_groups:
            raise ValueError(f"n_head {self.n_head} is not divisible by n_query_groups {self.n_query_groups}")
        self.head_size = self.n_embd // self.n_head
        if self.head_size % 2:
            raise ValueError(f"head size {self.head_size} must be even for RoPE")
        pairs = self.head_size // 2
        if self.rope_sections is None:  # Qwen2.5-VL's mrope split 16/24/24 of 64 pairs, scaled
            t = pairs // 4
            self.rope_sections = (t, (pairs - t) // 2, pairs - t - (pairs - t) // 2)
        self.rope_sections = tuple(int(s) for s in self.rope_sections)
        if len(self.rope_sections) != 3 or sum(self.rope_sections) != pairs or min(self.rope_sections) < 0:
            raise ValueError(
                f"rope_sections {self.rope_sections} must be 3 non-negative counts summing to "
                f"head_size/2 = {pairs}"
            )
        self.task_tokens = tuple(self.task_tokens)
        self.vocab_size = self.vocab.size
        m = self.padded_vocab_multiple
        self.padded_vocab_size = int(math.ceil(self.vocab_size / m) * m)

    @property
    def vocab(self) -> UnifiedVocab:
        return UnifiedVocab(self.text_vocab_size, self.codebook_size, self.task_tokens)

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> "ARConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown ARConfig preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "name": name, **overrides})

    def estimate_params(self) -> int:
        d, f, L = self.n_embd, self.intermediate_size, self.n_layer
        kv = self.n_query_groups * self.head_size
        attn = d * d * 2 + 2 * d * kv + (d + 2 * kv if self.attn_bias else 0)
        block = attn + 3 * d * f + 2 * d
        emb = self.padded_vocab_size * d * (1 if self.tie_embeddings else 2)
        return L * block + emb + d


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layer=2, n_embd=64, n_head=4, n_query_groups=2, intermediate_size=128,
                 text_vocab_size=256, codebook_size=64, block_size=1024),
    # quickstart on Shapes: a few M params, byte text, small codebook; runs on a 2-core CPU
    "shapes-small": dict(n_layer=6, n_embd=256, n_head=8, n_query_groups=2, intermediate_size=704,
                         text_vocab_size=256, codebook_size=1024, block_size=2048),
    # Qwen2.5-7B / the LLM of Qwen2.5-VL-7B (config.json of the release); NF §3.1
    "qwen2.5-7b": dict(n_layer=28, n_embd=3584, n_head=28, n_query_groups=4, intermediate_size=18944,
                       norm_eps=1e-6, tie_embeddings=False, text_vocab_size=152064,
                       codebook_size=16384, rope_theta=1_000_000.0, rope_sections=(16, 24, 24),
                       connector="mlp", block_size=16384),
}
