"""One fit of a tiny tokenizer (stage 1, ScaleDropping 0.5) or AR model on 1 or N CPU processes,
as a script: Lightning's `ddp` strategy on CPU re-runs this file once per extra rank (gloo), so
tests/test_ddp.py launches it in a subprocess with a timeout. Each rank writes
<out>/rank<r>.json: the keys of the samples it decoded, its per-step losses and batch count, the
validation metrics it logged, and a digest of its final weights.

    python tests/_ddp_run.py {tokenizer,ar,rl} --data DIR --out DIR --devices N --global_batch B --steps S
        [--strategy ddp|fsdp] [--accelerator cpu|cuda] [--ema] [--bench N]

--bench N (rl only): BenchmarkCallback every N steps on BENCH_SUITE (generation sharded across the
ranks, gathered to rank 0, scored there) into <out>/benchmarks.

Randomness that would make a 1-process and an N-process run differ is switched off (the shards
are read in file order, shuffle buffer 1; no dead-code restarts, no caption dropout, a fixed
self-correction variant), so both runs see the same global batch at every step and their losses
must agree to float round-off (DDP averages per-rank gradients of equal-size halves).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402


class Recorder(pl.Callback):
    """Per-rank losses, batch count and validation metrics, written at the end of the run."""

    def __init__(self, out: Path):
        self.out, self.losses, self.batches, self.val = out, [], 0, {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))
        self.batches += 1

    def on_validation_end(self, trainer, pl_module):  # after the module's own epoch-end metrics
        self.val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    @staticmethod
    def digest(module) -> str:
        digest = hashlib.sha256()
        for p in module.parameters():
            digest.update(p.detach().double().cpu().numpy().tobytes())
        return digest.hexdigest()

    def on_fit_start(self, trainer, pl_module):
        self.start_sha = self.digest(pl_module)

    def on_fit_end(self, trainer, pl_module):
        record = {"start_sha": self.start_sha, "rank": trainer.global_rank, "world_size": trainer.world_size, "losses": self.losses,
                  "batches": self.batches, "val": self.val, "keys": trainer.datamodule.decoded_keys,
                  "weights_sha": self.digest(pl_module)}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def recording(cls):
    """The datamodule class, noting the key of every training sample it decodes (main process:
    num_workers 0)."""

    class Recording(cls):
        decoded_keys: list

        def decode_train(self, sample):
            item = super().decode_train(sample)
            self.decoded_keys.append(item["key"])
            return item

    return Recording


def tokenizer_run(args):
    from _tokenizer_data import tiny_config
    from callbacks.scale_dropping import ScaleDropping
    from datamodules.raw import RawShardDataModule
    from modules.tokenizer import TokenizerModule

    model = TokenizerModule(tiny_config(), stage="pixel", lr=2e-3, warmup_steps=0, restart_every=0,
                            val_oracle=True, rfid_extractor="randconv", lr_schedule="constant")
    dm = recording(RawShardDataModule)(train_dir=str(args.data / "train"), val_dir=str(args.data / "val"),
                                       batch_size=args.global_batch // args.devices,
                                       val_batch_size=args.val_batch // args.devices, multiple_of=4,
                                       shuffle_buffer=1)
    return model, dm, [ScaleDropping(0.5)]


def ar_run(args):
    from datamodules.pretokenized_dm import PretokenizedDataModule
    from modules.ar.module import ARModule

    tiny = {"codebook_size": 16, "code_dim": 8, "n_layer": 1, "n_embd": 32, "n_head": 2, "n_query_groups": 1,
            "intermediate_size": 64}
    model = ARModule(overrides=tiny, warmup_steps=0, cond_dropout=0.0, lr=3e-3)
    dm = recording(PretokenizedDataModule)(train_dir=str(args.data / "train"), val_dir=str(args.data / "val"),
                                           batch_size=args.global_batch // args.devices,
                                           val_batch_size=args.val_batch // args.devices, variant=0,
                                           shuffle_buffer=1)
    return model, dm, []


def rl_run(args):
    """GRPO on the tiny AR checkpoint of tests/_tiny_checkpoints.py (written into --data first);
    prompts split by Lightning's DistributedSampler (map-style PromptDataModule)."""
    from datamodules.prompts import PromptDataModule
    from modules.rl import GRPOModule

    red = {"class_path": "evaluation.rewards.ColorFractionReward", "init_args": {"tolerance": 96.0}}
    model = GRPOModule(policy_ckpt=str(args.data / "ar.ckpt"), group_size=4, image_size=16, reward=red, lr=1e-2,
                       inner_steps=1)  # one update per rollout batch: what GRPOModule allows under DDP

    class Recording(PromptDataModule):
        decoded_keys: list

        def on_before_batch_transfer(self, batch, dataloader_idx):
            if self.trainer.training:
                self.decoded_keys += [p["prompt"] for p in batch]
            return batch

    return model, Recording(geneval_per_tag=4, batch_size=args.global_batch // args.devices, val_prompts=0), []


# a small suite (32 px: its scenes need >= 20 px); batch 2, so calls are cut into pieces across ranks
BENCH_SUITE = {"geneval_limit": 4, "images_per_prompt": 2, "dpg_prompts": 1, "editcanvas_per_task": 1,
               "understanding_scenes": 2, "width": 32, "height": 32}
BENCH_SAMPLING, BENCH_BATCH = {"top_k": 4, "seed": 0}, 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("kind", choices=["tokenizer", "ar", "rl"])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--devices", type=int, default=1)
    ap.add_argument("--strategy", default="ddp", help="ddp or fsdp (FSDP: Lightning runs it on GPUs only)")
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--global_batch", type=int, default=8)
    ap.add_argument("--val_batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--ema", action="store_true")
    ap.add_argument("--bench", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model, dm, callbacks = {"tokenizer": tokenizer_run, "ar": ar_run, "rl": rl_run}[args.kind](args)
    dm.decoded_keys = []
    args.out.mkdir(parents=True, exist_ok=True)
    callbacks += [Recorder(args.out), ModelCheckpoint(dirpath=str(args.out / "ckpt"), save_last=True, save_top_k=0,
                                                      enable_version_counter=False)]
    if args.bench:
        from callbacks.evaluation import BenchmarkCallback

        callbacks.append(BenchmarkCallback(every_n_steps=args.bench, fit_suite=BENCH_SUITE, sampling=BENCH_SAMPLING,
                                           batch_size=BENCH_BATCH, out_dir=str(args.out)))
    if args.ema:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=0.9))
    trainer = pl.Trainer(accelerator=args.accelerator, devices=args.devices,
                         strategy=args.strategy if args.devices > 1 or args.strategy == "fsdp" else "auto", max_steps=args.steps,
                         max_epochs=-1, limit_train_batches=args.steps, val_check_interval=args.steps,
                         limit_val_batches=0 if args.kind == "rl" else None,
                         check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(args.out), callbacks=callbacks)
    trainer.fit(model, dm)
    print(f"rank {trainer.global_rank} of {trainer.world_size} (pid {os.getpid()}) done", flush=True)


if __name__ == "__main__":
    main()
