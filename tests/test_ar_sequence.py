"""Unified sequence builder: layout, positions, blocks, targets, weights, residual inputs,
self-correction, packing isolation, condition dropout, bad input."""
import pytest
import torch
import torch.nn.functional as F

from modules.ar import tasks
from modules.ar.config import ARConfig
from modules.ar.model import ARDecoder
from modules.common.sequence import IGNORE, SequenceBuilder, collate, scale_input_features, split_scales
from modules.common.vocab import UnifiedVocab
from modules.common.scale_schedule import ScaleSchedule

V = UnifiedVocab(256, 16)
SCH = ScaleSchedule.square(3)  # 1x1, 2x2, 3x3


def _setup(**kw):
    g = torch.Generator().manual_seed(0)
    E = torch.randn(16, 4, generator=g)
    codes = [torch.randint(0, 16, grid, generator=g) for grid in SCH.grids]
    return SequenceBuilder(V, E, cond_dropout=0.0, **kw), E, codes


def test_t2i_layout_targets_weights_positions():
    b, E, codes = _setup()
    tok = b.build(tasks.t2i(V, [65, 66], SCH, codes))
    n = 3 + 1 + 4 + 9
    assert len(tok) == n
    assert tok.ids[:4].tolist() == [V.task("t2i"), 65, 66, V.boi]
    assert tok.block.tolist() == [0, 1, 2, 3] + [4] * 4 + [5] * 9
    # caption not trained, its last token predicts <boi>; <boi> predicts the 1x1 scale
    assert tok.target[:3].tolist() == [65, 66, V.boi] and tok.weight[:3].tolist() == [0, 0, 1]
    flat = torch.cat([c.reshape(-1) for c in codes])
    assert torch.equal(tok.target[3:], V.visual(flat))
    torch.testing.assert_close(tok.weight[3:], SCH.loss_weights(0.9))
    assert tok.pos[:4, 0].tolist() == [0, 1, 2, 3] and tok.pos[3].tolist() == [3, 3, 3]  # <boi> at p
    assert set(tok.pos[4:8, 0].tolist()) == {4.0} and set(tok.pos[8:, 0].tolist()) == {5.0}
    assert tok.scale.tolist() == [-1] * 3 + [0] + [1] * 4 + [2] * 9
    assert set(tok.nscales[3:].tolist()) == {3} and tok.vis_mask.sum() == 13


def test_alpha_zero_gives_uniform_vision_weights():
    b, _, codes = _setup(alpha=0.0)
    tok = b.build(tasks.t2i(V, [65], SCH, codes))
    assert set(tok.weight[2:].tolist()) == {1.0}


def test_residual_inputs_are_previous_scale_upsampled():
    b, E, codes = _setup()
    tok = b.build(tasks.t2i(V, [65], SCH, codes))
    feats = tok.vis[tok.vis_mask]
    up2 = E[codes[0]].permute(2, 0, 1)[None].expand(1, 4, 2, 2)  # 1x1 -> 2x2: constant
    torch.testing.assert_close(feats[:4], up2[0].flatten(1).T)
    up3 = F.interpolate(E[codes[1]].permute(2, 0, 1)[None], size=(3, 3), mode="bicubic", align_corners=False)
    torch.testing.assert_close(feats[4:], up3[0].flatten(1).T)


def test_accumulated_inputs_sum_previous_scales():
    _, E, codes = _setup()
    res = scale_input_features(E, codes, SCH, "residual")
    acc = scale_input_features(E, codes, SCH, "accumulated")
    torch.testing.assert_close(acc[0], res[0])  # first input block: only scale 1 so far
    assert not torch.allclose(acc[1], res[1])
    f_hat = sum(F.interpolate(E[c].permute(2, 0, 1)[None], size=(3, 3), mode="bicubic", align_corners=False)
                for c in codes[:2])
    torch.testing.assert_close(acc[1], f_hat[0].flatten(1).T)


def test_self_correction_inputs_corrupted_targets_top1():
    b, E, codes = _setup()
    corrupted = [(c + 1) % 16 for c in codes]
    tok = b.build(tasks.t2i(V, [65], SCH, codes, corrupted))
    clean = b.build(tasks.t2i(V, [65], SCH, codes))
    assert torch.equal(tok.target, clean.target)
    expect = scale_input_features(E, corrupted, SCH)
    torch.testing.assert_close(tok.vis[tok.vis_mask], torch.cat(expect))


def test_i2t_closing_block_eoi_and_answer():
    b, E, codes = _setup()
    tok = b.build(tasks.i2t(V, SCH, codes, [70, 71]))
    # <i2t> <boi> 2x2 3x3 closing(3x3) <eoi> 70 71 <eos>
    assert len(tok) == 1 + 1 + 4 + 9 + 9 + 1 + 3
    eoi = int((tok.ids == V.eoi).nonzero())
    assert tok.target[eoi:].tolist() == [70, 71, V.eos, IGNORE] and tok.weight[eoi:].tolist() == [1, 1, 1, 0]
    assert tok.weight[:eoi].sum() == 0  # the image is context only
    torch.testing.assert_close(tok.vis[15:24], E[codes[2]].reshape(9, 4))  # finest codes, own grid
    assert tok.pos[15, 0] == 1 + 3 and tok.pos[eoi, 0] == 1 + 4 and tok.pos[eoi + 1, 0] == 1 + 5
    assert tok.scale[15] == b.max_scales


