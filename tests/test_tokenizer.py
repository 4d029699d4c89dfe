"""Dual-codebook multi-scale quantiser and tokenizer: unit tests on random nets (no training)."""
import pytest
import torch

from _tokenizer_data import tiny_config
from callbacks.scale_dropping import ScaleDropping
from modules.common.scale_schedule import ScaleSchedule
from modules.tokenizer import DualCodebookQuantizer, MultiScaleTokenizer, codebook_stats


@pytest.mark.parametrize("pixel_weight,use_semantic", [(1.0, True), (0.3, True), (1.0, False)])
def test_shared_index_argmin_equals_brute_force(pixel_weight, use_semantic):
    torch.manual_seed(0)
    q = DualCodebookQuantizer(codebook_size=97, sem_dim=32, pix_dim=8, pixel_weight=pixel_weight)
    z_sem, z_pix = torch.randn(50, 32) * 3, torch.randn(50, 8) * 0.2
    fast = q.distances(z_sem if use_semantic else None, z_pix).argmin(1)
    e_sem, e_pix = q.sem_codes.detach(), q.pix_codes.detach()
    brute = []
    for n in range(50):  # literal definition: squared L2 between l2-normalised vectors, summed
        best, best_d = -1, float("inf")
        for i in range(97):
            d_pix = ((z_pix[n] / z_pix[n].norm() - e_pix[i] / e_pix[i].norm()) ** 2).sum()
            d_sem = ((z_sem[n] / z_sem[n].norm() - e_sem[i] / e_sem[i].norm()) ** 2).sum()
            d = (d_sem if use_semantic else 0.0) + pixel_weight * d_pix
            if d < best_d:
                best, best_d = i, float(d)
        brute.append(best)
    assert fast.tolist() == brute


def test_quantiser_runs_in_fp32_under_autocast():
    q = DualCodebookQuantizer(codebook_size=64)
    s = ScaleSchedule.for_grid(4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(torch.randn(2, 32, 4, 4).bfloat16(), torch.randn(2, 8, 4, 4).bfloat16(), s)
    assert out.hat_pix.dtype == torch.float32 and out.vq_loss.dtype == torch.float32


def test_codebook_stats_usage_and_perplexity():
    usage, ppl = codebook_stats(torch.tensor([5, 5, 0, 0]))
    assert usage == pytest.approx(0.5) and ppl == pytest.approx(2.0)
    usage, ppl = codebook_stats(torch.ones(16))
    assert usage == 1.0 and ppl == pytest.approx(16.0)


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    q = DualCodebookQuantizer(codebook_size=256).train()
    s = ScaleSchedule.for_grid(8, 8)
    f_sem, f_pix = torch.randn(4, 32, 8, 8), torch.randn(4, 8, 8, 8) + 3.0  # one region of the sphere
    q.usage_decay = 0.0
    q(f_sem, f_pix, s)
    dead_before = int((q.usage_ema == 0).sum())
    restarted = q.restart_dead_codes(threshold=0.03, generator=torch.Generator().manual_seed(0))
    q(f_sem, f_pix, s)
    dead_after = int((q.usage_ema == 0).sum())
    assert restarted == dead_before > 100
    assert dead_after < dead_before - 50  # restarted codes sit on real residuals and get used


def test_self_correct_fraction_and_determinism():
    torch.manual_seed(0)
    q = DualCodebookQuantizer(codebook_size=128).eval()
    s = ScaleSchedule.for_grid(8, 8)
    f_sem, f_pix = torch.randn(3, 32, 8, 8), torch.randn(3, 8, 8, 8)
    t0, i0 = q.quantize_codes(f_sem, f_pix, s, self_correct=0.0)
    assert all(torch.equal(a, b) for a, b in zip(t0, i0))
    t1, i1 = q.quantize_codes(f_sem, f_pix, s, 0.6, 8, torch.Generator().manual_seed(1))
    t2, i2 = q.quantize_codes(f_sem, f_pix, s, 0.6, 8, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(i1, i2))
    assert torch.equal(t1[0], t0[0])  # scale 1 target has no corrupted history
    for (h, w), t, i in zip(s.grids, t1, i1):
        changed = (t != i).flatten(1).sum(1)
        assert int(changed.max()) <= round(0.6 * h * w)  # exactly 60% sampled (some re-pick the top-1)
    total = sum(int((t != i).sum()) for t, i in zip(t1, i1))
    assert total > 0.6 * (7 / 8) * 0.5 * 3 * s.token_count  # most sampled positions really change


def test_encode_decode_shapes_any_aspect_ratio():
    torch.manual_seed(0)
    tok = MultiScaleTokenizer(tiny_config()).eval()
    for h, w in [(32, 32), (16, 64), (48, 24)]:
        codes = tok.encode(torch.rand(2, 3, h, w) * 2 - 1)
        assert codes.schedule == ScaleSchedule.for_image(h, w, 4)
        assert [tuple(t.shape[1:]) for t in codes.targets] == list(codes.schedule.grids)
        assert codes.flat().shape == (2, codes.schedule.token_count)
        assert tok.decode(codes.targets, codes.schedule).shape == (2, 3, h, w)
        assert tok.decode(codes.targets[:3], codes.schedule).shape == (2, 3, h, w)  # prefix decode
    assert tok.code_embeddings().shape == (256, 40)
    assert torch.allclose(tok.code_embeddings()[:, :32].norm(dim=1), torch.ones(256))


def test_decode_equals_training_path_reconstruction():
    torch.manual_seed(0)
    tok = MultiScaleTokenizer(tiny_config()).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        x_rec, q, _ = tok(x)
    codes = tok.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(q.indices, codes.targets))
    assert torch.allclose(tok.decode(codes.targets, codes.schedule), x_rec.clamp(-1, 1), atol=1e-5)


