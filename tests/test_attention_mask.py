"""The block-causal rule vs a naive construction, and its flex_attention expression."""
import pytest
import torch

from modules.common.attention_mask import block_causal_mask, mask_mod_for, pad_ids


def naive_mask(kinds):
    """kinds: per packed sample, a list of ("t", 1) text tokens and ("i", n) image scales."""
    owners = []  # (sample, position of its block's first token, block length)
    for si, sample in enumerate(kinds):
        for kind, n in sample:
            start = len(owners)
            owners += [(si, start, n)] * n
    L = len(owners)
    m = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        sq, bq, nq = owners[q]
        for k in range(L):
            sk, bk, _ = owners[k]
            m[q, k] = sq == sk and k < bq + nq  # same sample, key up to the end of q's block
    return m


def ids_for(kinds):
    block, sample, b = [], [], 0
    for si, s in enumerate(kinds):
        for _, n in s:
            block += [b] * n
            sample += [si] * n
            b += 1
    return torch.tensor([block]), torch.tensor([sample])


KINDS = [[("t", 1)] * 3 + [("i", 1), ("i", 4), ("i", 9)] + [("t", 1)] * 2,
         [("t", 1), ("i", 1), ("i", 4)],
         [("t", 1)] * 4]


def test_dense_mask_equals_naive():
    block, sample = ids_for(KINDS)
    got = block_causal_mask(block, sample)[0, 0]
    assert torch.equal(got, naive_mask(KINDS))
    assert got.sum(-1).min() >= 1  # no empty row


def test_text_only_is_causal():
    block = torch.arange(9)[None]
    got = block_causal_mask(block, torch.zeros_like(block))[0, 0]
    assert torch.equal(got, torch.ones(9, 9, dtype=torch.bool).tril())


def test_chunk_against_cache_keys():
    block, sample = ids_for(KINDS[:1])
    full = block_causal_mask(block, sample)[0, 0]
    q = slice(8, 17)  # the 3x3 scale as a chunk on top of the cached prefix
    part = block_causal_mask(block[:, q], sample[:, q], block, sample)[0, 0]
    assert torch.equal(part, full[q])
    assert part[:, :17].all() and not part[:, 17:].any()  # one new block on a cache: it sees everything -> mask=None


def test_flex_mask_mod_equals_dense_on_padded_grid():
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch.nn.attention.flex_attention import create_mask

    block, sample, L = pad_ids(*ids_for(KINDS), multiple=128)
    assert block.shape[1] == 128 and L == sum(n for s in KINDS for _, n in s)
    dense = block_causal_mask(block, sample)
    flex = create_mask(mask_mod_for(block, sample), 1, None, 128, 128, device="cpu")
    assert torch.equal(flex, dense)
    q, k = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    assert torch.equal(mask_mod_for(block, sample)(0, 0, q, k), dense[0, 0])
    assert dense[0, 0, L:, :L].sum() == 0 and dense[0, 0, L:, L:].diagonal().all()  # padding isolated


def test_flex_attention_with_block_mask_equals_sdpa_dense():
    """The CUDA expression end to end (eager forward; CPU flex has no backward)."""
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    import warnings

    from modules.common.attention_mask import flex_block_mask

    block, sample, _ = pad_ids(*ids_for(KINDS), multiple=128)
    bm = flex_block_mask(block, sample, compile=False)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 128, 16, generator=g) for h in (4, 2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = flex.flex_attention(q, k, v, block_mask=bm, enable_gqa=True)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=block_causal_mask(block, sample),
                                                           enable_gqa=True)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of 128 tokens, got 29"):
        flex_block_mask(*ids_for(KINDS))
