"""Sampler: KV-cached logits == full recomputation with the training mask (text, images, mixed;
residual and accumulated inputs; padded batches and CFG rows), CFG's padded single forward ==
the two-forward layout, the sampling step (CFG 0 == unguided, top-k 1 == argmax, top-p,
vocabulary restriction, k-th value == full sort), determinism, aspect-ratio buckets."""
import dataclasses
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from modules.ar import tasks
from modules.ar.config import ARConfig
from modules.ar.model import ARDecoder
from modules.ar.decode_state import DecodeState, builder_for, prefill
from modules.ar.sampler import (SamplingConfig, StepConfig, answer, continue_interleaved, edit_images,
                                generate_images, sample_image, sample_step, sample_text, truncated_logits)
from modules.common.attention_mask import block_causal_mask
from modules.common.sequence import Tokens, collate
from modules.common.scale_schedule import ScaleSchedule

SCH = ScaleSchedule.square(4)  # 1, 2, 3, 4: 30 tokens


def _model(visual_inputs="residual", seed=0):
    torch.manual_seed(seed)
    m = ARDecoder(ARConfig.from_name("tiny", visual_inputs=visual_inputs)).eval()
    m.init_visual_from_codebook(F.normalize(torch.randn(64, 40), dim=-1))
    with torch.no_grad():  # non-zero scale / number-of-scales embeddings so their paths count
        m.scale_emb.table.normal_(0, 0.02)
        m.nscales_emb.proj.weight.normal_(0, 0.02)
    return m


def _full_logits(m, segs):
    """Training-time pass: the builder's sequence under the block-causal mask."""
    tok = builder_for(m).build(segs, drop_cond=False)
    batch = collate([tok], pad_id=m.config.vocab.pad)
    with torch.no_grad():
        return m(**batch.model_inputs(), mask=batch.mask())[0]


def _row(record, b):
    """Row b of every recorded chunk, left padding stripped by the caller."""
    return torch.cat([r[b] for r in record], 0)


@pytest.mark.parametrize("visual_inputs,captions", [
    ("residual", [[65, 66, 67, 68], [70]]),  # two lengths: two row groups, no masks after prefill
    ("accumulated", [[65, 66, 67, 68], [70]]),
    ("residual", [[65, 66, 67, 68], [70], [71, 72]]),  # three lengths: left padding + key masks
])
def test_kv_cached_image_logits_equal_full_recomputation(visual_inputs, captions):
    m = _model(visual_inputs)
    V = m.config.vocab
    schedules = [SCH, ScaleSchedule.for_grid(2, 5)]  # two aspect ratios: two buckets
    for sch in schedules:
        rec = []
        codes = generate_images(m, captions, sch, SamplingConfig(seed=3, top_k=8), record=rec)
        assert [tuple(c.shape) for c in codes[0]] == list(sch.grids)
        for b, cap in enumerate(captions):
            full = _full_logits(m, tasks.t2i(V, cap, sch, codes[b]))
            got = _row(rec, b)[-len(full):]
            torch.testing.assert_close(got, full, atol=2e-5, rtol=1e-4)
            # and per scale: chunk k+1 of the record is scale k's block
            for k, (h, w) in enumerate(sch.grids):
                assert rec[k + 1].shape[1] == h * w


def test_cache_off_equals_cache_on_with_cfg():
    m = _model()
    cfg = dict(seed=5, guidance=3.0, guidance_schedule="linear", temperature=[1.0, 0.8], top_p=0.9)
    rec_on, rec_off = [], []
    on = generate_images(m, [[65, 66], [67]], SCH, SamplingConfig(**cfg), record=rec_on)
    off = generate_images(m, [[65, 66], [67]], SCH, SamplingConfig(**cfg, use_cache=False), record=rec_off)
    assert all(torch.equal(a, b) for x, y in zip(on, off) for a, b in zip(x, y))
    assert rec_on[0].shape[0] == 4  # conditional + unconditional rows
    for a, b in zip(rec_on, rec_off):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-4)


