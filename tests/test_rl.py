"""Prefix-tuning GRPO (modules/rl): advantages, k3 KL, the sampling distribution the loss uses, the
prefix mask's gradient, the bounded GenEval partial credit on hand-built detections, DPG reward,
the no-signal guard, the prompt datamodule's split, a red-pixel sanity run that must raise its
reward, and the RL checkpoint read back by `generate` and by ARModule."""
from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch
from _tiny_checkpoints import write_tiny_checkpoints

from modules.rl.loss import grpo_loss, group_advantages, k3_kl, masked_norm, sampling_logprobs

RED = {"class_path": "evaluation.rewards.ColorFractionReward", "init_args": {"tolerance": 96.0}}


# ----------------------------------------------------------------------------- math
def test_group_advantages_hand_made():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.0, 0.2, 0.4, 0.6]])
    adv, valid = group_advantages(r, eps=1e-4)
    assert valid.tolist() == [True, False, True]
    assert torch.allclose(adv[0], torch.tensor([1, -1, -1, 1.0]) * 0.5 / (0.5 + 1e-4))
    assert adv[1].abs().sum() == 0  # zero-variance group: no signal
    std = math.sqrt((0.09 + 0.01 + 0.01 + 0.09) / 4)  # population std of (0, .2, .4, .6)
    assert torch.allclose(adv[2], (torch.tensor([0.0, 0.2, 0.4, 0.6]) - 0.3) / (std + 1e-4), atol=1e-6)


def test_k3_equals_closed_form_and_its_expectation_is_the_kl():
    # r = π_ref/π_θ = 0.25/0.5: r − log r − 1 = 0.5 + log 2 − 1
    v = k3_kl(torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)]))
    assert v.item() == pytest.approx(0.5 + math.log(2.0) - 1.0, abs=1e-7)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    q = torch.tensor([0.2, 0.2, 0.6], dtype=torch.float64)
    expect = (p * k3_kl(p.log(), q.log())).sum()  # E_{x~π_θ}[k3] = KL(π_θ ‖ π_ref) exactly
    assert expect.item() == pytest.approx((p * (p / q).log()).sum().item(), abs=1e-12)
    assert (k3_kl(p.log(), q.log()) >= 0).all()


def test_sampling_logprobs_are_the_samplers_distribution():
    """Empirical frequencies of `sample_step` match exp(sampling_logprobs) (temperature, top-k,
    top-p renormalised), and the support is exactly what the sampler can draw."""
    from modules.ar.sampler import StepConfig, sample_step

    torch.manual_seed(0)
    logits = torch.randn(1, 1, 12) * 2
    step = StepConfig(temperature=0.7, top_k=6, top_p=0.8)
    lp = sampling_logprobs(logits[0], step.temperature, step.top_k, step.top_p)[0]
    g = torch.Generator().manual_seed(1)
    draws = sample_step(logits.expand(20000, 1, 12), step, generator=g)[:, 0]
    freq = torch.bincount(draws, minlength=12).float() / 20000
    assert set(draws.unique().tolist()) == set(torch.isfinite(lp).nonzero()[:, 0].tolist())
    assert torch.allclose(freq, lp.exp(), atol=0.015)
    kept = sampling_logprobs(logits[0], 0.7, 6, 0.8, keep_N=torch.tensor([lp.argmin().item()]))[0]
    assert torch.isfinite(kept).sum() == torch.isfinite(lp).sum() + 1  # a forced code stays finite
    with pytest.raises(ValueError, match="greedy"):
        sampling_logprobs(logits[0], 0.0)


def _tokens(num_samples=2, grids=(1, 4, 9, 16)):
    sample = torch.cat([torch.full((sum(grids),), b) for b in range(num_samples)])
    scale = torch.cat([torch.cat([torch.full((a,), s) for s, a in enumerate(grids)])] * num_samples)
    return sample, scale


