"""The block-causal attention rule (NF §3; VAR's block-causal training mask).

A query may attend to a key iff both belong to the same packed sample and the key's block is
not later than the query's block:

    allowed(q, k) = sample[q] == sample[k]  and  block[k] <= block[q]

A text token is its own block (so text is plainly causal), all tokens of one image scale share a
block (they see each other both ways), packed samples never see each other. Block ids must be
non-decreasing along a sample (modules/common/sequence.py assigns them). Padding carries sample id
-1 and its own blocks, so a padded query still sees itself (no all-masked row, no NaN).

One rule, two expressions: a dense SDPA boolean mask (CPU, tests, short rows) and a
flex_attention `mask_mod` / BlockMask (CUDA, compiled; rows padded to a multiple of 128).
"""
from __future__ import annotations

import torch

FLEX_BLOCK = 128  # flex_attention's tile: rows are padded to a multiple of this


def allowed(block_q, sample_q, block_k, sample_k):
    """The rule on broadcastable tensors (shared by both expressions)."""
    return (sample_q == sample_k) & (block_k <= block_q)


def block_causal_mask(block_BL: torch.Tensor, sample_BL: torch.Tensor,
                      block_k_BL: torch.Tensor | None = None, sample_k_BL: torch.Tensor | None = None) -> torch.Tensor:
    """Dense boolean mask (B, 1, Lq, Lk), True = attend (torch SDPA convention).

    Keys default to the queries; pass the cache's key ids to mask a chunk against a KV cache."""
    block_k_BL = block_BL if block_k_BL is None else block_k_BL
    sample_k_BL = sample_BL if sample_k_BL is None else sample_k_BL
    m = allowed(block_BL[:, :, None], sample_BL[:, :, None], block_k_BL[:, None, :], sample_k_BL[:, None, :])
    return m[:, None]


def mask_mod_for(block_BL: torch.Tensor, sample_BL: torch.Tensor):
    """flex_attention mask_mod(b, h, q_idx, kv_idx) for the same rule (indices into the row)."""

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(block_BL[b, q_idx], sample_BL[b, q_idx], block_BL[b, kv_idx], sample_BL[b, kv_idx])

    return mask_mod


def pad_ids(block_BL: torch.Tensor, sample_BL: torch.Tensor, multiple: int = FLEX_BLOCK):
    """Pad block/sample ids on the right to a multiple of `multiple` (padding = sample -1,
    one block per padded token). Returns (block, sample, original length)."""
    B, L = block_BL.shape
    Lp = -(-L // multiple) * multiple
    if Lp == L:
        return block_BL, sample_BL, L
    start = int(block_BL.max()) + 1 if block_BL.numel() else 0
    pad_blocks = torch.arange(start, start + Lp - L, device=block_BL.device).expand(B, -1)
    return (torch.cat([block_BL, pad_blocks], 1),
            torch.cat([sample_BL, sample_BL.new_full((B, Lp - L), -1)], 1), L)


def flex_block_mask(block_BL: torch.Tensor, sample_BL: torch.Tensor, compile: bool = True):
    """BlockMask for `torch.nn.attention.flex_attention` (CUDA path). Rows must already be
    padded to a multiple of 128 (`pad_ids`, or the sequence collate's pad_to_multiple)."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, L = block_BL.shape
    if L % FLEX_BLOCK:
        raise ValueError(f"flex_attention rows must be a multiple of {FLEX_BLOCK} tokens, got {L}; "
                         "collate with pad_to_multiple=128 or call pad_ids first")
    return create_block_mask(mask_mod_for(block_BL, sample_BL), B, None, L, L,
                             device=block_BL.device, _compile=compile)