def test_bad_image_size_names_value_and_fix():
    tok = MultiScaleTokenizer(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"30x32 is not divisible by the tokenizer patch 4.*multiple of 4"):
        tok.encode(torch.zeros(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"B x 3 x H x W"):
        tok.encode(torch.zeros(3, 32, 32))


def test_scale_dropping_drops_half_keeps_last_and_is_rank_consistent():
    cb = ScaleDropping(drop_prob=0.5, seed=3)
    masks = [cb.sample_keep(8, step) for step in range(2000)]
    assert all(m[-1] for m in masks)
    kept = torch.tensor([m[:-1] for m in masks], dtype=torch.float).mean()
    assert abs(float(kept) - 0.5) < 0.02
    assert masks[17] == ScaleDropping(drop_prob=0.5, seed=3).sample_keep(8, 17)
    assert all(sum(m) >= 3 for m in (ScaleDropping(0.9, min_scales=3).sample_keep(8, s) for s in range(200)))


def test_scale_dropping_skips_scales_in_the_quantiser():
    torch.manual_seed(0)
    tok = MultiScaleTokenizer(tiny_config()).eval()
    keep = [True, False, True, False, False, True, False, True]
    _, q, _ = tok(torch.rand(2, 3, 32, 32) * 2 - 1, keep=keep)
    assert [i is not None for i in q.indices] == keep


def test_stage3_widened_decoder_starts_as_the_old_one():
    from modules.tokenizer.branches import CNNDecoder, widen_decoder

    torch.manual_seed(0)
    old, new = CNNDecoder(40, 8, (1, 2, 4), 1, 1.0), CNNDecoder(40, 8, (1, 2, 4), 1, 2.0)
    for m in old.modules():
        if isinstance(m, torch.nn.GroupNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_()
    assert widen_decoder(old, new, noise=0.0)
    z = torch.randn(2, 40, 8, 8)
    assert float((old(z) - new(z)).abs().max()) < 1e-4 < float(old(z).abs().mean())
    assert sum(p.numel() for p in new.parameters()) > 3.5 * sum(p.numel() for p in old.parameters())
    assert not widen_decoder(old, CNNDecoder(40, 8, (1, 2, 4), 1, 1.5))  # non-integer: fresh init kept


def test_edge_weighted_l2_focuses_on_outlines_and_reduces_to_l2():
    from modules.tokenizer.losses import edge_weighted_l2, pixel_l2, sobel_edges

    x = -torch.ones(1, 3, 16, 16)
    x[..., 4:12, 4:12] = 1.0  # a square on a flat background
    g = sobel_edges(x)
    assert g.shape == (1, 6, 16, 16) and g[..., 0, 0].abs().max() == 0 and g.abs().max() > 0
    noise = 0.1 * torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(edge_weighted_l2(x + noise, x, 0.0), pixel_l2(x + noise, x))
    on_edge, off_edge = torch.zeros_like(x), torch.zeros_like(x)
    on_edge[..., 4, 8], off_edge[..., 1, 1] = 0.5, 0.5  # the same error on the outline / in the background
    assert pixel_l2(x + on_edge, x) == pixel_l2(x + off_edge, x)
    assert edge_weighted_l2(x + on_edge, x, 4.0) > 2 * edge_weighted_l2(x + off_edge, x, 4.0)


def test_adaptive_gan_weight_balances_gradients_at_the_last_layer():
    """VQGAN eq. 7: after weighting, the GAN loss's gradient at the decoder's last layer has the
    reconstruction loss's norm, whatever the two losses' scales."""
    from modules.tokenizer.branches import CNNDecoder
    from modules.tokenizer.losses import PatchDiscriminator, adaptive_gan_weight, hinge_g_loss, pixel_l2

    torch.manual_seed(0)
    dec, disc = CNNDecoder(8, ch=8, ch_mult=(1, 2), num_res_blocks=1), PatchDiscriminator(ch=8, n_layers=2)
    x_rec, x = dec(torch.randn(2, 8, 8, 8)), torch.rand(2, 3, 16, 16) * 2 - 1
    rec, gan = pixel_l2(x_rec, x), hinge_g_loss(disc(x_rec))
    w = adaptive_gan_weight(rec, gan, dec.last_layer)
    g_rec = torch.autograd.grad(rec, dec.last_layer, retain_graph=True)[0].norm()
    g_gan = torch.autograd.grad(w * gan, dec.last_layer, retain_graph=True)[0].norm()
    assert w > 0 and torch.isclose(g_gan, g_rec, rtol=1e-3)
    assert adaptive_gan_weight(1000 * rec, gan, dec.last_layer) == pytest.approx(1000 * w, rel=1e-3)
    assert sum(p.numel() for p in PatchDiscriminator(ch=16).parameters()) < \
        sum(p.numel() for p in PatchDiscriminator(ch=64).parameters()) / 10  # disc_ch sizes it


def test_gradient_difference_charges_blur_not_flat_offsets():
    import torch.nn.functional as F

    from modules.tokenizer.losses import gradient_difference, pixel_l2

    x = -torch.ones(1, 3, 32, 32)
    x[..., 8:24, 8:24] = 1.0
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    offset = x + (pixel_l2(blurred, x).sqrt())  # the same L2 as the blur, spread evenly
    assert torch.isclose(pixel_l2(offset, x), pixel_l2(blurred, x), rtol=1e-4)
    assert gradient_difference(x, x) == 0 and gradient_difference(offset, x) < 1e-6
    assert gradient_difference(blurred, x) > 0.01


def test_decoder_code_noise_swaps_codes_for_stage3_only():
    """Stage 3 with `decoder_code_noise`: the decoder's input features come from codes with that
    fraction per scale swapped for a near one (the errors of an AR model's samples); 0 gives the
    clean training path's features; other stages refuse the option."""
    from modules.tokenizer.module import TokenizerModule

    with pytest.raises(ValueError, match="decoder_code_noise=0.5.*stage 'decoder'"):
        TokenizerModule(tiny_config(), stage="joint", teacher="none", decoder_code_noise=0.5, val_oracle=False,
                        rfid_extractor=None)
    torch.manual_seed(0)
    clean = TokenizerModule(tiny_config(), stage="decoder", teacher="none", val_oracle=False, rfid_extractor=None)
    noisy = TokenizerModule(tiny_config(), stage="decoder", teacher="none", val_oracle=False, rfid_extractor=None,
                            decoder_code_noise=0.5)
    noisy.load_state_dict(clean.state_dict())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    sem0, pix0, q, _ = clean.decoder_inputs(x)
    codes = clean.tokenizer.encode(x)
    ref_sem, ref_pix = clean.tokenizer.quantizer.indices_to_features(codes.targets, codes.schedule)
    torch.testing.assert_close(pix0, ref_pix, atol=1e-5, rtol=1e-5)  # noise 0: the clean codes' features
    sem1, pix1, q1, _ = noisy.decoder_inputs(x, generator=torch.Generator().manual_seed(1))
    assert q1 is None and pix1.shape == pix0.shape and sem1.shape == sem0.shape
    # half of every scale's positions (but the 1x1 one) carry another code: the features move
    # by a fraction of their size, not by nothing and not beyond recognition
    rel = ((pix1 - pix0).norm() / pix0.norm()).item()
    assert 0.05 < rel < 1.5
    again = noisy.decoder_inputs(x, generator=torch.Generator().manual_seed(1))[1]
    assert torch.equal(again, pix1)  # seeded: the same swaps


def test_validation_metrics_under_bf16_autocast_equal_fp32():
    """bf16-mixed validation (the quickstart's tokenizer stages where bf16 is native) reconstructs in
    bf16 but scores in fp32: in bf16, SSIM's E[x²] − E[x]² cancelled to negative values."""
    from _tokenizer_data import scene_batch
    from modules.tokenizer import TokenizerModule

    torch.manual_seed(0)
    module = TokenizerModule(tiny_config(), val_oracle=False, rfid_extractor=None).eval()
    batch = scene_batch(8)
    scores = {}
    for name, autocast in (("fp32", False), ("bf16", True)):
        module.psnr.reset(), module.ssim.reset()
        module.on_validation_epoch_start()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            module.validation_step(batch, 0)
        scores[name] = (float(module.psnr.compute()), float(module.ssim.compute()))
    (psnr32, ssim32), (psnr16, ssim16) = scores["fp32"], scores["bf16"]
    assert abs(psnr16 - psnr32) < 0.2 and abs(ssim16 - ssim32) < 0.02
