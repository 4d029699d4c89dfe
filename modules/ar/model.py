"""The unified decoder: a Qwen2-style transformer over text + visual tokens (NF §3.1).

Qwen2 layout (RMSNorm, SwiGLU MLP, grouped-query attention with q/k/v biases, untied or tied
head); module names follow HF's (`self_attn.q_proj`, `mlp.gate_proj`, `input_layernorm`) so
Qwen2.5 weights map one to one (modules/ar/qwen_weights.py). NextFlow additions:
  - visual input tokens are not table lookups: their features (code embeddings of the tokenizer,
    already upsampled, Tensor[..., code_dim]: batched on the device by
    `IndexBatch.materialize` in training, per sample by `SequenceBuilder` in the sampler) go
    through a trained connector, initialised from the codebook (`init_visual_from_codebook`);
  - multiscale 3D RoPE over explicit positions (t, row, col) (modules/common/rope.py);
  - a learnable scale embedding and a sinusoidal number-of-scales embedding on image tokens;
  - block-causal attention: `mask` is a dense bool (B, 1, Lq, Lk) tensor (SDPA), a flex
    BlockMask (CUDA), "causal" (plain causal, baseline / parity) or None (attend to everything:
    the sampler's one-block chunk on top of a KV cache).

Sampler interface: `forward(ids, pos, ..., mask=None, cache=KVCache())` runs a chunk of new
tokens at explicit positions on top of the cached keys/values and appends to the cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from modules.ar.config import ARConfig
from modules.common.rope import MultiScaleRoPE, NumScalesEmbedding, ScaleEmbedding, apply_rope

_flex_compiled = None


def _flex_attention(q, k, v, block_mask):
    """flex_attention, compiled once (only compiled flex is fused; CUDA path)."""
    global _flex_compiled
    if _flex_compiled is None:
        from torch.nn.attention.flex_attention import flex_attention
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    return _flex_compiled(q, k, v, block_mask=block_mask, enable_gqa=True)


class KVCache:
    """Per-layer keys/values (B, H_kv, L, d) appended chunk by chunk; `truncate` rolls back."""

    def __init__(self):
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []

    def __len__(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    def update(self, layer: int, k_BHLd: torch.Tensor, v_BHLd: torch.Tensor):
        if layer == len(self.k):
            self.k.append(k_BHLd)
            self.v.append(v_BHLd)
        else:
            self.k[layer] = torch.cat([self.k[layer], k_BHLd], 2)
            self.v[layer] = torch.cat([self.v[layer], v_BHLd], 2)
        return self.k[layer], self.v[layer]

    def truncate(self, length: int) -> None:
        self.k = [k[:, :, :length] for k in self.k]
        self.v = [v[:, :, :length] for v in self.v]

    def repeat(self, n: int) -> "KVCache":
        """Batch repeated n times (e.g. conditional + unconditional halves share a prefix)."""
        out = KVCache()
        out.k = [k.repeat(n, 1, 1, 1) for k in self.k]
        out.v = [v.repeat(n, 1, 1, 1) for v in self.v]
        return out


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()  # Qwen2: normalise in fp32, scale in the input dtype
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def _dense_attention(q, k, v, **kw):
    """SDPA with grouped-query heads. On the CPU, bf16 q/k/v (autocast, `trainer.precision: bf16-mixed`) are
    attended in fp32: the CPU flash kernel's bf16 backward is slower than its fp32 one, while the
    projections around it gain from bf16 (`python main.py bench --what train_step` prints both)."""
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), enable_gqa=True, **kw).to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)


class Attention(nn.Module):
    def __init__(self, c: ARConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = c.n_head, c.n_query_groups, c.head_size
        self.q_proj = nn.Linear(c.n_embd, c.n_head * c.head_size, bias=c.attn_bias)
        self.k_proj = nn.Linear(c.n_embd, c.n_query_groups * c.head_size, bias=c.attn_bias)
        self.v_proj = nn.Linear(c.n_embd, c.n_query_groups * c.head_size, bias=c.attn_bias)
        self.o_proj = nn.Linear(c.n_head * c.head_size, c.n_embd, bias=False)

    def forward(self, x_BLC, cos, sin, mask, cache: KVCache | None, layer: int):
        B, L, _ = x_BLC.shape
        q = self.q_proj(x_BLC).view(B, L, self.n_head, self.hd).transpose(1, 2)
        k = self.k_proj(x_BLC).view(B, L, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x_BLC).view(B, L, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if mask is None or isinstance(mask, torch.Tensor):
            y = _dense_attention(q, k, v, attn_mask=mask)
        elif isinstance(mask, str) and mask == "causal":
            if cache is not None and k.shape[2] != L:
                raise ValueError("mask='causal' cannot be used on top of a non-empty KV cache; pass a bool mask")
            y = _dense_attention(q, k, v, is_causal=True)
        else:  # flex_attention BlockMask
            y = _flex_attention(q, k, v, mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, self.n_head * self.hd))


class MLP(nn.Module):
    def __init__(self, c: ARConfig):
        super().__init__()
        self.gate_proj = nn.Linear(c.n_embd, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.n_embd, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.n_embd, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class Block(nn.Module):
    def __init__(self, c: ARConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(c.n_embd, c.norm_eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.n_embd, c.norm_eps)
        self.mlp = MLP(c)

    def forward(self, x, cos, sin, mask, cache, layer):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer)
        return x + self.mlp(self.post_attention_layernorm(x))


class Connector(nn.Module):
    """Code embedding (code_dim) -> model width. "mlp" adds a zero-initialised residual MLP, so
    at initialisation both kinds are the linear map set by `init_visual_from_codebook`."""

    def __init__(self, code_dim: int, dim: int, kind: str):
        super().__init__()
        self.proj = nn.Linear(code_dim, dim, bias=False)
        self.mlp = None
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, dim))
            nn.init.zeros_(self.mlp[2].weight)
            nn.init.zeros_(self.mlp[2].bias)

    def forward(self, e):
        x = self.proj(e)
        return x if self.mlp is None else x + self.mlp(x)


class ARDecoder(nn.Module):
    def __init__(self, config: ARConfig):
        super().__init__()
        c = self.config = config
        self.wte = nn.Embedding(c.padded_vocab_size, c.n_embd)
        self.connector = Connector(c.code_dim, c.n_embd, c.connector)
        self.scale_emb = ScaleEmbedding(c.max_scales, c.n_embd)
        self.nscales_emb = NumScalesEmbedding(c.n_embd)
        self.rope = MultiScaleRoPE(c.head_size, c.rope_sections, c.rope_theta, c.rope_layout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.n_embd, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.n_embd, c.padded_vocab_size, bias=False)
        # tokenizer code embeddings (K, code_dim): fixed, saved with the model for the sampler
        self.register_buffer("code_emb", torch.zeros(c.codebook_size, c.code_dim))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)  # Qwen2 initializer_range
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ head
    @property
    def head_weight_full(self) -> torch.Tensor:
        return self.wte.weight if self.lm_head is None else self.lm_head.weight

    def head_weight(self) -> torch.Tensor:
        """(vocab_size, C): the single output head over text + visual + specials, without the
        padding rows (which never enter a softmax)."""
        return self.head_weight_full[: self.config.vocab_size]

    @torch.no_grad()
    def init_visual_from_codebook(self, code_emb_KD: torch.Tensor) -> None:
        """Store the tokenizer's code embeddings, set the connector to a random orthogonal map
        scaled so connector(E) matches the text embeddings' spread, and initialise the head's
        visual rows to connector(E) (NF §3.1: visual rows from the codebook via a connector)."""
        c = self.config
        if tuple(code_emb_KD.shape) != (c.codebook_size, c.code_dim):
            raise ValueError(f"code embeddings have shape {tuple(code_emb_KD.shape)} but the AR config expects "
                             f"(codebook_size, code_dim) = ({c.codebook_size}, {c.code_dim}); set codebook_size/"
                             "code_dim from the tokenizer checkpoint")
        E = code_emb_KD.to(self.code_emb)
        self.code_emb.copy_(E)
        W = torch.empty(c.n_embd, c.code_dim)
        nn.init.orthogonal_(W)
        proj = E.float().cpu() @ W.T
        target = self.wte.weight[: c.text_vocab_size].float().std()
        W *= target / proj.std().clamp_min(1e-8)
        self.connector.proj.weight.copy_(W.to(self.connector.proj.weight))
        v0, v1 = c.vocab.visual_offset, c.vocab.special_offset
        self.head_weight_full[v0:v1].copy_(self.connector(E.to(W.dtype).to(self.code_emb.device)))

    # ------------------------------------------------------------------ forward
    def embed(self, ids_BL, vis_BLD=None, vis_mask_BL=None, scale_BL=None, nscales_BL=None) -> torch.Tensor:
        x = self.wte(ids_BL.clamp(min=0))
        if vis_mask_BL is not None and bool(vis_mask_BL.any()):
            feats = self.connector(vis_BLD[vis_mask_BL].to(x.dtype))
            x = x.masked_scatter(vis_mask_BL[..., None], feats.to(x.dtype))
        if scale_BL is not None:
            x = x + self.scale_emb(scale_BL).to(x.dtype)
        if nscales_BL is not None:
            x = x + self.nscales_emb(nscales_BL).to(x.dtype)
        return x

    def forward(self, ids_BL, pos_BL3, *, vis_BLD=None, vis_mask_BL=None, scale_BL=None, nscales_BL=None,
                mask=None, cache: KVCache | None = None, return_hidden: bool = False) -> torch.Tensor:
        """Logits (B, L, vocab_size) — or final hidden states (B, L, C) for the fused loss."""
        x = self.embed(ids_BL, vis_BLD, vis_mask_BL, scale_BL, nscales_BL)
        cos, sin = self.rope(pos_BL3)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, mask, cache, i)
        h = self.norm(x)
        return h if return_hidden else F.linear(h, self.head_weight())
