"""Multiscale 3D RoPE: text-only == 1-D RoPE in every layout; grid-size invariance of spatial
positions; both spatial axes distinguishable on every grid of NF's 1024 px schedules and the Shapes
schedules, and in the model (the 2x2-block probe); the old sectioned layout fails both; scale
embeddings."""
import math

import pytest
import torch

from modules.ar import tasks
from modules.ar.config import ARConfig
from modules.ar.model import ARDecoder
from modules.common.rope import (ROPE_LAYOUTS, MultiScaleRoPE, NumScalesEmbedding, ScaleEmbedding, apply_rope,
                                 image_positions, rope_axes, text_positions)
from modules.common.scale_schedule import ScaleSchedule, aspect_ratio_family
from modules.common.sequence import SequenceBuilder, collate


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


@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
@pytest.mark.parametrize("sections", [(4, 6, 6), (16, 0, 0), (0, 8, 8), (2, 2, 12)])
def test_text_only_equals_1d_rope(sections, layout):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 11, 32, dtype=torch.float64)
    rope = MultiScaleRoPE(32, sections, theta=10_000.0, layout=layout)
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


def test_axis_layouts():
    # Qwen3-VL's interleaved rule (sections 24/20/20 of 64 pairs): T H W T H W ..., T from pair 60 on
    qwen3 = rope_axes((24, 20, 20), "interleaved")
    assert qwen3[:6].tolist() == [0, 1, 2, 0, 1, 2] and qwen3[60:].tolist() == [0, 0, 0, 0]
    assert qwen3.bincount().tolist() == [24, 20, 20]
    alt = rope_axes((24, 20, 20), "alternating")  # row and col swap in odd triples; same counts
    assert alt[:9].tolist() == [0, 1, 2, 0, 2, 1, 0, 1, 2] and alt.bincount().tolist() == [24, 20, 20]
    assert rope_axes((4, 6, 6), "sectioned").tolist() == [0] * 4 + [1] * 6 + [2] * 6
    with pytest.raises(ValueError, match="'diagonal' is not one of"):
        rope_axes((4, 6, 6), "diagonal")


# ---------------------------------------------------------------- spatial axes distinguishable
EPS = 0.1  # rad: the least largest rotation difference between neighbouring cells, per axis


def schedule_grids() -> list[tuple[int, int]]:
    """Every grid of NF's 1024 px schedules (patch 16, all aspect ratios of the family) and of the
    Shapes schedules (64, 128, 256 px at patch 8)."""
    grids = {g for a in aspect_ratio_family() for g in ScaleSchedule.for_resolution(1024, 16, a).grids}
    grids |= {g for px in (64, 128, 256) for g in ScaleSchedule.for_resolution(px, 8).grids}
    return sorted(grids)


def neighbour_angle_gaps(rope: MultiScaleRoPE, h: int, w: int, C: float = 64.0) -> tuple[float, float]:
    """(row, col): over all vertically (resp. horizontally) neighbouring cells of an h×w grid, the
    least of the largest |rotation angle difference| (wrapped to [-π, π]) over the head's pairs.
    Only pairs of the axis that changes differ, so this is the max over that axis's pairs."""
    pos = image_positions(h, w, t=3, C=C).view(h, w, 3)
    cos, sin = rope(pos)
    ang = torch.atan2(sin, cos)[..., : cos.shape[-1] // 2].double()  # (h, w, d/2)

    def gap(d):
        return float(torch.remainder(d + math.pi, 2 * math.pi).sub(math.pi).abs().amax(-1).min()) if d.numel() else math.inf

    return gap(ang[1:] - ang[:-1]), gap(ang[:, 1:] - ang[:, :-1])


HEADS = {"shapes-small": ARConfig.from_name("shapes-small"), "qwen2.5-7b": ARConfig.from_name("qwen2.5-7b")}


@pytest.mark.parametrize("preset", sorted(HEADS))
@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
def test_neighbouring_cells_differ_on_each_axis(preset, layout):
    c = HEADS[preset]
    rope = MultiScaleRoPE(c.head_size, c.rope_sections, c.rope_theta, layout)
    grids = schedule_grids()
    assert len(grids) > 400 and (64, 64) in grids and (32, 32) in grids and (32, 128) in grids
    gaps = {g: neighbour_angle_gaps(rope, *g, C=c.rope_C) for g in grids}
    row = min(r for r, _ in gaps.values())
    col = min(k for _, k in gaps.values())
    if layout == "sectioned":  # the bug: columns get only the lowest frequencies
        assert col < 1e-3 < EPS and row > col * 100
    else:
        assert row >= EPS and col >= EPS, (row, col)


def block_probe(layout: str, seed: int = 0, qk_scale: float = 8.0) -> tuple[float, float]:
    """(left-vs-right, top-vs-bottom) relative hidden-state distance of the four tokens of the
    2×2 block in a t2i sequence (shapes-small, random weights, q/k scaled up so attention is
    position-sensitive). Their inputs are identical (scale 1's single code upsampled), so only
    RoPE tells them apart."""
    torch.manual_seed(seed)
    c = ARConfig.from_name("shapes-small", rope_layout=layout)
    m = ARDecoder(c)
    with torch.no_grad():
        for b in m.blocks:
            b.self_attn.q_proj.weight.mul_(qk_scale)
            b.self_attn.k_proj.weight.mul_(qk_scale)
    m.init_visual_from_codebook(torch.nn.functional.normalize(torch.randn(c.codebook_size, c.code_dim), dim=-1))
    sch = ScaleSchedule.square(8)
    codes = [torch.randint(0, c.codebook_size, g) for g in sch.grids]
    builder = SequenceBuilder(c.vocab, m.code_emb, rope_C=c.rope_C, max_scales=c.max_scales, cond_dropout=0.0)
    tok = collate([builder.build(tasks.t2i(c.vocab, list(b"a red circle left of a blue square"), sch, codes))],
                  pad_id=c.vocab.pad)
    with torch.no_grad():
        h = m.eval()(**tok.model_inputs(), mask=tok.mask(), return_hidden=True)[0]
    idx = ((tok.scale[0] == 1) & tok.vis_mask[0]).nonzero().flatten()  # row-major (0,0) (0,1) (1,0) (1,1)
    assert len(idx) == 4 and torch.allclose(tok.vis[0, idx], tok.vis[0, idx[:1]].expand(4, -1), atol=1e-6)
    tok.vis[0, idx] = tok.vis[0, idx[0]].clone()  # exactly equal (bicubic 1x1 -> 2x2 differs by rounding only)
    h = h[idx].double()
    scale = h.norm(dim=-1).mean()

    def dist(a, b):
        return float((h[a] - h[b]).norm() / scale)

    return (dist(0, 1) + dist(2, 3)) / 2, (dist(0, 2) + dist(1, 3)) / 2


@pytest.mark.parametrize("layout", ROPE_LAYOUTS)
def test_block_probe_left_right_vs_top_bottom(layout):
    lr, tb = block_probe(layout)
    assert tb > 0.05  # attention is position-sensitive at all
    if layout == "sectioned":
        assert lr < 0.05 * tb  # nearly blind to columns
    else:
        assert lr >= 0.3 * tb, (lr, tb)


def test_default_layout_is_alternating():
    assert ARConfig().rope_layout == "alternating"
    assert ARDecoder(ARConfig.from_name("tiny")).rope.axis.tolist() == rope_axes(ARConfig().rope_sections).tolist()