def test_per_scale_normalisation_and_token_mean():
    sample, scale = _tokens(1, (1, 3))
    x = torch.tensor([4.0, 1.0, 2.0, 3.0])
    on = torch.ones(4, dtype=torch.bool)
    assert masked_norm(x, on, sample, scale, "scale", 2).item() == pytest.approx((4.0 + 2.0) / 2)
    assert masked_norm(x, on, sample, scale, "token", 2).item() == pytest.approx(10.0 / 4)
    assert masked_norm(x, torch.zeros(4, dtype=torch.bool), sample, scale, "scale", 2).item() == 0.0


@pytest.mark.parametrize("kl_scales,beta", [("prefix", 0.1), ("all", 0.0)])
def test_prefix_mask_leaves_finer_scale_gradient_exactly_zero(kl_scales, beta):
    sample, scale = _tokens()
    N = len(sample)
    torch.manual_seed(0)
    lp = (torch.rand(N) * -3).requires_grad_()
    kl_lp = (torch.rand(N) * -3).requires_grad_()
    old = lp.detach() + 0.05 * torch.randn(N)
    out = grpo_loss(lp, old, kl_lp, torch.rand(N) * -3, torch.randn(N), sample, scale, torch.ones(N, dtype=bool),
                    prefix_scales=2, kl_scales=kl_scales, beta=beta, num_scales=4)
    out["loss"].backward()
    fine = scale >= 2
    assert (lp.grad[fine] == 0).all() and (kl_lp.grad[fine] == 0).all()
    assert (lp.grad[~fine] != 0).any()


def test_ratio_is_one_and_nothing_clipped_before_the_first_update():
    sample, scale = _tokens()
    lp = torch.rand(len(sample)) * -3
    out = grpo_loss(lp, lp.clone(), lp, lp, torch.randn(len(sample)), sample, scale, torch.ones(len(sample), dtype=bool),
                    prefix_scales=None, num_scales=4)
    assert out["ratio"].item() == 1.0 and out["clip_frac"].item() == 0.0 and out["kl"].item() == 0.0


# ----------------------------------------------------------------------------- rewards
class FakeDetector:
    def __init__(self, dets):
        self.dets = dets

    def detect(self, image):
        return self.dets


def _det(cls, box, color="red", score=0.95):
    return {"class": cls, "score": score, "bbox": list(box), "mask": None, "color": color}


def _score(meta, dets):
    from evaluation.rewards import ShapesGenEvalReward

    out = ShapesGenEvalReward(detector=FakeDetector(dets))([np.zeros((64, 64, 3), np.uint8)], [meta])
    return float(out["reward"][0]), bool(out["correct"][0])


def test_geneval_partial_credit_quirks_bounded():
    single = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    assert _score(single, [_det("circle", (0, 0, 9, 9))]) == (1.0, True)
    # 16 detections of a count-1 clause: Flow-GRPO's count term is 1 − 15 = −14; bounded: 0
    many = [_det("circle", (i, i, i + 4, i + 4)) for i in range(16)]
    # (strict GenEval only asks for >= count without an exclude clause: still "correct")
    assert _score(single, many) == (0.0, True)
    colors = {"tag": "colors", "include": [{"class": "square", "count": 1, "color": "blue"}], "prompt": "x"}
    # count wrong (none found): count term 0 and ONE 0.0 for colour/position together
    assert _score(colors, []) == (0.0, False)
    assert _score(colors, [_det("square", (0, 0, 9, 9), "red")]) == (0.5, False)  # count 1, colour 0
    counting = {"tag": "counting", "include": [{"class": "star", "count": 2}],
                "exclude": [{"class": "star", "count": 3}], "prompt": "x"}
    two = [_det("star", (0, 0, 9, 9)), _det("star", (20, 20, 29, 29))]
    assert _score(counting, two) == (1.0, True)
    # three stars: count term 1 − 1/2, colour/position none, exclude clause scored 0 (Flow-GRPO ignores it)
    r, ok = _score(counting, two + [_det("star", (40, 40, 49, 49))])
    assert (r, ok) == (pytest.approx((0.5 + 0.0) / 2), False)
    position = {"tag": "position", "include": [{"class": "circle", "count": 1},
                                               {"class": "square", "count": 1, "position": ["left of", 0]}],
                "prompt": "a photo of a square left of a circle"}
    left, right = (0, 20, 10, 30), (50, 20, 60, 30)
    assert _score(position, [_det("circle", right), _det("square", left)]) == (1.0, True)
    # failed relation: terms [1, 1, 0] -> 2/3 (Flow-GRPO appends an extra 1.0: 3/4)
    r, ok = _score(position, [_det("circle", left), _det("square", right)])
    assert (r, ok) == (pytest.approx(2 / 3), False)