def test_kv_cached_text_and_mixed_logits_equal_full_recomputation():
    m = _model()
    V, builder = m.config.vocab, builder_for(m)
    g = torch.Generator().manual_seed(0)
    ctx = [torch.randint(0, 64, grid, generator=g) for grid in SCH.grids]
    items = [[72, 105], (SCH, ctx), [32, 119]]
    segs = tasks.interleaved(V, items)
    for s in segs[1:]:
        if hasattr(s, "close"):
            s.close = True
    rec = []
    cfg = SamplingConfig(seed=1, max_text_tokens=3)
    st, last = prefill(m, builder, [segs], [False], record=rec)
    text1, stop1 = sample_text(st, builder, last, cfg, torch.Generator().manual_seed(1))
    codes = sample_image(st, builder, SCH, cfg, torch.Generator().manual_seed(2), 1, close=True)
    text2, _ = sample_text(st, builder, st.last_logits, cfg, torch.Generator().manual_seed(3))
    assert stop1 == [None] and len(text1[0]) == 3 and len(text2[0]) == 3
    # the same stream built by the training-side builder: text, image, text+generated, new image, text
    new = [c[0] for c in codes]
    full = _full_logits(m, tasks.interleaved(V, [*items[:2], items[2] + text1[0], (SCH, new), text2[0]]))
    got = _row(rec, 0)
    assert got.shape == full.shape
    torch.testing.assert_close(got, full, atol=2e-5, rtol=1e-4)
    assert all(V.is_text(torch.tensor(t)).all() for t in text1 + text2)


def _forward_calls(m):
    calls = []
    return calls, m.register_forward_pre_hook(lambda _mod, _inp: calls.append(1))


@pytest.mark.parametrize("visual_inputs", ["residual", "accumulated"])
def test_cfg_padded_single_forward_equals_two_forwards(visual_inputs):
    """CFG's conditional rows (caption) and unconditional rows (no caption: a shorter prefix) as one
    left-padded batch, one forward per scale, give the logits and (fixed seed) the codes of the
    two-forward layout, row by row, at every scale."""
    m = _model(visual_inputs)
    caps = [[65, 66, 67], [68, 69, 70]]
    cfg = SamplingConfig(seed=3, guidance=3.0, guidance_schedule="constant", top_k=8, top_p=0.9)
    out, recs, calls = {}, {}, {}
    for rows in ("grouped", "padded"):
        recs[rows] = []
        n, h = _forward_calls(m)
        try:
            out[rows] = generate_images(m, caps, SCH, cfg, record=recs[rows], rows=rows)
        finally:
            h.remove()
        calls[rows] = len(n)
    K = SCH.num_scales
    assert calls == {"grouped": 2 * (1 + K), "padded": 1 + K}
    assert all(torch.equal(a, b) for x, y in zip(out["grouped"], out["padded"]) for a, b in zip(x, y))
    g, p = recs["grouped"], recs["padded"]
    assert len(g) == len(p) == 1 + K and all(r.shape[0] == 4 for r in p)
    V = m.config.vocab
    for b in range(4):  # prefill: each row's own (unpadded) tokens; the unconditional rows are shorter
        n_b = len(builder_for(m).build(tasks.t2i(V, caps[b % 2], SCH, [])[:-1], drop_cond=b >= 2))
        torch.testing.assert_close(p[0][b, -n_b:], g[0][b, -n_b:], atol=2e-5, rtol=1e-4)
    assert p[0].shape[1] > len(builder_for(m).build(tasks.t2i(V, caps[0], SCH, [])[:-1], drop_cond=True))
    for k in range(1, 1 + K):
        torch.testing.assert_close(p[k], g[k], atol=2e-5, rtol=1e-4)


def test_chunk_mask_is_the_training_rule():
    """A one-block chunk on a left-padded cache gets a per-row key mask equal to the block-causal
    rule (and no mask when no key is padding)."""
    B, l = 3, 4
    blk_k = torch.tensor([[-1, -1, 0, 1, 2], [0, 1, 1, 1, 2], [-1, 0, 1, 2, 2]])
    smp_k = torch.tensor([[-1, -1, 0, 0, 0], [0, 0, 0, 0, 0], [-1, 0, 0, 0, 0]])
    tok = Tokens(ids=torch.zeros(B, l, dtype=torch.long), vis=torch.zeros(B, l, 1),
                 vis_mask=torch.zeros(B, l, dtype=torch.bool), pos=torch.zeros(B, l, 3),
                 block=torch.full((B, l), 3), scale=torch.zeros(B, l, dtype=torch.long),
                 nscales=torch.zeros(B, l, dtype=torch.long), target=torch.zeros(B, l, dtype=torch.long),
                 weight=torch.zeros(B, l), sample=torch.zeros(B, l, dtype=torch.long))
    blk, smp = torch.cat([blk_k, tok.block], 1), torch.cat([smp_k, tok.sample], 1)
    got = DecodeState._chunk_mask(tok, blk, smp)
    assert got.shape == (B, 1, 1, 5 + l)
    assert torch.equal(got.expand(B, 1, l, 5 + l), block_causal_mask(tok.block, tok.sample, blk, smp))
    assert DecodeState._chunk_mask(tok, blk[1:2], smp[1:2]) is None


