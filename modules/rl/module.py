"""GRPOModule: prefix-tuning GRPO on the unified AR model (NF-RL; REFERENCE.md "Prefix-tuning GRPO").

Each training step, for a batch of P prompts (datamodules/prompts.py):
  1. rollouts: G images per prompt with the project's KV-cached sampler
     (`modules.ar.sampler.generate_images`, no grad), decoded by the tokenizer;
  2. rewards (any object `reward(images, metadata) -> {"reward": (N,), ...}`, built from a class
     path, several combined with weights; evaluation/rewards.py has the Shapes ones);
  3. group-relative advantages, zero-variance groups dropped and counted (modules/rl/loss.py);
  4. one teacher-forced block-causal pass over the sampled sequences (built with the per-sample
     `SequenceBuilder`, exactly the training layout) gives the policy's log-probs under the
     sampling distribution; a no-grad pass of the frozen reference gives the KL's;
  5. PPO-clip loss on the first `prefix_scales` scales + β·k3 KL, `inner_steps` updates.

On-policy by construction: the loss's log-probs use the sampler's distribution (same per-scale
temperature, same top-k / top-p truncation renormalised). The CFG rule is stated (`cfg_rule`):
  "none": no CFG in rollouts (the sampling config must have guidance 0; REFERENCE.md reports
      collapse with CFG in rollouts, and VAR's ramp gives the coarse prefix almost no guidance);
  "guided": rollouts sample with the configured guidance and schedule, and the loss is on the
      guided logits: the teacher-forced pass runs each sampled sequence twice, with its caption
      and with the condition dropped (the sampler's unconditional rows, `drop_cond=True`, the way
      ARModule's cond_dropout trains them), and combines them per scale as the sampler does
      (VAR: (1+t_s)·cond − t_s·uncond, t_s from `SamplingConfig.guidance_at`) before
      temperature and log-softmax, for the policy, the pre-update policy and the reference.
      Gradients flow through both passes (shared weights). The evaluation scores with CFG; this
      rule optimises the distribution it scores.
The KL uses the untruncated temperature-scaled distributions of both models (a truncated
reference can give the sampled code probability 0, an infinite KL).

Checkpoints: only the policy is saved (`model.*`, the ARModule layout) with the ARModule keys and the
sampler-checkpoint metadata, so `generate`/`sweep` (modules.ar.sampler.load_generator) and
`validate --config <AR experiment> --ckpt_path <rl.ckpt>` read it like an AR checkpoint. The
reference is rebuilt from `policy_ckpt` on resume.
"""
from __future__ import annotations

import copy
import dataclasses
import importlib
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch

from modules.ar import tasks
from modules.ar.decode_state import builder_for
from modules.ar.sampler import SamplingConfig, cfg_combine, generate_images, load_generator, truncated_logits
from modules.common.images import to_uint8
from modules.common.scale_schedule import ScaleSchedule
from modules.common.sequence import IGNORE, Tokens, collate
from modules.rl.loss import grpo_loss, group_advantages, k3_kl, sampling_logprobs
from modules.text import build_text_tokenizer

DEFAULT_REWARD = {"class_path": "evaluation.rewards.ShapesGenEvalReward"}