def test_dpg_reward_dependency_rule_and_weighted_combination():
    from evaluation.rewards import DPGReward
    from modules.rl.module import WeightedReward
    from shapes.dpg import dpg_items
    from shapes.render import render
    from shapes.scene import Scene

    item = dpg_items(1, seed=3)[0]
    image = render(Scene.from_dict(item["scene"]), 64, 64).image
    meta = {k: item[k] for k in ("item_id", "prompt", "questions")}
    blank = np.full_like(image, 128)
    r = DPGReward()([image, blank], [meta, meta])["reward"]
    assert r[0] == pytest.approx(1.0)  # the scene it describes: every question "yes"
    assert r[1] < 0.5
    geneval = {"tag": "single_object", "include": [{"class": "circle", "count": 1}], "prompt": "a photo of a circle"}
    w = WeightedReward([{"class_path": "evaluation.rewards.DPGReward", "weight": 3.0},
                        {"class_path": "evaluation.rewards.ShapesGenEvalReward", "weight": 1.0}])
    out = w([image, image], [meta, geneval])
    assert out["reward"][0] == pytest.approx(1.0)  # only DPG applies to the DPG prompt
    assert np.isnan(out["DPGReward/reward"][1]) and out["reward"][1] == out["ShapesGenEvalReward/reward"][1]
    with pytest.raises(ValueError, match="no reward scores prompt"):
        WeightedReward({"class_path": "evaluation.rewards.DPGReward"})([image], [geneval])


def test_clip_reward_names_the_missing_checkpoint(tmp_path):
    from evaluation.rewards import CLIPReward

    with pytest.raises(FileNotFoundError, match="open_clip weights not found at .*nope.pt"):
        CLIPReward(str(tmp_path / "nope.pt"))