def test_edit_and_interleaved_layouts():
    b, _, codes = _setup()
    ed = b.build(tasks.edit(V, SCH, codes, [80, 81], SCH, codes))
    assert ed.ids.tolist().count(V.boi) == 2 and ed.ids.tolist().count(V.eoi) == 1
    assert int((ed.weight > 0).sum()) == 1 + 14  # instruction's end predicts <boi>; target image
    il = b.build(tasks.interleaved(V, [[65, 66], (SCH, codes), [67], (SCH, codes)]))
    assert il.ids.tolist().count(V.eoi) == 1  # the last image is not closed
    eoi = int((il.ids == V.eoi).nonzero())
    assert il.target[eoi] == 67 and il.weight[eoi] == 1
    assert torch.equal(il.block, torch.sort(il.block).values)


def test_condition_dropout_removes_caption_at_rate():
    b, _, codes = _setup()
    b.cond_dropout = 0.1
    g = torch.Generator().manual_seed(1)
    lens = [len(b.build(tasks.t2i(V, [65, 66, 67], SCH, codes), generator=g)) for _ in range(2000)]
    dropped = sum(n == 1 + 14 for n in lens) / len(lens)
    assert 0.08 < dropped < 0.12 and set(lens) == {15, 18}
    tok = b.build(tasks.t2i(V, [65, 66, 67], SCH, codes), drop_cond=True)
    assert tok.ids[:2].tolist() == [V.task("t2i"), V.boi] and tok.target[0] == V.boi


def test_packed_samples_do_not_see_each_other():
    torch.manual_seed(0)
    cfg = ARConfig.from_name("tiny", codebook_size=16, code_dim=4)
    m = ARDecoder(cfg).eval()
    b = SequenceBuilder(cfg.vocab, torch.randn(16, 4), cond_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    samples = [b.build(tasks.t2i(cfg.vocab, [65 + i] * (i + 1), SCH, [torch.randint(0, 16, s, generator=g)
                                                                      for s in SCH.grids])) for i in range(3)]
    packed = collate(samples, row_len=64, pad_to_multiple=16, pad_id=cfg.vocab.pad)
    assert packed.ids.shape == (1, 64) and packed.sample.max() == 2
    with torch.no_grad():
        out = m(**packed.model_inputs(), mask=packed.mask())[0]
        o = 0
        for s in samples:
            one = collate([s], pad_id=cfg.vocab.pad)
            ref = m(**one.model_inputs(), mask=one.mask())[0]
            torch.testing.assert_close(out[o:o + len(s)], ref, atol=1e-5, rtol=1e-5)
            o += len(s)
        assert not torch.isnan(out).any()


def test_bad_input_errors_name_values():
    b, _, codes = _setup(max_len=10)
    with pytest.raises(ValueError, match="16 tokens .* maximum 10"):
        b.build(tasks.t2i(V, [65], SCH, codes))
    with pytest.raises(ValueError, match="13 codes .* 14 tokens"):
        split_scales(torch.zeros(13), SCH)


def test_build_index_has_the_build_layout_for_every_task():
    """build_index (no features, cached image layout) == build in every field but vis and the
    image tokens' weights; each ImageRef points at its <boi> block and carries the input codes."""
    b, _, codes = _setup()
    corrupted = [(c + 3) % 16 for c in codes]
    layouts = {"t2i": tasks.t2i(V, [65, 66], SCH, codes, corrupted), "i2t": tasks.i2t(V, SCH, codes, [70, 71]),
               "edit": tasks.edit(V, SCH, codes, [80, 81], SCH, codes, corrupted),
               "interleaved": tasks.interleaved(V, [[65, 66], (SCH, codes), [67], (SCH, codes)])}
    for name, segs in layouts.items():
        ref = b.build(segs)
        tok, refs = b.build_index(segs)
        image = torch.zeros(len(ref), dtype=torch.bool)
        for r in refs:
            n = SCH.token_count + (SCH.areas[-1] if r.close else 0)
            assert tok.ids[r.start] == V.boi and not image[r.start:r.start + n].any(), name
            image[r.start:r.start + n] = True
        assert int(image.sum()) == int((ref.scale >= 0).sum()), name
        for f in ("ids", "pos", "block", "scale", "nscales", "target", "vis_mask"):
            assert torch.equal(getattr(tok, f), getattr(ref, f)), (name, f)
        assert torch.equal(tok.weight[~image], ref.weight[~image]) and tok.weight[image].sum() == 0, name
        assert tok.vis.shape == (len(ref), 0)
    assert torch.equal(refs[0].codes, torch.cat([c.reshape(-1) for c in codes]))
    _, (src, tgt) = b.build_index(layouts["edit"])
    assert (src.close, src.loss, tgt.close, tgt.loss) == (True, False, False, True)
    assert torch.equal(tgt.codes, torch.cat([c.reshape(-1) for c in corrupted]))  # self-corrected inputs