@pytest.mark.parametrize("allowed", ["visual", "text", None])
def test_kth_value_truncation_equals_full_sort(allowed):
    """The k-th value mask and the top-p sort of the kept set keep the same tokens with the same
    probabilities as the earlier full sort, and draw the same ids with one seed."""
    from benchmarks.sampling import sample_step_sorted, truncated_logits_sorted

    V = ARConfig.from_name("tiny").vocab
    mask = {"visual": V.visual_mask(), "text": V.text_mask(), None: None}[allowed]
    g = torch.Generator().manual_seed(0)
    x, u = torch.randn(2, 50, V.size, generator=g) * 3, torch.randn(2, 50, V.size, generator=g)
    for k, p, t, cfg in [(0, 1.0, 1.0, 0.0), (8, 1.0, 1.0, 0.0), (40, 1.0, 0.7, 2.0), (8, 0.5, 1.0, 0.0),
                         (0, 0.9, 1.3, 0.0), (40, 0.95, 1.0, 3.0), (1000, 0.9, 1.0, 0.0), (1000, 1.0, 1.0, 0.0)]:
        step = StepConfig(cfg, t, k, p)
        ref = truncated_logits_sorted(x, step, mask, u)
        new, off = truncated_logits(x, step, mask, u)
        full = torch.full_like(ref, float("-inf"))
        full[..., off:off + new.shape[-1]] = new
        assert torch.equal(full > float("-inf"), ref > float("-inf")), (k, p)
        if k:
            assert int((ref[0, 0] > float("-inf")).sum()) <= k
        torch.testing.assert_close(full.softmax(-1), ref.softmax(-1), atol=1e-6, rtol=1e-5)
        a = sample_step(x, step, mask, torch.Generator().manual_seed(1), u)
        b = sample_step_sorted(x, step, mask, torch.Generator().manual_seed(1), u)
        assert torch.equal(a, b), (k, p)


def test_cfg_zero_equals_unguided():
    x = torch.randn(3, 5, 50)
    u = torch.randn(3, 5, 50)
    for step in (StepConfig(0.0, 1.0, 0, 1.0), StepConfig(0.0, 0.7, 10, 0.8)):
        a = sample_step(x, step, None, torch.Generator().manual_seed(0), uncond_BlV=u)
        b = sample_step(x, step, None, torch.Generator().manual_seed(0))
        assert torch.equal(a, b)
    # end to end: the linear ramp is 0 at scale 0, where the unconditional rows run alongside:
    # scale 0 (and all logits up to it) equal the unguided run; guidance off everywhere -> no rows
    m = _model()
    rec_a, rec_b, rec_c = [], [], []
    a = generate_images(m, [[65, 66]], SCH, SamplingConfig(seed=2), record=rec_a)
    b = generate_images(m, [[65, 66]], SCH, SamplingConfig(seed=2, guidance=4.0, guidance_off_from=2),
                        record=rec_b)
    assert rec_b[0].shape[0] == 2 and rec_b[3].shape[0] == 1  # uncond rows dropped once guidance is off
    assert torch.equal(a[0][0], b[0][0])
    for k in range(2):
        torch.testing.assert_close(rec_b[k][:1], rec_a[k], atol=1e-6, rtol=1e-6)
    c = generate_images(m, [[65, 66]], SCH, SamplingConfig(seed=2, guidance=4.0, guidance_off_from=1),
                        record=rec_c)
    assert rec_c[0].shape[0] == 1 and all(torch.equal(p, q) for p, q in zip(a[0], c[0]))


