"""Behaviour of a (briefly) trained tiny tokenizer: more scales reconstruct better, self-correction
targets correct a corrupted prefix, checkpoint -> encode -> decode round trip."""
import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from _tokenizer_data import scene_batch, tiny_config
from callbacks.scale_dropping import ScaleDropping
from modules.tokenizer import TokenizerModule, load_tokenizer

STEPS = 150


@pytest.fixture(scope="module")
def trained():
    """Joint-stage training of the tiny tokenizer on 64 fixed 32 px scenes (plain loop, ~150 steps)."""
    torch.manual_seed(0)
    module = TokenizerModule(tokenizer=tiny_config(), stage="joint", val_oracle=False, rfid_extractor=None)
    tok, teacher = module.tokenizer.train(), module.teacher
    data = scene_batch(64, seed=1)
    opt = torch.optim.Adam([p for p in tok.parameters() if p.requires_grad], lr=3e-3)
    drop = ScaleDropping(0.5)
    for step in range(STEPS):
        sel = torch.randint(64, (16,), generator=torch.Generator().manual_seed(step))
        batch = {k: data[k][sel] for k in ("image", "class_map", "color_map")}
        x_rec, q, sem = tok(batch["image"], keep=drop.sample_keep(8, step))
        loss = F.mse_loss(x_rec, batch["image"]) + q.vq_loss + (1 - F.cosine_similarity(
            sem, teacher(batch, (8, 8)), dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 24:
            tok.quantizer.restart_dead_codes()
    return module.eval(), scene_batch(8, seed=99)  # held-out scenes


def mse(a, b):
    return float(F.mse_loss(a, b))


def test_reconstruction_improves_as_scales_are_added(trained):
    module, batch = trained
    x = batch["image"]
    codes = module.encode(x)
    errors = [mse(module.decode(codes.targets[:k], codes.schedule), x) for k in range(1, 9)]
    assert errors[-1] < 0.6 * errors[0]
    assert errors[-1] < errors[len(errors) // 2] < errors[0]
    assert sum(b < a for a, b in zip(errors, errors[1:])) >= 5  # mostly monotone


def test_self_correction_targets_correct_the_corrupted_prefix(trained):
    module, batch = trained
    x = batch["image"]
    g = torch.Generator().manual_seed(0)
    codes = module.encode(x, self_correct=0.6, topk=8, generator=g)
    clean = module.encode(x)
    s, K = codes.schedule, codes.schedule.num_scales
    pairs = []
    for k in (K - 3, K - 2, K - 1):  # corrupted prefix of k scales, then the top-1 target of scale k
        prefix_alone = mse(module.decode(codes.inputs[:k], s), x)
        corrected = mse(module.decode(codes.inputs[:k] + [codes.targets[k]], s), x)
        pairs.append((corrected, prefix_alone))
    # on 8 images the finest scale's correction is small (it can fall within ~0.5 % either way):
    # most scales correct, and the corrections win in total
    assert sum(c < p for c, p in pairs) >= 2
    assert sum(c for c, _ in pairs) < sum(p for _, p in pairs)
    assert sum(int((t != i).sum()) for t, i in zip(codes.targets, codes.inputs)) > 0.3 * x.shape[0] * s.token_count
    assert torch.equal(codes.targets[0], clean.targets[0])  # nothing corrupted before scale 1


def test_checkpoint_encode_decode_round_trip(trained, tmp_path):
    module, batch = trained
    x = batch["image"]
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.strategy.connect(module)
    path = tmp_path / "tok.ckpt"
    trainer.save_checkpoint(path)
    loaded = load_tokenizer(str(path))
    a, b = module.encode(x), loaded.encode(x)
    assert all(torch.equal(p, q) for p, q in zip(a.targets, b.targets))
    x_a, x_b = module.decode(a.targets, a.schedule), loaded.decode(b.targets, b.schedule)
    assert torch.equal(x_a, x_b)
    psnr = float(10 * torch.log10(4.0 / F.mse_loss(x_b, x)))  # images in [-1, 1]: peak-to-peak 2
    assert psnr > 17.0
    assert loaded.codebook_size == 256 and loaded.patch == 4
