"""Multiscale 3D RoPE: text-only == 1-D RoPE; grid-size invariance of spatial positions;
scale embeddings."""
import math

import pytest
import torch

from modules.common.rope import (MultiScaleRoPE, NumScalesEmbedding, ScaleEmbedding, apply_rope,
                                 image_positions, text_positions)


def rope_1d_reference(x_BHLd, theta):
    """Ordinary RoPE written out per pair, rotate-half layout (pair f = dims f and f + d/2)."""
    d = x_BHLd.shape[-1]
    out = x_BHLd.clone()
    for t in range(x_BHLd.shape[2]):
        for f in range(d // 2):
            a = t * theta ** (-2 * f / d)
            x1, x2 = x_BHLd[:, :, t, f], x_BHLd[:, :, t, f + d // 2]
            out[:, :, t, f] = x1 * math.cos(a) - x2 * math.sin(a)
            out[:, :, t, f + d // 2] = x2 * math.cos(a) + x1 * math.sin(a)
    return out


@pytest.mark.parametrize("sections", [(4, 6, 6), (16, 0, 0), (0, 8, 8), (2, 2, 12)])
def test_text_only_equals_1d_rope(sections):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 32, dtype=torch.float64)
    rope = MultiScaleRoPE(32, sections, theta=10_000.0)
    cos, sin = rope(text_positions(11, start=5)[None].expand(2, -1, -1))
    ref = rope_1d_reference(torch.cat([torch.zeros(2, 3, 5, 32, dtype=x.dtype), x], 2), 10_000.0)[:, :, 5:]
    torch.testing.assert_close(apply_rope(x, cos.double(), sin.double()), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("C", [1.0, 64.0])
def test_same_relative_location_same_position_at_every_grid(C):
    # the centre cell (i + 0.5)/H = 0.5 of odd square grids, and cell-corner-aligned points
    for side in (1, 3, 5, 7, 33):
        pos = image_positions(side, side, t=0, C=C).view(side, side, 3)
        torch.testing.assert_close(pos[side // 2, side // 2, 1:], torch.tensor([C / 2, C / 2]))
    for small, big in [(2, 4), (4, 16), (8, 64), (3, 12)]:
        r = big // small  # cell (i, j) of the small grid = the centre of r×r cells of the big one
        ps = image_positions(small, small, 0, C).view(small, small, 3)[..., 1:]
        pb = image_positions(big, big, 0, C).view(small, r, small, r, 3)[..., 1:].mean((1, 3))
        torch.testing.assert_close(ps, pb)
        assert float(pb.max()) < C and float(pb.min()) > 0  # all in [0, C]


def test_non_square_grid_uses_sqrt_area_and_scale_axis():
    pos = image_positions(2, 8, t=7, C=64.0)
    step = 64.0 / 4.0  # C / sqrt(2·8)
    assert pos.shape == (16, 3)
    torch.testing.assert_close(pos[0], torch.tensor([7.0, 0.5 * step, 0.5 * step]))
    torch.testing.assert_close(pos[-1], torch.tensor([7.0, 1.5 * step, 7.5 * step]))


def test_sections_must_fit_head():
    with pytest.raises(ValueError, match="sum to head_size/2 = 16"):
        MultiScaleRoPE(32, (4, 4, 4), 1e4)


@torch.no_grad()
def test_scale_embeddings_start_neutral_and_ignore_text():
    se, ne = ScaleEmbedding(18, 8), NumScalesEmbedding(8)
    s = torch.tensor([[-1, 0, 3, 18]])
    assert float(se(s).abs().sum()) == 0 and float(ne(torch.tensor([[0, 12]])).abs().sum()) == 0
    se.table.normal_()
    ne.proj.weight.normal_()
    assert float(se(s)[0, 0].abs().sum()) == 0 and float(se(s)[0, 1:].abs().sum()) > 0
    out = ne(torch.tensor([[0, 12, 16]]))
    assert float(out[0, 0].abs().sum()) == 0 and not torch.allclose(out[0, 1], out[0, 2])