def test_cfg_combine_and_ramp():
    x, u = torch.randn(1, 1, 8), torch.randn(1, 1, 8)
    t = 2.5
    got = sample_step(x, StepConfig(t, 0.0), None, None, u)
    assert torch.equal(got, ((1 + t) * x - t * u).argmax(-1))  # VAR: (1+t)·cond − t·uncond
    cfg = SamplingConfig(guidance=3.0, guidance_off_from=3)
    assert [cfg.guidance_at(s, 5) for s in range(5)] == [0.0, 0.75, 1.5, 0.0, 0.0]
    const = SamplingConfig(guidance=3.0, guidance_schedule="constant")
    assert [const.guidance_at(s, 3) for s in range(3)] == [3.0] * 3


def test_top_k_one_is_argmax_and_deterministic():
    x = torch.randn(4, 7, 100)
    for seed in range(3):
        got = sample_step(x, StepConfig(0.0, 1.3, 1, 0.5), None, torch.Generator().manual_seed(seed))
        assert torch.equal(got, x.argmax(-1))
    m = _model()
    cfg = SamplingConfig(seed=0, top_k=1)
    a = generate_images(m, [[65]], SCH, cfg)[0]
    b = generate_images(m, [[65]], SCH, SamplingConfig(seed=99, top_k=1))[0]
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_top_k_top_p_support_and_seeds():
    x = torch.log_softmax(torch.tensor([[[4.0, 3.0, 2.0, 1.0, 0.0, -1.0]]]), -1).expand(1, 2000, 6)
    got = sample_step(x, StepConfig(0.0, 1.0, 3, 1.0), None, torch.Generator().manual_seed(0))
    assert set(got.unique().tolist()) == {0, 1, 2}
    p = x[0, 0].exp()  # top-p 0.8: smallest prefix with mass >= 0.8 is {0, 1}
    assert p[0] < 0.8 <= p[0] + p[1]
    got = sample_step(x, StepConfig(0.0, 1.0, 0, 0.8), None, torch.Generator().manual_seed(0))
    assert set(got.unique().tolist()) == {0, 1}
    m = _model()
    a = generate_images(m, [[65]], SCH, SamplingConfig(seed=7))[0]
    b = generate_images(m, [[65]], SCH, SamplingConfig(seed=7))[0]
    c = generate_images(m, [[65]], SCH, SamplingConfig(seed=8))[0]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_vocabulary_restriction_never_emits_wrong_modality():
    m = _model()
    V = m.config.vocab
    with torch.no_grad():  # make every non-visual row win without the restriction
        m.head_weight_full[: V.visual_offset] *= 50
    codes = generate_images(m, [[65], [66]], SCH, SamplingConfig(seed=0, temperature=5.0))
    for c in codes:
        for k in c:
            assert k.min() >= 0 and k.max() < V.codebook_size
    g = torch.Generator().manual_seed(0)
    img = (SCH, [torch.randint(0, 64, grid, generator=g) for grid in SCH.grids])
    text = answer(m, [img, img], [[81], []], SamplingConfig(seed=0, text_temperature=5.0, max_text_tokens=20))
    assert all(0 <= i < V.text_size for t in text for i in t)
    x = torch.zeros(1, 500, V.size)
    x[..., V.visual_offset:V.special_offset] = -30.0  # visual codes very unlikely but allowed
    got = sample_step(x, StepConfig(), V.visual_mask(), torch.Generator().manual_seed(0))
    assert bool(V.is_visual(got).all())


def test_edit_and_interleaved_decisions():
    m = _model()
    V = m.config.vocab
    g = torch.Generator().manual_seed(0)
    src = (SCH, [torch.randint(0, 64, grid, generator=g) for grid in SCH.grids])
    rec = []
    out = edit_images(m, [src], [[99, 100]], ScaleSchedule.for_grid(2, 4),
                      SamplingConfig(seed=0, guidance=2.0), record=rec)
    assert [tuple(c.shape) for c in out[0]] == list(ScaleSchedule.for_grid(2, 4).grids)
    assert rec[0].shape[0] == 2  # unconditional row keeps the source image, drops the instruction
    full = _full_logits(m, tasks.edit(V, SCH, src[1], [99, 100], ScaleSchedule.for_grid(2, 4), out[0]))
    torch.testing.assert_close(_row(rec, 0)[-len(full):], full, atol=2e-5, rtol=1e-4)
    # the model decides: force <boi> at the first text step, then <eos> after the image
    calls = {"n": 0}

    def steer(_mod, _inp, logits):
        calls["n"] += 1
        if logits.shape[1] == 1 or calls["n"] == 1:
            logits = logits.clone()
            logits[:, -1, V.boi if calls["n"] == 1 else V.eos] += 1e4
        return logits

    h = m.register_forward_hook(steer)
    try:
        new = continue_interleaved(m, [[72, 105], src], SCH, SamplingConfig(seed=0, max_text_tokens=5))
    finally:
        h.remove()
    assert len(new) == 1 and [tuple(c.shape) for c in new[0]] == list(SCH.grids)


