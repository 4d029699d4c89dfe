"""AR loss: fused == naive through the whole model, modality/scale reporting, tiny overfit."""
import torch

from modules.ar import tasks
from modules.ar.config import ARConfig
from modules.ar.loss import ar_loss
from modules.ar.model import ARDecoder
from modules.common.sequence import SequenceBuilder, collate
from modules.common.scale_schedule import ScaleSchedule

SCH = ScaleSchedule.square(4)


def _batch(alpha=0.9, n=4, seed=0):
    torch.manual_seed(seed)
    cfg = ARConfig.from_name("tiny")
    m = ARDecoder(cfg)
    m.init_visual_from_codebook(torch.nn.functional.normalize(torch.randn(64, 40), dim=-1))
    b = SequenceBuilder(cfg.vocab, m.code_emb, cond_dropout=0.0, alpha=alpha)
    g = torch.Generator().manual_seed(seed)
    samples = []
    for i in range(n):
        codes = [torch.randint(0, 64, s, generator=g) for s in SCH.grids]
        samples.append(b.build(tasks.t2i(cfg.vocab, [65 + i, 66, 67], SCH, codes)))
        samples.append(b.build(tasks.i2t(cfg.vocab, SCH, codes, [70 + i, 71])))
    return m, collate(samples, row_len=128, pad_id=cfg.vocab.pad)


def test_fused_equals_naive_through_model():
    m, batch = _batch()
    fused = ar_loss(m, batch, chunk=7)
    gf = torch.autograd.grad(fused["loss"], [m.wte.weight, m.blocks[0].self_attn.q_proj.weight])
    naive = ar_loss(m, batch, fused=False)
    gn = torch.autograd.grad(naive["loss"], [m.wte.weight, m.blocks[0].self_attn.q_proj.weight])
    torch.testing.assert_close(fused["loss"], naive["loss"], rtol=1e-5, atol=1e-6)
    for a, b in zip(gf, gn):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    assert set(fused["scale_loss"]) == {0, 1, 2, 3} and fused["n_vision"] == 4 * 30
    assert fused["n_text"] == 4 * (1 + 3)  # t2i: <boi>; i2t: 2 answer tokens + <eos>


def test_reweighting_changes_total_not_per_scale_losses():
    m, b9 = _batch(alpha=0.9)
    _, b0 = _batch(alpha=0.0)
    o9, o0 = ar_loss(m, b9), ar_loss(m, b0)
    for s in range(4):
        torch.testing.assert_close(o9["scale_loss"][s], o0["scale_loss"][s])
    assert abs(float(o9["vision_loss"] - o0["vision_loss"])) > 1e-4
    torch.testing.assert_close(o9["vision_nll"], o0["vision_nll"])  # unweighted: the same under both α
    n = {s: float((b0.scale == s).logical_and(b0.target >= 0).sum()) for s in range(4)}  # tokens per scale
    mean = sum(float(o0["scale_loss"][s]) * n[s] for s in range(4)) / sum(n.values())
    assert abs(float(o0["vision_nll"]) - mean) < 1e-4 and abs(float(o0["vision_loss"]) - mean) < 1e-4
    assert float(b9.weight[b9.scale == 0].max()) > float(b9.weight[b9.scale == 3].max())  # coarse scales up


def test_tiny_overfit_loss_falls():
    m, batch = _batch(n=2)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        out = ar_loss(m, batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else float(out["loss"].detach())
    last = ar_loss(m, batch)
    assert float(last["loss"].detach()) < 0.3 * first
    assert float(last["text_loss"]) < 1.0 and float(last["scale_loss"][0]) < 1.0  # from ~5.6
