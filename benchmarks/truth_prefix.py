"""Which scales does the AR model fail on? GenEval with the first m scales taken from the truth:

    python -m benchmarks.truth_prefix --ckpt runs/quickstart/ar_fit/last.ckpt --given '[0, 2, 4, 6, 8]' \\
        --geneval_limit 96 --images_per_prompt 2 --out runs/truth_prefix

For every GenEval prompt the world renders a scene that meets it (the ground-truth baseline's
render, evaluation/baselines.py), the tokenizer encodes it, and the AR model samples scales
m+1..K on top of the truth's codes for scales 1..m (`generate_images(given=...)`), with the
sampling config of the quickstart's validate (constant CFG 5, top-k 8); `--rest dropped` decodes
the truth's scales 1..m alone instead (the floor for the model's finer scales). m = 0 is the model alone;
m = K is the tokenizer's reconstruction (the ceiling the AR model can reach). Where the score
jumps between two m, the scales between them are where the model loses the prompt: the coarse
scales carry layout (which objects, where), the fine ones the outlines that name a shape.
Each point writes the suite's layout under <out>/given_<m>/; <out>/summary.json and the printed
table hold the scores.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from benchmarks.sampling_geneval import InputError, load_checkpoint, print_geneval_table, sampling_points


class TruthPrefixGenerator:
    """text_to_image whose first `given` scales come from the world's render of the prompt; the
    rest are the AR model's samples (`rest="model"`) or left out of the decoded sum
    (`rest="dropped"`: what the truth's coarse scales are worth with no finer scale at all)."""

    def __init__(self, ar, truth, given: int, rest: str = "model"):
        if rest not in ("model", "dropped"):
            raise ValueError(f"rest={rest!r}: use 'model' (the AR model samples the finer scales) or 'dropped'")
        self.ar, self.truth, self.given, self.rest = ar, truth, given, rest
        self.batch_size = ar.batch_size

    @torch.no_grad()
    def text_to_image(self, prompts: list[str], height: int, width: int, seed: int, offset: int = 0):
        from modules.ar.sampler import generate_images

        truth = self.truth.text_to_image(prompts, height, width, seed * 1_000_003 + offset)
        out = []
        for i in range(0, len(prompts), self.batch_size):
            encoded = self.ar._encode(truth[i:i + self.batch_size])
            schedule = encoded[0][0]
            if self.given > schedule.num_scales:
                raise ValueError(f"--given {self.given}: the {height}x{width} schedule has {schedule.num_scales} scales")
            if self.rest == "dropped":  # the decoder sums the given scales only (a prefix decodes)
                out += self.ar._decode([c[:self.given] for _, c in encoded], schedule)
                continue
            cfg = dataclasses.replace(self.ar.sampling, seed=seed * 1_000_003 + offset + i)
            ids = [self.ar.text.encode(p) for p in prompts[i:i + self.batch_size]]
            codes = generate_images(self.ar.model, ids, schedule, cfg, given=[c[:self.given] for _, c in encoded])
            out += self.ar._decode(codes, schedule, cfg.seed)
        return out


def run(ckpt: str, given: list[int], sampling: str = "configs/sampling/shapes_cfg_constant.yaml",
        guidance: float = 5.0, top_k: int | None = None, out: str = "runs/truth_prefix", rest: str = "model",
        tokenizer_ckpt: str | None = None,
        geneval_prompts: str | None = None,
        geneval_limit: int | None = 96,
        images_per_prompt: int = 2, width: int = 64, height: int = 64, min_object_px: float = 24,
        seed: int = 0, device: str = "cpu") -> dict:
    """GenEval of the AR model with its first m scales from the truth, for each m in `given`.

    Args:
        ckpt: AR checkpoint (ARModule Lightning checkpoint or a save_generator file).
        given: numbers of coarse scales taken from the truth (0 = the model alone).
        sampling: sampling config file (the quickstart validates with constant CFG).
        guidance: CFG scale over the file's (the quickstart's validate: 5).
        top_k: top-k over the file's (1 = argmax); None keeps the file's.
        out: output folder (one sub-folder per m, summary.json).
        rest: "model" (the AR model samples scales m+1..K) or "dropped" (no model: the truth's
            first m scales decoded alone, the floor the model's finer scales have to beat).
        tokenizer_ckpt: TokenizerModule checkpoint that encodes the truth and decodes every image
            (default: the one the AR checkpoint records); one with the same codes and another
            decoder compares decoders on the same sampled codes.
        geneval_prompts: GenEval jsonl (default: the world's prompts).
        geneval_limit: every k-th prompt so that this many remain.
        images_per_prompt: images per prompt.
        width: image width in pixels (the resolution the model trained at).
        height: image height in pixels.
        min_object_px: smallest object side of the truth's scenes (the quickstart's suite: 24).
        seed: suite seed.
        device: cpu or cuda.
    """
    from evaluation.baselines import GroundTruthGenerator
    from evaluation.suite import SuiteConfig, headline, run_suite
    from modules.ar.generator import ARGenerator

    if rest not in ("model", "dropped"):
        raise InputError(f"--rest {rest}: use 'model' (the AR model samples the finer scales) or 'dropped'")
    least = 1 if rest == "dropped" else 0  # dropped with nothing from the truth has nothing to decode
    if not given or any(int(m) < least for m in given):
        raise InputError(f"--given {given}: pass numbers of truth scales >= {least}, e.g. '[{least}, 2, 4, 6, 8]'")
    overrides = {"guidance": [guidance], **({"top_k": [top_k]} if top_k is not None else {})}
    ((_, cfg),) = sampling_points([sampling], overrides)
    model, tokenizer, text = load_checkpoint(ckpt, tokenizer_ckpt, device)
    suite = SuiteConfig(geneval_prompts=geneval_prompts, geneval_limit=geneval_limit,
                        images_per_prompt=images_per_prompt, dpg_prompts=0, editcanvas_per_task=0,
                        understanding_scenes=0, width=width, height=height, seed=seed, min_object_px=min_object_px)
    ar = ARGenerator(model, tokenizer, text, sampling=cfg)
    truth = GroundTruthGenerator(suite)
    root, scores = Path(out), {}
    for m in sorted({int(m) for m in given}):
        with torch.no_grad():
            metrics = run_suite(TruthPrefixGenerator(ar, truth, m, rest), root / f"given_{m}", suite,
                                extra={"ckpt": str(ckpt), "tokenizer_ckpt": tokenizer_ckpt, "given_scales": m, "rest": rest, "sampling": dataclasses.asdict(cfg)})
        scores[f"{m} scales from the truth"] = headline(metrics)
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.json").write_text(json.dumps({"ckpt": str(ckpt), "suite": dataclasses.asdict(suite),
                                                   "sampling": dataclasses.asdict(cfg), "scores": scores}, indent=1))
    print_geneval_table(scores, f"GenEval with the first m scales from the truth: {ckpt}, {width}x{height} px "
                                f"({root / 'summary.json'})", first_column="given")
    return scores


if __name__ == "__main__":
    from benchmarks import run_cli

    run_cli(run, InputError)