def test_unknown_sampling_key_and_bad_aspect_ratio():
    with pytest.raises(ValueError, match="top_kk"):
        SamplingConfig.from_dict({"top_kk": 3})
    with pytest.raises(ValueError, match="outside the schedule family"):
        ScaleSchedule.for_image(16, 128, 2)


def test_several_aspect_ratios_in_one_call_are_bucketed():
    m = _model()
    wide, tall = ScaleSchedule.for_grid(2, 6), ScaleSchedule.for_grid(5, 2)
    cfg = SamplingConfig(seed=4, top_k=5)
    mixed = generate_images(m, [[65], [66], [67]], [wide, tall, wide], cfg)
    assert [tuple(c[-1].shape) for c in mixed] == [(2, 6), (5, 2), (2, 6)]
    apart = generate_images(m, [[65], [67]], wide, cfg) + generate_images(m, [[66]], tall, cfg)
    for a, b in zip([mixed[0], mixed[2], mixed[1]], apart):
        assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_raster_baseline_and_flop_formulas():
    from benchmarks.sampling import mmdit_flops, next_scale_flops, raster_flops, sample_raster

    m = _model()
    c = m.config
    stats_r, stats_n = {}, {}
    codes = sample_raster(m, [65, 66], 3, 4, SamplingConfig(seed=0), stats=stats_r)
    assert codes.shape == (3, 4) and codes.min() >= 0 and codes.max() < c.codebook_size
    assert stats_r["forwards"] == 1 + 1 + 11  # prefill, <boi>, one step per code but the last
    generate_images(m, [[65, 66]], SCH, SamplingConfig(seed=0), stats=stats_n)
    assert stats_n["forwards"] == 1 + SCH.num_scales
    P, sch = 3, ScaleSchedule.square(2)  # scales 1x1, 2x2 after a 3-token prefix
    lin = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128)  # q, k, v, o, SwiGLU per token per layer
    f = next_scale_flops(c, sch, P)
    assert f.linear == 2 * lin * (5 + P)
    assert f.attention == 4 * 16 * 4 * 2 * (1 * (P + 1) + 4 * (P + 5) + P * (P + 1) / 2)
    r = raster_flops(c, 4, P)
    assert r.attention == 4 * 16 * 4 * 2 * (7 * 8 / 2) and r.linear == 2 * lin * 7
    mm = mmdit_flops(c, 4, n_text=3, steps=10)
    assert mm.attention == 10 * 4 * 16 * 4 * 2 * 49 and mm.linear == 10 * 2 * lin * 7


def test_bench_sampling_runs_and_reports_ratios():
    from benchmarks.sampling import bench_sampling

    res = bench_sampling(grids=(4,), kv_off_grids=(4,), repeats=1, threads=None, step_cost=False)
    r = res["grids"][4]
    assert r["ns_forwards"] == 1 + 4 and r["raster_forwards"] == 1 + 16
    assert r["ratio"] > 0 and r["kv_speedup"] > 0 and r["flops_mmdit"] > r["flops_ns"]
    assert 0 < r["ns_attention_s"] < r["next_scale_s"] and r["ratio_bound"] == pytest.approx(r["raster_s"] / r["ns_attention_s"])
    assert res["qwen7b_1024"]["mmdit_over_ns"] > 1


def test_bench_step_cost_compares_before_and_after():
    from benchmarks.sampling import bench_step_cost

    res = bench_step_cost(grids=(4,), repeats=1, threads=None, nf_rows=4, step_settings=((8, 1.0), (8, 0.9)))
    r = res["cfg"][4]
    assert r["grouped_forwards"] == 2 * (1 + 4) and r["padded_forwards"] == 1 + 4 and r["same_codes"]
    assert r["speedup"] == pytest.approx(r["grouped_s"] / r["padded_s"])
    assert [(x["vocab"], x["top_k"], x["top_p"]) for x in res["step"]] == [
        ("shapes-small", 8, 1.0), ("shapes-small", 8, 0.9), ("qwen2.5-7b", 2, 0.9)]
    assert all(x["same_ids"] and x["sorted_s"] > 0 and x["kth_s"] > 0 for x in res["step"])


