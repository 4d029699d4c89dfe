"""The refiner's metric table (issue 14): decoder alone, regression control, flow refiner at
1/2/4/8 steps, on held-out scenes, against the ground truth.

    python main.py bench --what refiner --ckpt runs/refiner_shapes/last.ckpt \\
        --regression_ckpt runs/refiner_shapes_regression/last.ckpt \\
        --val_dir data/shapes/tok64m16/val --val128_dir data/shapes/tok128m32/val --out runs/refiner_bench

Columns: PSNR and SSIM (torchmetrics), Laplacian-band PSNR and radial power-spectrum distance
(evaluation/image_quality.py), FID on the project's Shapes features (the tokenizer's seeded
random-conv extractor, Fréchet distance by clean-fid; comparable between runs of this project,
not with published FIDs), oracle agreement (shape, colour and position all right; and colour +
position alone) at 64 px and, with `val128_dir`, at 128 px. All rows see the same codes (the
tokenizer's encoding of each ground-truth image) and the flow rows the same noise (seeded per
batch). With `out`, writes table.json and crops.png (columns: scenes; rows: ground truth,
decoder, regression, flow at each step count).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch


def _rows(flow, regression, steps):
    rows = {"decoder": None}
    if regression is not None:
        rows["regression"] = ("regression", 1)
    for k in steps:
        rows[f"flow {k} step{'s' if k > 1 else ''}"] = ("flow", k)
    return rows


def _evaluate(flow, regression, val_dir: str, steps, sampler: str, max_images: int, batch_size: int, seed: int,
              crops: int = 0, shift: float | None = None):
    from datamodules.refiner_dm import RefinerDataModule
    from evaluation import image_quality as iq
    from modules.refiner import CodeEncoder
    from modules.tokenizer.metrics import RandConvFeatures, SemanticFidelity, frechet_from_features

    dm = RefinerDataModule(val_dir=val_dir, val_batch_size=batch_size, multiple_of=flow.tokenizer.patch)
    dm.use_encoder(CodeEncoder(flow.tokenizer), flow.tokenizer_fingerprint)
    extractor = RandConvFeatures()
    rows = _rows(flow, regression, steps)
    acc = {name: {"x": [], "feat": [], "fid": SemanticFidelity()} for name in rows}
    refs, real_feats, seen, crop_imgs = [], [], 0, {name: [] for name in ["ground truth", *rows]}
    for b, batch in enumerate(dm.val_dataloader()):
        if seen >= max_images:
            break
        x = batch["image"]
        decoded, feats = flow.batch_condition(batch)
        refs.append(x)
        real_feats.append(extractor(x).numpy())
        outs = {}
        for name, spec in rows.items():
            if spec is None:
                out = decoded
            elif spec[0] == "regression":
                out = regression.refine(decoded, feats)
            else:
                out = flow.refine(decoded, feats, steps=spec[1], sampler=sampler, seed=seed + b, shift=shift)
            outs[name] = out
            acc[name]["x"].append(out)
            acc[name]["feat"].append(extractor(out).numpy())
            acc[name]["fid"].update(x, out, batch["meta"])
        if b == 0 and crops:
            crop_imgs["ground truth"] = x[:crops]
            for name, out in outs.items():
                crop_imgs[name] = out[:crops]
        seen += x.shape[0]
    ref = torch.cat(refs)
    real = np.concatenate(real_feats)
    table = {}
    for name, a in acc.items():
        out = torch.cat(a["x"])
        fidelity = a["fid"].compute()
        table[name] = {"psnr": iq.psnr(out, ref), "ssim": iq.ssim(out, ref),
                       "hf_psnr": iq.laplacian_psnr(out, ref), "spectral_dist": iq.spectral_distance(out, ref),
                       "fid_shapes": frechet_from_features(real, np.concatenate(a["feat"])),
                       "agreement": fidelity.get("agreement"),
                       "agreement_color_position": fidelity.get("agreement_color_position"),
                       "agreement_gt": fidelity.get("agreement_orig"), "images": int(out.shape[0])}
    return table, crop_imgs


def save_crops(crop_imgs: dict, path: Path, zoom: int = 2) -> None:
    """One PNG: a row per method (labelled on the left), a column per scene."""
    from PIL import Image, ImageDraw

    from modules.common.images import to_uint8

    names = [n for n, v in crop_imgs.items() if len(v)]
    n, H, W = crop_imgs[names[0]].shape[0], *crop_imgs[names[0]].shape[-2:]
    label_w, pad = 110, 2
    canvas = Image.new("RGB", (label_w + n * (W * zoom + pad), len(names) * (H * zoom + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, name in enumerate(names):
        y = r * (H * zoom + pad)
        draw.text((4, y + H * zoom // 2 - 6), name, fill="black")
        for c, img in enumerate(to_uint8(crop_imgs[name])):
            tile = Image.fromarray(img).resize((W * zoom, H * zoom), Image.NEAREST)
            canvas.paste(tile, (label_w + c * (W * zoom + pad), y))
    canvas.save(path)


def format_table(tables: dict) -> str:
    cols = ["psnr", "ssim", "hf_psnr", "spectral_dist", "fid_shapes", "agreement", "agreement_color_position"]
    heads = ["PSNR", "SSIM", "HF-PSNR", "spec.dist", "FID(shapes)", "agree", "agree(col+pos)"]
    lines = []
    for res, table in tables.items():
        lines.append(f"{res}  (n={next(iter(table.values()))['images']}, ground-truth agreement "
                     f"{next(iter(table.values()))['agreement_gt']:.3f})")
        lines.append(f"  {'':<16}" + "".join(f"{h:>15}" for h in heads))
        for name, row in table.items():
            vals = "".join(f"{row[c]:>15.4f}" if row[c] is not None else f"{'-':>15}" for c in cols)
            lines.append(f"  {name:<16}{vals}")
    return "\n".join(lines)


def bench_refiner(ckpt: str, regression_ckpt: str | None = None, val_dir: str | None = None,
                  val128_dir: str | None = None, steps: tuple[int, ...] = (1, 2, 4, 8), sampler: str = "euler",
                  max_images: int = 256, max_images_128: int = 128, batch_size: int = 32, seed: int = 0,
                  out: str | None = None, crops: int = 8, shift: float | None = None) -> dict:
    from modules.common.errors import ConfigError
    from modules.refiner import load_refiner

    if not ckpt or not val_dir:
        raise ConfigError("bench refiner needs --ckpt (a flow RefinerModule checkpoint) and --val_dir (held-out raw "
                          "shards, e.g. data/shapes/tok64m16/val)")
    flow = load_refiner(ckpt)
    regression = (load_refiner(regression_ckpt, flow.tokenizer, flow.tokenizer_fingerprint)
                  if regression_ckpt else None)
    torch.set_grad_enabled(False)
    tables = {}

    def write(name: str, table: dict, crop_imgs: dict | None = None) -> None:  # each resolution as it finishes
        tables[name] = table
        print(format_table({name: table}), flush=True)
        if out:
            d = Path(out)
            d.mkdir(parents=True, exist_ok=True)
            (d / "table.json").write_text(json.dumps({"ckpt": ckpt, "regression_ckpt": regression_ckpt,
                                                      "sampler": sampler, "shift": flow.hparams.sampling_shift
                                                      if shift is None else shift, "tables": tables}, indent=1))
            if crop_imgs is not None and crops:
                save_crops(crop_imgs, d / "crops.png")
            print(f"wrote {d / 'table.json'}", flush=True)

    write("64 px", *_evaluate(flow, regression, val_dir, steps, sampler, max_images, batch_size, seed, crops, shift))
    if val128_dir:
        write("128 px", _evaluate(flow, regression, val128_dir, steps, sampler, max_images_128,
                                  max(1, batch_size // 4), seed, shift=shift)[0])
    return tables


def geneval_with_refiner(ar_ckpt: str, refiner: str, out: str = "runs/refiner_geneval", steps: int = 4,
                         geneval_limit: int | None = 96, images_per_prompt: int = 2, width: int = 64, height: int = 64,
                         min_object_px: float | None = 24, train_captions: list[str] | None = None,
                         sampling: dict | None = None, batch_size: int = 8) -> dict:
    """GenEval of an AR checkpoint's samples, decoded alone and refined (issue 14), through the
    benchmark suite (GenEval only) with the same prompts, seeds and therefore the same codes:

        python -m benchmarks.refiner --ar_ckpt runs/quickstart/ar_fit/last.ckpt \\
            --refiner runs/refiner_shapes/last.ckpt --out runs/refiner_geneval

    A refiner trained on another tokenizer file than the AR model's is refused (one line, exit 2)."""
    import dataclasses

    from evaluation.suite import SuiteConfig, headline, run_suite
    from modules.ar.generator import ARGenerator, load_ar_and_tokenizer
    from modules.ar.sampler import SamplingConfig
    from modules.refiner import load_refiner
    from modules.text.tokenizers import build_text_tokenizer
    from modules.tokenizer import checkpoint_fingerprint

    model, meta, tokenizer, tok_path = load_ar_and_tokenizer(ar_ckpt)
    ref = load_refiner(refiner, tokenizer.tokenizer, checkpoint_fingerprint(tok_path))
    text = build_text_tokenizer(meta.get("text_tokenizer") or "bytes", meta.get("text_tokenizer_path"),
                                model.config.text_vocab_size)
    cfg = SamplingConfig.from_dict(sampling or {"top_k": 8, "guidance": 5.0, "guidance_schedule": "constant"})
    suite = SuiteConfig(geneval_limit=geneval_limit, images_per_prompt=images_per_prompt, dpg_prompts=0,
                        editcanvas_per_task=0, understanding_scenes=0, width=width, height=height,
                        train_captions=train_captions, min_object_px=min_object_px)
    scores = {}
    for name, r in (("decoder", None), (f"refined ({steps} steps)", ref)):
        gen = ARGenerator(model, tokenizer, text, sampling=cfg, batch_size=batch_size, refiner=r, refiner_steps=steps)
        with torch.no_grad():
            metrics = run_suite(gen, Path(out) / ("decoder" if r is None else "refined"), suite,
                                extra={"ckpt": ar_ckpt, "refiner": refiner if r is not None else None,
                                       "sampling": dataclasses.asdict(cfg)})
        scores[name] = {k: v for k, v in headline(metrics).items() if k.startswith("geneval/")}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "summary.json").write_text(json.dumps({"ar_ckpt": ar_ckpt, "refiner": refiner, "scores": scores},
                                                       indent=1))
    from benchmarks.sampling_geneval import print_geneval_table

    print_geneval_table(scores, f"GenEval of AR samples decoded vs refined: {ar_ckpt}", first_column="images")
    return scores


if __name__ == "__main__":
    from benchmarks import run_cli
    from modules.common.errors import ConfigError

    run_cli(geneval_with_refiner, ConfigError)