def build_reward(spec: Any) -> Any:
    """A reward object from `{class_path, init_args}` (imported by path, as jsonargparse does; this
    module never imports evaluation/ itself) or an object that is already callable."""
    if callable(spec) and not isinstance(spec, dict):
        return spec
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"a reward must be {{class_path: package.module.Class, init_args: {{...}}}}; got {spec!r}")
    module_name, _, name = str(spec["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as err:
        raise ValueError(f"reward class_path {spec['class_path']!r} is not importable: {err}") from err
    return cls(**dict(spec.get("init_args") or {}))


class WeightedReward:
    """Σ_i w_i r_i over the rewards that score a sample (a reward returns NaN for metadata it does
    not apply to, e.g. a GenEval reward on a DPG prompt), divided by Σ of those w_i. Each part's raw
    values come back as "<name>/reward" and its other keys as "<name>/<key>"."""

    def __init__(self, specs: list[dict] | dict):
        specs = specs if isinstance(specs, list) else [specs]
        self.parts = []
        for spec in specs:
            spec = dict(spec) if isinstance(spec, dict) else {"reward": spec}
            weight = float(spec.pop("weight", 1.0))
            name = spec.pop("name", None)
            obj = build_reward(spec.get("reward", spec))
            self.parts.append((name or type(obj).__name__, weight, obj))

    def __call__(self, images: list[np.ndarray], metadata: list[dict]) -> dict[str, np.ndarray]:
        total, weights, out = np.zeros(len(images)), np.zeros(len(images)), {}
        for name, w, obj in self.parts:
            res = obj(images, metadata)
            r = np.asarray(res["reward"], dtype=np.float64)
            if r.shape != (len(images),):
                raise ValueError(f"reward {name} returned shape {r.shape} for {len(images)} images")
            ok = ~np.isnan(r)
            total[ok] += w * r[ok]
            weights[ok] += w
            out[f"{name}/reward"] = r
            out.update({f"{name}/{k}": np.asarray(v, dtype=np.float64) for k, v in res.items() if k != "reward"})
        if (weights == 0).any():
            i = int(np.flatnonzero(weights == 0)[0])
            raise ValueError(f"no reward scores prompt {metadata[i].get('prompt')!r}: add a reward that applies to "
                             f"it (GenEval rewards need 'include' clauses, DPG rewards 'questions')")
        out["reward"] = total / weights
        return out


class GRPOModule(pl.LightningModule):
    """Args:
        policy_ckpt: the starting policy, an AR checkpoint (sampler checkpoint or ARModule Lightning
            checkpoint; modules.ar.sampler.load_generator); also the frozen reference.
        tokenizer_ckpt: overrides the tokenizer path the policy checkpoint recorded.
        reward: one {class_path, init_args} or a list of them, each with an optional `weight`.
        group_size: G images per prompt. prefix_scales: m, the scales with a PG term (None: all).
        kl_scales: KL on the "prefix" scales or on "all". beta: KL weight. clip_range: PPO ε.
        loss_norm: "scale" (each scale's summed loss / its token count, averaged over scales) or
            "token" (token mean). inner_steps: updates per rollout batch (the ratio is 1 at the first).
        image_size: rollout resolution (square). sampling: SamplingConfig keys (guidance only
            under cfg_rule "guided").
        cfg_rule: "none" (rollouts without CFG; sampling.guidance must be 0) or "guided" (rollouts
            with sampling.guidance / guidance_schedule, the loss on the guided logits).
        stall_steps: stop with an error after this many consecutive steps whose rewards are all 0
            or whose groups all have zero variance (no learning signal).
    """

    def __init__(self, policy_ckpt: str | None = None, tokenizer_ckpt: str | None = None,
                 reward: dict | list[dict] | None = None, group_size: int = 8, prefix_scales: int | None = 2,
                 kl_scales: Literal["prefix", "all"] = "all", beta: float = 0.04, clip_range: float = 0.2,
                 loss_norm: Literal["scale", "token"] = "scale", inner_steps: int = 1, adv_eps: float = 1e-4,
                 image_size: int = 64, sampling: dict[str, Any] | None = None, val_group_size: int = 2,
                 lr: float = 1e-5, weight_decay: float = 0.05, betas: tuple[float, float] = (0.9, 0.95),
                 grad_clip: float = 1.0, stall_steps: int = 20, seed: int = 0,
                 cfg_rule: Literal["none", "guided"] = "none"):
        super().__init__()
        self.save_hyperparameters()
        if not policy_ckpt:
            raise ValueError("GRPOModule needs policy_ckpt: pass --model.init_args.policy_ckpt <AR checkpoint> "
                             "(e.g. runs/ar_shapes_t2i/last.ckpt)")
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 (group-relative advantages), got {group_size}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps must be >= 1, got {inner_steps}")
        self.sampling = SamplingConfig.from_dict(sampling)
        if cfg_rule not in ("none", "guided"):
            raise ValueError(f"cfg_rule={cfg_rule!r}: choose 'none' (rollouts without CFG) or 'guided' (rollouts "
                             "with sampling.guidance, the loss on the guided logits)")
        if cfg_rule == "none" and self.sampling.guidance != 0:
            raise ValueError(f"sampling.guidance={self.sampling.guidance} with cfg_rule 'none': rollouts are sampled "
                             "without CFG (the loss would otherwise be off-policy); set guidance: 0, or "
                             "cfg_rule: guided to sample with CFG and put the loss on the guided logits")
        self.automatic_optimization = False
        self.model, meta = load_generator(policy_ckpt, tokenizer_ckpt=tokenizer_ckpt)
        self.model.train()
        self.meta = meta
        self.hparams["tokenizer_ckpt"] = meta.get("tokenizer_ckpt")  # resolved (BenchmarkCallback decodes with it)
        if not meta.get("tokenizer_ckpt"):
            raise ValueError(f"policy checkpoint {policy_ckpt} records no tokenizer; pass "
                             "--model.init_args.tokenizer_ckpt <tokenizer checkpoint>")
        ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        from modules.tokenizer import load_tokenizer

        tok = load_tokenizer(meta["tokenizer_ckpt"]).requires_grad_(False)
        self._frozen = {"ref": ref, "tokenizer": tok}  # not submodules: never saved, never trained
        self.text_tokenizer = build_text_tokenizer(meta.get("text_tokenizer") or "bytes",
                                                   meta.get("text_tokenizer_path"), self.model.config.text_vocab_size)
        self.schedule = ScaleSchedule.for_image(image_size, image_size, tok.patch)
        K = self.schedule.num_scales
        # t_s per scale under "guided"; None when no scale is guided (the teacher-forced pass is then
        # the conditional one alone, exactly the "none" rule)
        ts = [self.sampling.guidance_at(s, K) for s in range(K)]
        self.guidance_K = torch.tensor(ts) if cfg_rule == "guided" and any(t != 0 for t in ts) else None
        self.reward = WeightedReward(reward if reward is not None else DEFAULT_REWARD)
        # read by callbacks.evaluation.BenchmarkCallback, like ARModule's
        self.trained_scale_counts = dict(meta.get("trained_scale_counts") or {})
        self.trained_tokenizer_fingerprint = meta.get("tokenizer_fingerprint")
        self._stalled = 0

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.trainer.world_size > 1 and self.hparams.inner_steps > 1:
            # DDP syncs gradients once per wrapped forward; several backward passes in one step break it
            raise ValueError(f"inner_steps={self.hparams.inner_steps} with {self.trainer.world_size} processes: "
                             "under DDP use inner_steps 1 (one update per rollout batch)")

    # ------------------------------------------------------------------ frozen parts
    def _get(self, name: str):
        m = self._frozen[name]
        if next(m.parameters()).device != self.device:
            self._frozen[name] = m = m.to(self.device)
        return m

    @property
    def ref(self):
        return self._get("ref")

    @property
    def tokenizer(self):
        return self._get("tokenizer")

    # ------------------------------------------------------------------ rollouts
    def rollout(self, prompts: list[dict], group: int, seed: int) -> dict:
        """G samples per prompt: captions, per-scale codes, images (uint8), rewards and the rest of
        the reward's outputs, row order prompt-major."""
        caps = [self.text_tokenizer.encode(m["prompt"]) for m in prompts]
        flat = [c for c in caps for _ in range(group)]
        cfg = dataclasses.replace(self.sampling, seed=seed)
        record: list[torch.Tensor] = []
        codes = generate_images(self.model, flat, self.schedule, cfg, record=record)
        maps = [torch.stack([c[k] for c in codes]).to(self.device) for k in range(self.schedule.num_scales)]
        with torch.no_grad():
            images = list(to_uint8(self.tokenizer.decode(maps, self.schedule)))
        scored = self.reward(images, [m for m in prompts for _ in range(group)])
        return {"captions": flat, "codes": codes, "images": images, "scores": scored, "record": record,
                "rewards": torch.as_tensor(scored["reward"], dtype=torch.float32, device=self.device)}

    def sampler_logprobs(self, record: list[torch.Tensor], codes: list[list[torch.Tensor]]) -> torch.Tensor | None:
        """Log-prob of every sampled code under the distribution the sampler drew it from: the
        generator's `record` (one entry per forward, the last K are the scales; rows: the n
        conditional ones, then the n unconditional ones while a later scale is guided) through the
        sampler's own step (`modules.ar.sampler.truncated_logits`: CFG combine, visual codes,
        temperature, top-k, top-p); token order sample-major, scale, row-major as in the
        sequences. None when the record does not have that layout. The on-policy check: the
        teacher-forced log-probs must equal these."""
        K, V, n = self.schedule.num_scales, self.model.config.vocab, len(codes)
        if len(record) < K:
            return None
        allowed = V.visual_mask()
        per_scale = []
        for s, logits in enumerate(record[-K:]):
            if logits.shape[0] not in (n, 2 * n) or logits.shape[1] != self.schedule.areas[s]:
                return None
            uncond = logits[n:] if logits.shape[0] == 2 * n else None
            st = self.sampling.step(s, K)
            x, offset = truncated_logits(logits[:n], st, allowed, uncond)
            if offset != V.visual_offset or x.shape[-1] != V.special_offset - V.visual_offset:
                return None
            tgt = torch.stack([codes[b][s].reshape(-1).cpu() for b in range(n)])
            per_scale.append(x.log_softmax(-1).gather(-1, tgt[..., None])[..., 0])  # (n, area_s)
        return torch.cat(per_scale, dim=1).reshape(-1).to(self.device)

    def sequences(self, captions: list[list[int]], codes: list[list[torch.Tensor]],
                  guided: bool | None = None) -> Tokens:
        """The sampled sequences as training saw them (per-sample SequenceBuilder, t2i layout, no
        condition dropout), collated one sample per row. `guided` (default: cfg_rule "guided" with
        a guided scale) appends the same sequences with the condition dropped (`drop_cond=True`:
        the sampler's unconditional rows, ARModule's cond_dropout): rows [0, n) conditional,
        [n, 2n) unconditional."""
        guided = self.guidance_K is not None if guided is None else guided
        V, b = self.model.config.vocab, builder_for(self.model)
        drops = (False, True) if guided else (False,)
        samples = [b.build(tasks.t2i(V, c, self.schedule, [x.cpu() for x in cd]), drop_cond=d)
                   for d in drops for c, cd in zip(captions, codes)]
        return collate(samples, pad_id=V.pad).to(self.device)

    def pass_logits(self, model, tok: Tokens) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One teacher-forced block-causal pass: visual logits (N, codebook) at every image token
        that predicts a code, and per token its target code, sample (row) and scale (0-based);
        tokens in row order, each row's in sequence order."""
        V = self.model.config.vocab
        sel = (tok.scale >= 0) & (tok.scale < self.schedule.num_scales) & (tok.target != IGNORE)
        h = model(**tok.model_inputs(), mask=tok.mask(), return_hidden=True)[sel]
        logits = h.float() @ model.head_weight()[V.visual_offset:V.special_offset].float().T
        rows = torch.arange(tok.ids.shape[0], device=tok.ids.device)[:, None].expand_as(tok.ids)
        return logits, {"target": tok.target[sel] - V.visual_offset, "sample": rows[sel], "scale": tok.scale[sel]}

    def guide(self, cond_NV: torch.Tensor, uncond_NV: torch.Tensor, scale_N: torch.Tensor) -> torch.Tensor:
        """The sampler's CFG combine per token (VAR; `modules.ar.sampler.truncated_logits`):
        (1+t_s)·cond − t_s·uncond with the schedule's t_s of each token's scale; differentiable
        in both."""
        return cfg_combine(cond_NV, uncond_NV, self.guidance_K.to(cond_NV.device)[scale_N][:, None])

    def image_logits(self, model, tok: Tokens) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits the loss uses at every sampled image token (`pass_logits`); under the guided
        rule, `tok` holds the conditional then the unconditional rows (`sequences`), both run in
        one batch through `model` and are combined by `guide`. Returns (logits (N, codebook), the
        conditional tokens' target / sample / scale)."""
        logits, idx = self.pass_logits(model, tok)
        if self.guidance_K is None:
            return logits, idx
        n_rows, N = tok.ids.shape[0] // 2, logits.shape[0] // 2
        cond, uncond = logits[:N], logits[N:]
        if not (bool((idx["sample"][:N] < n_rows).all()) and torch.equal(idx["sample"][N:] - n_rows, idx["sample"][:N])
                and torch.equal(idx["scale"][N:], idx["scale"][:N]) and torch.equal(idx["target"][N:], idx["target"][:N])):
            raise RuntimeError("guided teacher-forced pass: the unconditional rows' image tokens do not line up "
                               "with the conditional rows' (expected rows [0, n) cond, [n, 2n) uncond)")
        idx = {k: v[:N] for k, v in idx.items()}
        return self.guide(cond, uncond, idx["scale"]), idx

    def token_logprobs(self, logits_NV: torch.Tensor, idx: dict, truncated: bool) -> torch.Tensor:
        """Log-prob of each token's sampled code, per scale under that scale's sampling settings;
        `truncated` False drops top-k/top-p (the KL's distribution)."""
        out = logits_NV.new_zeros(logits_NV.shape[0])
        K = self.schedule.num_scales
        for s in range(K):
            at = idx["scale"] == s
            st = self.sampling.step(s, K)
            lp = sampling_logprobs(logits_NV[at], st.temperature, st.top_k if truncated else 0,
                                   st.top_p if truncated else 1.0, keep_N=idx["target"][at])
            out = out.index_put((at.nonzero()[:, 0],), lp.gather(-1, idx["target"][at][:, None])[:, 0])
        return out

    def per_scale_stats(self, logits_NV: torch.Tensor, idx: dict, kl_N: torch.Tensor) -> dict[str, float]:
        """Entropy of the sampling distribution and mean KL per scale (diagnostics, no grad)."""
        stats, K = {}, self.schedule.num_scales
        with torch.no_grad():
            for s in range(K):
                at = idx["scale"] == s
                st = self.sampling.step(s, K)
                lp = sampling_logprobs(logits_NV[at], st.temperature, st.top_k, st.top_p)
                ent = -(lp.exp() * lp.nan_to_num(neginf=0.0)).sum(-1)
                stats[f"entropy_scale_{s:02d}"] = float(ent.mean())
                stats[f"kl_scale_{s:02d}"] = float(kl_N[at].mean())
        return stats

    # ------------------------------------------------------------------ steps
    def _seed(self, stage: int, batch_idx: int) -> int:
        ws, rank = (self.trainer.world_size, self.global_rank) if self._trainer is not None else (1, 0)
        return ((self.hparams.seed * 1_000_003 + stage) * 1_000_003 + self.global_step * 7919 + batch_idx) * ws + rank

    def training_step(self, batch: list[dict], batch_idx: int):
        hp, P, G = self.hparams, len(batch), self.hparams.group_size
        ro = self.rollout(batch, G, self._seed(0, batch_idx))
        adv_PG, valid_P = group_advantages(ro["rewards"].view(P, G), hp.adv_eps)
        self._check_stall(ro["rewards"], valid_P)
        tok = self.sequences(ro["captions"], ro["codes"])
        with torch.no_grad():
            ref_logits, idx = self.image_logits(self.ref, tok)
            ref_kl_lp = self.token_logprobs(ref_logits, idx, truncated=False)
        adv_N, valid_N = adv_PG.reshape(-1)[idx["sample"]], valid_P.repeat_interleave(G)[idx["sample"]]
        opt, sched = self.optimizers(), self.lr_schedulers()
        old_lp, first = None, None
        for _ in range(hp.inner_steps):
            logits, _ = self.image_logits(self.model, tok)
            lp = self.token_logprobs(logits, idx, truncated=True)
            kl_lp = self.token_logprobs(logits, idx, truncated=False)
            if old_lp is None:  # the pre-update policy: the ratio is exactly 1 at the first inner step
                old_lp = lp.detach()
                sampler_lp = self.sampler_logprobs(ro["record"], ro["codes"])
                gap = float("nan") if sampler_lp is None else float((old_lp - sampler_lp).abs().max())
            out = grpo_loss(lp, old_lp, kl_lp, ref_kl_lp, adv_N, idx["sample"], idx["scale"], valid_N,
                            prefix_scales=hp.prefix_scales, kl_scales=hp.kl_scales, beta=hp.beta,
                            clip_range=hp.clip_range, loss_norm=hp.loss_norm, num_scales=self.schedule.num_scales)
            if first is None:
                first = {**out, "stats": self.per_scale_stats(logits.detach(), idx, k3_kl(kl_lp.detach(), ref_kl_lp))}
            opt.zero_grad()
            self.manual_backward(out["loss"])
            if hp.grad_clip:
                self.clip_gradients(opt, gradient_clip_val=hp.grad_clip, gradient_clip_algorithm="norm")
            opt.step()
        if sched is not None:
            sched.step()
        self._log_step(ro, valid_P, first, out)
        self.log("train/sampler_logp_gap", gap, batch_size=len(ro["images"]))  # on-policy check: ~0
        return out["loss"].detach()

    def _check_stall(self, rewards: torch.Tensor, valid_P: torch.Tensor) -> None:
        """A run with no learning signal stops with an error instead of logging a flat line."""
        flat = float(rewards.abs().max()) == 0.0 or not bool(valid_P.any())
        if self._trainer is not None:
            flat = bool(self.trainer.strategy.reduce(torch.tensor(float(flat), device=self.device),
                                                     reduce_op="min") > 0)  # every rank flat
        self._stalled = self._stalled + 1 if flat else 0
        if self._stalled >= self.hparams.stall_steps:
            raise RuntimeError(
                f"GRPO: for {self._stalled} consecutive steps every reward was 0 or every group had zero "
                f"variance (no advantage, no gradient; last rewards {rewards.tolist()[:8]}...). Check that the "
                "reward applies to these prompts and images, use a partial-credit reward, raise group_size "
                "or the sampling temperature (stall_steps sets the patience)")

    def _log_step(self, ro: dict, valid_P: torch.Tensor, first: dict, last: dict) -> None:
        n = len(ro["images"])
        log = lambda k, v, **kw: self.log(f"train/{k}", float(v), batch_size=n, **kw)  # noqa: E731
        log("reward", ro["rewards"].mean(), prog_bar=True)
        log("reward_std", ro["rewards"].std(unbiased=False))
        for k, v in ro["scores"].items():
            if k != "reward" and np.isfinite(v).any():
                log(k, np.nanmean(v))
        log("zero_var_frac", 1.0 - valid_P.float().mean())
        log("groups_dropped", (~valid_P).sum(), reduce_fx="sum")
        log("loss", last["loss"].detach())
        log("pg", first["pg"])
        log("kl", first["kl"], prog_bar=True)
        log("ratio", last["ratio"])
        log("clip_frac", last["clip_frac"])
        for k, v in first["stats"].items():
            log(k, v)

    def validation_step(self, batch: list[dict], batch_idx: int):
        """Mean reward (and the reward's other outputs, e.g. strict correctness) of fresh rollouts."""
        ro = self.rollout(batch, self.hparams.val_group_size, self._seed(1, batch_idx))
        n = len(ro["images"])
        self.log("val/reward", ro["rewards"].mean(), batch_size=n, sync_dist=True, prog_bar=True)
        for k, v in ro["scores"].items():
            if k != "reward" and np.isfinite(v).any():
                self.log(f"val/{k}", float(np.nanmean(v)), batch_size=n, sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams  # VARRL: AdamW (0.9, 0.95), wd 0.05 (REFERENCE.md)
        return torch.optim.AdamW(self.model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay,
                                 betas=tuple(hp.betas))

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """ARModule's checkpoint keys (validate --ckpt_path with an AR config; no "ar_alpha", so the AR
        config's own loss reweighting stays) plus the sampler checkpoint's (load_generator:
        `ar_config`, the policy under the `model.` prefix)."""
        c = self.model.config
        checkpoint["ar_vocab"] = {"text_vocab_size": c.text_vocab_size, "codebook_size": c.codebook_size,
                                  "vocab_size": c.vocab_size}
        checkpoint["ar_rope_layout"] = c.rope_layout
        checkpoint["ar_trained_scale_counts"] = {int(n): int(k) for n, k in self.trained_scale_counts.items()}
        checkpoint["ar_tokenizer_fingerprint"] = self.trained_tokenizer_fingerprint
        checkpoint["ar_config"] = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.init}
        checkpoint["ar_state_prefix"] = "model."
        checkpoint["tokenizer_ckpt"] = self.meta.get("tokenizer_ckpt")
        checkpoint["text_tokenizer"] = self.meta.get("text_tokenizer") or "bytes"
        checkpoint["text_tokenizer_path"] = self.meta.get("text_tokenizer_path")
        checkpoint["trained_scale_counts"] = checkpoint["ar_trained_scale_counts"] or None