def _tiny_checkpoints(tmp_path):
    """A random tiny tokenizer (tok.ckpt) and AR generator (ar.ckpt) on it, and a one-prompt
    GenEval file (returned)."""
    import json

    import lightning

    from modules.ar.sampler import save_generator
    from modules.tokenizer import TokenizerConfig, TokenizerModule

    torch.manual_seed(0)
    tok = TokenizerModule(TokenizerConfig(codebook_size=64, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                                          semantic_ch=8, semantic_decoder_ch=8), val_oracle=False,
                          rfid_extractor=None)
    torch.save({"state_dict": tok.state_dict(), "hyper_parameters": dict(tok.hparams),
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "tok.ckpt")
    ar = _model()
    ar.init_visual_from_codebook(tok.code_embeddings().detach())
    save_generator(ar, tmp_path / "ar.ckpt", tokenizer_ckpt=str(tmp_path / "tok.ckpt"))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"tag": "single_object", "include": [{"class": "circle", "count": 1}],
                                   "prompt": "a photo of a circle"}) + "\n")
    return prompts


def test_sampling_geneval_scores_every_point_and_resumes(tmp_path, monkeypatch):
    """GenEval per sampling point (files × --vary) on one checkpoint: the suite's layout per point,
    one summary; a rerun skips finished points; bad input names the file or key."""
    import json

    from benchmarks import sampling_geneval as sg

    prompts = _tiny_checkpoints(tmp_path)
    files = ["configs/sampling/shapes_cfg_constant.yaml", "configs/sampling/shapes_cfg_linear.yaml"]
    points = sg.sampling_points(files, {"guidance": [0.0, 2.0]})
    assert [n for n, _ in points] == ["shapes_cfg_constant_guidance=0.0", "shapes_cfg_constant_guidance=2.0",
                                      "shapes_cfg_linear_guidance=0.0", "shapes_cfg_linear_guidance=2.0"]
    assert [(c.guidance_schedule, c.guidance) for _, c in points] == [
        ("constant", 0.0), ("constant", 2.0), ("linear", 0.0), ("linear", 2.0)]
    args = dict(ckpt=str(tmp_path / "ar.ckpt"), sampling=files[1:], vary={"guidance": [0.0, 2.0]},
                out=str(tmp_path / "out"), geneval_prompts=str(prompts), images_per_prompt=1, width=32, height=32)
    res = sg.run(**args)
    names = [n for n, _ in points[2:]]
    assert list(res["scores"]) == names and res["sampling"][names[1]]["guidance"] == 2.0
    for n in names:
        assert 0.0 <= res["scores"][n]["geneval/overall"] <= 1.0
        assert (tmp_path / "out" / n / "geneval" / "00000" / "samples" / "0000.png").is_file()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["scores"] == res["scores"]
    monkeypatch.setattr("evaluation.suite.run_suite", lambda *a, **k: pytest.fail("finished point rerun"))
    assert sg.run(**args)["scores"] == res["scores"]
    with pytest.raises(sg.InputError, match="guidanse"):
        sg.sampling_points(files, {"guidanse": [1.0]})
    with pytest.raises(sg.InputError, match="nope.yaml"):
        sg.sampling_points(["configs/sampling/nope.yaml"])


def test_given_coarse_scales_are_kept_and_read_as_inputs():
    """generate_images(given=...): the first m scales are the given codes; the rest are sampled on
    top of them (the model reads the given codes: different given codes change what follows), m = 0
    is plain sampling, m = K returns the given codes unchanged, also with CFG rows."""
    m = _model()
    cfg = SamplingConfig(seed=3, guidance=2.0, guidance_schedule="constant", top_k=4)
    caps = [[65, 66], [70, 71, 72]]
    free = generate_images(m, caps, SCH, cfg)
    g = torch.Generator().manual_seed(0)
    truth = [[torch.randint(0, 64, grid, generator=g) for grid in SCH.grids] for _ in caps]
    for n in (0, 2, SCH.num_scales):
        out = generate_images(m, caps, SCH, cfg, given=[t[:n] for t in truth])
        for b in range(len(caps)):
            assert all(torch.equal(out[b][k], truth[b][k]) for k in range(n))
            if n == 0:
                assert all(torch.equal(p, q) for p, q in zip(out[b], free[b]))
    # the logits of scale 3 depend on the given scales: another truth for scales 1-2 moves them
    rec_a, rec_b = [], []
    other = [[(t + 1) % 64 for t in row] for row in truth]
    generate_images(m, caps[:1], SCH, dataclasses.replace(cfg, guidance=0.0), record=rec_a, given=[truth[0][:2]])
    generate_images(m, caps[:1], SCH, dataclasses.replace(cfg, guidance=0.0), record=rec_b, given=[other[0][:2]])
    assert not torch.allclose(rec_a[-1], rec_b[-1])
    with pytest.raises(ValueError, match="same number of given scales"):
        generate_images(m, caps, SCH, cfg, given=[truth[0][:1], truth[1][:2]])