# ----------------------------------------------------------------------------- prompts
def test_prompt_datamodule_trains_only_on_the_training_split():
    from datamodules.prompts import TASKS, PromptDataModule
    from shapes.dpg import dpg_items
    from shapes.prompts import load_prompts
    from shapes.scene import Scene
    from shapes.split import held_out_reasons, scene_held_out, split_counts
    from torch.utils.data import DistributedSampler

    dm = PromptDataModule(geneval_per_tag=12, dpg_items=6, dpg_seed=5, eval_dpg_items=8, val_prompts=4)
    dm.setup("fit")
    evaluation = load_prompts()
    texts = [m["prompt"] for m in dm.train_set]
    assert texts and not set(texts) & {line["prompt"] for line in evaluation} and len(set(texts)) == len(texts)
    geneval = [m for m in dm.train_set if "include" in m]
    # every task, 12 lines each, none stating a held-out combination (the evaluation file has some of each)
    assert split_counts(geneval) == {tag: {"seen": 12, "unseen": 0} for tag in TASKS}
    assert all(split_counts(evaluation)[tag]["unseen"] > 0 for tag in TASKS if tag != "single_object")
    assert not any(held_out_reasons(m) for m in geneval)
    # DPG items: training scenes only, none of the suite's items
    dpg = [m for m in dm.train_set if "questions" in m]
    assert len(dpg) == 6 and not {m["prompt"] for m in dpg} & {it["prompt"] for it in dpg_items(8, seed=0)}
    from datamodules.prompts import dpg_training_items

    assert not any(scene_held_out(Scene.from_dict(it["scene"])) for it in dpg_training_items(40, 5, 64, 64))
    assert len(dm.val_set) == 4 and all(v in evaluation for v in dm.val_set)
    # DDP: every rank builds the same list; the sampler splits it into equal disjoint halves
    twin = PromptDataModule(geneval_per_tag=12, dpg_items=6, dpg_seed=5, eval_dpg_items=8, val_prompts=4)
    twin.setup("fit")
    assert [m["prompt"] for m in twin.train_set] == texts
    halves = [list(DistributedSampler(dm.train_set, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert len(halves[0]) == len(halves[1]) and len(set(halves[0]) | set(halves[1])) == len(dm.train_set)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, list) and len(batch) == 4 and "prompt" in batch[0]


def test_training_pool_is_every_allowed_combination_in_every_phrasing():
    from datamodules.prompts import PHRASINGS, geneval_training_pool
    from shapes.prompts import geneval_prompts
    from shapes.split import held_out_reasons

    pool = geneval_training_pool("counting")
    # 6 shapes x counts 2-4 minus the 4 held-out (shape, count) pairs, in 4 phrasings
    assert len(pool) == (18 - 4) * len(PHRASINGS)
    assert {"a photo of two circles", "two circles", "an image with two circles"} <= {m["prompt"] for m in pool}
    assert "a photo of three circles" not in {m["prompt"] for m in pool}   # (circle, 3) is held out
    # the "a photo of" lines are exactly the generator's allowed lines (same clauses, same text)
    official = {m["prompt"]: m for m in geneval_prompts(seed=3) if m["tag"] == "position" and not held_out_reasons(m)}
    ours = {m["prompt"]: m for m in geneval_training_pool("position") if m["prompt"].startswith("a photo of")}
    assert official and all(ours[p] == m for p, m in official.items())
    with pytest.raises(ValueError, match="unknown GenEval task 'shape'"):
        geneval_training_pool("shape")


# ----------------------------------------------------------------------------- the module
@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("rl"))


def _module(ckpts, **kw):
    from modules.rl import GRPOModule

    args = dict(policy_ckpt=str(ckpts / "ar.ckpt"), group_size=4, image_size=16, reward=RED, lr=1e-2)
    return GRPOModule(**{**args, **kw})


PROMPTS = [{"prompt": "a photo of a red circle"}, {"prompt": "two blue stars"}]


def test_teacher_forced_logprobs_equal_the_samplers_and_prefix_gradient(ckpts):
    """On-policy: the loss's log-probs (one block-causal pass) equal the sampler's own (KV-cached),
    with top-k/top-p on; the PG loss sends exactly zero gradient to finer-scale logits."""
    m = _module(ckpts, sampling={"temperature": [1.0, 0.8], "top_k": 20, "top_p": 0.9}, prefix_scales=2)
    ro = m.rollout(PROMPTS, 4, seed=3)
    tok = m.sequences(ro["captions"], ro["codes"])
    logits, idx = m.image_logits(m.model, tok)
    lp = m.token_logprobs(logits, idx, truncated=True)
    assert len(lp) == 8 * m.schedule.token_count
    assert torch.allclose(lp, m.sampler_logprobs(ro["record"], ro["codes"]), atol=1e-4)
    assert torch.isfinite(lp).all()
    logits.retain_grad()
    adv = torch.randn(8)[idx["sample"]]
    out = grpo_loss(lp, lp.detach(), lp, lp.detach(), adv, idx["sample"], idx["scale"], torch.ones_like(adv, dtype=bool),
                    prefix_scales=2, beta=0.0, num_scales=m.schedule.num_scales)
    assert out["ratio"].item() == 1.0
    out["loss"].backward()
    fine = idx["scale"] >= 2
    assert (logits.grad[fine] == 0).all() and (logits.grad[~fine] != 0).any()


GUIDED = {"guidance": 3.0, "temperature": [1.0, 0.8], "top_k": 20, "top_p": 0.9}


def test_cfg_rule_none_refuses_guidance_and_unknown_rules_are_named(ckpts):
    with pytest.raises(ValueError, match="guidance=3.0 with cfg_rule 'none'.*cfg_rule: guided"):
        _module(ckpts, sampling=GUIDED)
    with pytest.raises(ValueError, match="cfg_rule='cfg'"):
        _module(ckpts, sampling=GUIDED, cfg_rule="cfg")


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_guided_rule_logprobs_are_the_samplers_and_the_ratio_is_one(ckpts, schedule):
    """cfg_rule "guided": rollouts with CFG; the loss's log-probs (one teacher-forced pass over the
    conditional and the condition-dropped rows, combined per scale) equal the log-probs of the
    sampler's own step on its KV-cached logits, so the ratio is exactly 1 before the first update;
    the guided logits are (1+t_s)·cond − t_s·uncond of the two passes run apart, and the gradient
    reaches the unconditional pass on every guided scale."""
    from modules.ar import tasks
    from modules.ar.decode_state import builder_for
    from modules.common.sequence import collate

    m = _module(ckpts, sampling={**GUIDED, "guidance_schedule": schedule}, cfg_rule="guided", prefix_scales=None)
    K = m.schedule.num_scales
    t = [m.sampling.guidance_at(s, K) for s in range(K)]
    assert m.guidance_K.tolist() == pytest.approx(t) and max(t) == 3.0
    ro = m.rollout(PROMPTS, 4, seed=3)
    assert ro["record"][-1].shape[0] == 16  # the sampler ran the unconditional rows: CFG was on
    tok = m.sequences(ro["captions"], ro["codes"])
    assert tok.ids.shape[0] == 16
    logits, idx = m.image_logits(m.model, tok)
    lp = m.token_logprobs(logits, idx, truncated=True)
    assert len(lp) == 8 * m.schedule.token_count and torch.isfinite(lp).all()
    assert torch.allclose(lp, m.sampler_logprobs(ro["record"], ro["codes"]), atol=1e-4)
    # without the unconditional pass the log-probs are not the sampler's (guidance matters here)
    cond, _ = m.pass_logits(m.model, m.sequences(ro["captions"], ro["codes"], guided=False))
    assert (m.token_logprobs(cond, idx, truncated=True) - lp).abs().max() > 1e-2
    # the guided logits are the sampler's combine of the two passes run apart
    V, b = m.model.config.vocab, builder_for(m.model)
    drop = collate([b.build(tasks.t2i(V, c, m.schedule, cd), drop_cond=True)
                    for c, cd in zip(ro["captions"], ro["codes"])], pad_id=V.pad)
    uncond, uidx = m.pass_logits(m.model, drop)
    assert torch.equal(uidx["target"], idx["target"]) and torch.equal(uidx["scale"], idx["scale"])
    t_N1 = torch.tensor(t)[idx["scale"]][:, None]
    assert torch.allclose(logits, (1 + t_N1) * cond - t_N1 * uncond, atol=1e-4)
    # ratio exactly 1 at the first inner step; gradient through the unconditional logits
    cond, uncond = cond.detach().requires_grad_(), uncond.detach().requires_grad_()
    g_lp = m.token_logprobs(m.guide(cond, uncond, idx["scale"]), idx, truncated=True)
    adv = torch.randn(8)[idx["sample"]]
    out = grpo_loss(g_lp, g_lp.detach(), g_lp, g_lp.detach(), adv, idx["sample"], idx["scale"],
                    torch.ones_like(adv, dtype=bool), prefix_scales=None, beta=0.0, num_scales=K)
    assert out["ratio"].item() == 1.0 and out["clip_frac"].item() == 0.0
    out["loss"].backward()
    for s in range(K):
        at = idx["scale"] == s
        assert (uncond.grad[at] != 0).any() == (t[s] != 0), (s, t[s])
        assert (cond.grad[at] != 0).any()


def test_guided_rule_trains_on_policy(ckpts):
    """A guided training step (one update per rollout batch) logs ratio 1, no clipping and the
    sampler's own log-probs."""
    log = Rewards()
    m = _module(ckpts, sampling={**GUIDED, "guidance_schedule": "constant"}, cfg_rule="guided", inner_steps=1)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    _fit(m, 2, callbacks=[log])
    assert len(log.rows) == 2
    for row in log.rows:
        assert row["train/ratio"] == 1.0 and row["train/clip_frac"] == 0.0
        assert row["train/sampler_logp_gap"] < 1e-3
    assert any(not torch.equal(v, before[k]) for k, v in m.model.state_dict().items())


def _fit(module, steps, tmp_path=None, **trainer_kw):
    from datamodules.prompts import PromptDataModule

    L.seed_everything(0)
    dm = PromptDataModule(geneval_per_tag=2, batch_size=2, val_prompts=0)
    kw = dict(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer = L.Trainer(**{**kw, **trainer_kw})
    trainer.fit(module, dm)
    return trainer


def test_stall_guard_stops_a_run_without_signal(ckpts):
    never = {"class_path": "evaluation.rewards.ColorFractionReward", "init_args": {"rgb": [1, 2, 3], "tolerance": 0.0}}
    with pytest.raises(RuntimeError, match="2 consecutive steps every reward was 0"):
        _fit(_module(ckpts, reward=never, stall_steps=2), 5)


class Rewards(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")})


def test_red_pixel_reward_rises(ckpts):
    """The GRPO sanity check: reward = fraction of red pixels. A tiny policy on a random tokenizer
    (8 px images: 2 scales, 5 tokens; the random decoder's reddest single code covers about 16% of
    the pixels) raises it within 20 rollout batches (40 updates) on CPU."""
    log = Rewards()
    _fit(_module(ckpts, group_size=16, image_size=8, inner_steps=2, prefix_scales=None, beta=0.0), 40, callbacks=[log])
    r = [row["train/reward"] for row in log.rows]
    assert len(r) == 20
    assert np.mean(r[-4:]) > np.mean(r[:4]) + 0.02, r
    first = log.rows[0]
    assert first["train/sampler_logp_gap"] < 1e-3  # the loss's log-probs are the sampler's
    for key in ("train/kl", "train/ratio", "train/clip_frac", "train/zero_var_frac", "train/entropy_scale_00",
                "train/kl_scale_01", "train/groups_dropped"):
        assert key in first


def test_rl_checkpoint_loads_in_generate_and_armodule(ckpts, tmp_path):
    from commands.generate import run
    from modules.ar.module import ARModule
    from modules.ar.sampler import load_generator

    m = _module(ckpts, inner_steps=2)
    before = {k: v.clone() for k, v in m.model.state_dict().items()}
    trainer = _fit(m, 2, default_root_dir=str(tmp_path))
    path = tmp_path / "rl.ckpt"
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=False)
    assert set(raw["state_dict"]) == {f"model.{k}" for k in before}  # policy only, no reference copy
    model, meta = load_generator(str(path))
    trained = m.model.state_dict()
    assert all(torch.equal(v, trained[k].cpu()) for k, v in model.state_dict().items())
    assert any(not torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert meta["tokenizer_ckpt"] == str(ckpts / "tok.ckpt")
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    res = run(ckpt=str(path), prompts=str(prompts), out=str(tmp_path / "gen"), samples=1, height=16, width=16)
    assert res["generated"] == 1
    ar = ARModule(preset="tiny", tokenizer_ckpt=str(ckpts / "tok.ckpt"))
    ar.load_state_dict(raw["state_dict"])  # what `validate --config <AR> --ckpt_path rl.ckpt` does
    ar.on_load_checkpoint(raw)
    assert all(torch.equal(v, trained[k].cpu()) for k, v in ar.model.state_dict().items())
    # resume: a GRPOModule checkpoint loads back into a GRPOModule (reference rebuilt from policy_ckpt)
    again = _module(ckpts)
    again.load_state_dict(raw["state_dict"])
    assert all(torch.equal(v, trained[k].cpu()) for k, v in again.model.state_dict().items())


@pytest.fixture(scope="module")
def cli_fit(ckpts, tmp_path_factory):
    """configs/experiment/rl_shapes_grpo.yaml through `main.py fit` (shrunk: 16 px, G = 2, two
    steps with a validation pass); the run folder."""
    import os
    from pathlib import Path

    import main

    root, here = Path(__file__).resolve().parents[1], os.getcwd()
    out = tmp_path_factory.mktemp("rl_cli")
    os.chdir(out)
    try:
        code = main.main(["fit", "--config", str(root / "configs/experiment/rl_shapes_grpo.yaml"),
                          f"--model.init_args.policy_ckpt={ckpts / 'ar.ckpt'}", "--model.init_args.image_size=16",
                          "--model.init_args.group_size=2", "--data.init_args.batch_size=2",
                          "--data.init_args.dpg_items=2",
                          f"--data.init_args.exclude_prompts=[{root / 'configs/prompts/geneval_shapes.jsonl'}]",
                          "--data.init_args.val_prompts=2", "--trainer.max_steps=2", "--trainer.val_check_interval=1",
                          "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
                          "--trainer.enable_progress_bar=false"])
    finally:
        os.chdir(here)
    assert code == 0
    return out


def test_experiment_config_fits_and_validates_through_main(ckpts, cli_fit):
    """The RL experiment's fit logs the rewards, and the checkpoint it writes is read back by load_generator."""
    from modules.ar.sampler import load_generator

    metrics = (cli_fit / "runs/rl_shapes_grpo/metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/reward", "train/kl", "train/ratio", "train/clip_frac", "train/zero_var_frac",
            "train/ShapesGenEvalReward/correct", "val/reward"} <= set(metrics)
    model, meta = load_generator(str(cli_fit / "runs/rl_shapes_grpo/last.ckpt"))
    assert meta["tokenizer_ckpt"] == str(ckpts / "tok.ckpt")


def test_validate_cli_loads_the_rl_policy_with_the_ar_config(ckpts, cli_fit, tmp_path, monkeypatch):
    """`main.py validate --config configs/experiment/ar_shapes_t2i.yaml --ckpt_path <GRPOModule
    checkpoint>` (commands/lightning_cli.py): the CLI keeps the AR config's ARModule and the
    validation runs on the policy's trained weights, not on the AR checkpoint RL started from."""
    from pathlib import Path

    import main
    from modules.ar.module import ARModule
    from modules.ar.sampler import load_generator
    from modules.tokenizer import checkpoint_fingerprint
    from tests.test_ar_module import make_shards

    rl_path = cli_fit / "runs/rl_shapes_grpo/last.ckpt"
    assert torch.load(rl_path, weights_only=False)["hyper_parameters"]["_class_path"].endswith(".GRPOModule")
    policy = load_generator(str(rl_path))[0].state_dict()
    start = load_generator(str(ckpts / "ar.ckpt"))[0].state_dict()
    assert any(not torch.equal(v, start[k]) for k, v in policy.items())  # RL moved the weights

    shards = make_shards(tmp_path / "pretok", side=3, n=4, codebook=64, i2t_every=0,
                         fingerprint=checkpoint_fingerprint(ckpts / "tok.ckpt"))
    seen = []
    original = ARModule.validation_step

    def spy(self, batch, batch_idx):
        if not seen:
            seen.append({k: v.detach().clone() for k, v in self.model.state_dict().items()})
        return original(self, batch, batch_idx)

    monkeypatch.setattr(ARModule, "validation_step", spy)
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1]
    code = main.main(["validate", "--config", str(root / "configs/experiment/ar_shapes_t2i.yaml"),
                      "--model.init_args.preset=tiny", "--model.init_args.overrides={}",
                      "--model.init_args.text_tokenizer=bytes", "--model.init_args.self_correct=false",
                      f"--model.init_args.tokenizer_ckpt={ckpts / 'tok.ckpt'}",
                      f"--data.init_args.train_dirs={{'64': '{shards}'}}", f"--data.init_args.val_dir={shards}",
                      "--data.init_args.val_batch_size=2", "--trainer.callbacks=[]", "--trainer.logger=false",
                      "--trainer.limit_val_batches=1", "--trainer.accelerator=cpu",
                      "--trainer.enable_progress_bar=false", f"--ckpt_path={rl_path}"])
    assert code == 0 and seen
    assert seen[0].keys() == policy.keys()
    assert all(torch.equal(seen[0][k], v) for k, v in policy.items())


# ----------------------------------------------------------------------------- the rl_prefix sweep
def _rl_prefix_sweep():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    return root, yaml.safe_load((root / "configs/sweeps/rl_prefix.yaml").read_text())


def test_rl_prefix_sweep_points_mean_what_fit_would_run():
    """configs/sweeps/rl_prefix.yaml, each point parsed as `main.py fit` parses it: PG on scales
    1..2, 1..4 and all, the KL on all scales everywhere, the same wall-clock limit, rollouts with the
    suite's CFG (the config's guided rule)."""
    from commands.lightning_cli import parse_config
    from commands.sweep import expand_points, load_base, point_args

    root, sweep = _rl_prefix_sweep()
    base = [str(root / b) for b in sweep["base"]]
    config = load_base(base)
    got = {}
    for name, overrides in expand_points(sweep.get("grid"), sweep.get("list")):
        parsed = parse_config(["fit", *point_args(base, {**sweep["fixed"], **overrides}, config, None)])
        args = parsed["model"]["init_args"]
        assert parsed["trainer"]["max_time"] == {"minutes": 6} and parsed["trainer"]["max_steps"] == 100000, name
        got[name] = (args["prefix_scales"], args["kl_scales"], args["cfg_rule"], args["sampling"]["guidance"])
    assert got == {"000_prefix_2": (2, "all", "guided", 5.0), "001_prefix_4": (4, "all", "guided", 5.0),
                   "002_all_scales": (None, "all", "guided", 5.0)}


@pytest.mark.slow
def test_rl_prefix_sweep_runs_toy_sized(ckpts, tmp_path, monkeypatch):
    """`main.py sweep` on the shipped rl_prefix points, shrunk (tiny policy, 16 px, one step each):
    every point finishes and logs the per-scale KL the drift measure reads."""
    import json

    import yaml

    import main

    root, sweep = _rl_prefix_sweep()
    toy = {"model.init_args.policy_ckpt": str(ckpts / "ar.ckpt"), "model.init_args.image_size": 16,
           "model.init_args.group_size": 2, "model.init_args.inner_steps": 1, "data.init_args.batch_size": 2,
           "data.init_args.dpg_items": 2, "data.init_args.val_prompts": 0,
           "data.init_args.exclude_prompts": [str(root / "configs/prompts/geneval_shapes.jsonl")],
           "trainer.max_steps": 1, "trainer.limit_val_batches": 0, "trainer.val_check_interval": None,
           "trainer.accelerator": "cpu"}
    small = {**sweep, "base": [str(root / b) for b in sweep["base"]], "fixed": {**sweep["fixed"], **toy},
             "out_dir": str(tmp_path / "out")}
    path = tmp_path / "rl_prefix_toy.yaml"
    path.write_text(yaml.safe_dump(small))
    monkeypatch.chdir(tmp_path)
    assert main.main(["sweep", "--config", str(path)]) == 0
    points = json.loads((tmp_path / "out" / "sweep.json").read_text())["points"]
    assert [p["name"] for p in points] == ["000_prefix_2", "001_prefix_4", "002_all_scales"]
    for p in points:
        assert p["status"] == "done", p.get("error")
        csv = p["metrics"]["csv"]
        assert {"train/kl", "train/kl_scale_00", "train/kl_scale_01", "train/reward"} <= set(csv), p["name"]
        assert (tmp_path / "out" / p["dir"] / "last.ckpt").is_file()