def test_truth_prefix_all_scales_given_is_the_tokenizers_reconstruction(tmp_path):
    """benchmarks/truth_prefix.py: with every scale from the truth the images are the tokenizer's
    reconstruction of the world's render (the AR model is bypassed); with none, the model's own."""
    from benchmarks import truth_prefix as tp
    from evaluation.baselines import GroundTruthGenerator
    from evaluation.suite import SuiteConfig
    from modules.ar.generator import ARGenerator, load_ar_and_tokenizer
    from modules.common.images import to_uint8

    prompts = _tiny_checkpoints(tmp_path)
    model, meta, tokenizer, _ = load_ar_and_tokenizer(str(tmp_path / "ar.ckpt"), None, "cpu")
    ar = ARGenerator(model, tokenizer, None, sampling=SamplingConfig(seed=0, top_k=4))
    truth = GroundTruthGenerator(SuiteConfig(geneval_prompts=str(prompts), dpg_prompts=0, editcanvas_per_task=0,
                                             understanding_scenes=0, width=32, height=32))
    K = ScaleSchedule.for_image(32, 32, tokenizer.patch).num_scales
    ask = ["a photo of a circle"] * 2
    full = tp.TruthPrefixGenerator(ar, truth, K).text_to_image(ask, 32, 32, seed=5)
    rendered = truth.text_to_image(ask, 32, 32, 5 * 1_000_003)
    reconstructed = ar._decode([c for _, c in ar._encode(rendered)], ScaleSchedule.for_image(32, 32, tokenizer.patch))
    assert all(np.array_equal(a, b) for a, b in zip(full, reconstructed))
    # rest="dropped": no model; all K scales are the reconstruction, fewer decode the prefix alone
    dropped_all = tp.TruthPrefixGenerator(ar, truth, K, rest="dropped").text_to_image(ask, 32, 32, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(dropped_all, reconstructed))
    coarse = tp.TruthPrefixGenerator(ar, truth, 2, rest="dropped").text_to_image(ask, 32, 32, seed=5)
    maps = [torch.stack([c[k] for _, c in ar._encode(rendered)]) for k in range(2)]
    expect = to_uint8(tokenizer.decode(maps, ScaleSchedule.for_image(32, 32, tokenizer.patch)))
    assert all(np.array_equal(a, b) for a, b in zip(coarse, expect))
    assert not all(np.array_equal(a, b) for a, b in zip(coarse, reconstructed))  # the fine scales count
    none = tp.TruthPrefixGenerator(ar, truth, 0).text_to_image(ask, 32, 32, seed=5)
    own = ar.text_to_image(ask, 32, 32, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(none, own))
    with pytest.raises(ValueError, match="scales"):
        tp.TruthPrefixGenerator(ar, truth, K + 1).text_to_image(ask, 32, 32, seed=5)
    scores = tp.run(str(tmp_path / "ar.ckpt"), given=[0, K], out=str(tmp_path / "tp"), geneval_prompts=str(prompts),
                    images_per_prompt=1, width=32, height=32, min_object_px=None)
    assert set(scores) == {"0 scales from the truth", f"{K} scales from the truth"}
    with pytest.raises(tp.InputError, match="given"):
        tp.run(str(tmp_path / "ar.ckpt"), given=[-1], out=str(tmp_path / "tp2"))
    with pytest.raises(tp.InputError, match="--rest"):
        tp.run(str(tmp_path / "ar.ckpt"), given=[2], rest="zeros", out=str(tmp_path / "tp3"))
