"""Understanding on Shapes: image-to-text evaluation with exact ground truth and exact-match scoring.

Items are read off procedural scenes (datamodules/shapes), so every answer is true by construction:
  caption   no question; the caption's objects, parsed as (count, colour, shape) mentions, must
            equal the scene's groups exactly (caption attributes)
  count     "How many red circles are there?"                 -> "three"
  color     "What color is the star?" (a shape unique in the scene) -> "blue"
  position  "Is the red circle left of the blue star?"        -> "yes" / "no" (GenEval's rule,
            asked only for pairs whose relation holds clearly, captions.clear_relations; a "no"
            question uses the opposite relation)
An answer is normalised (lower case, punctuation stripped, digits -> number words, leading
article dropped) and scored by exact match; per kind = mean, overall = unweighted mean of kinds.

The evaluator never sees a model: `score_understanding(items, answer_fn)` takes a function
(images uint8 list, questions list) -> answer strings. `ar_answer_fn` builds that function for an
AR decoder + tokenizer (KV-cached image-to-text sampling, modules/ar/sampler.answer); this is what
ARModule's validation calls.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import numpy as np

from datamodules.shapes.captions import NUMBER_WORDS, clear_relations, noun_phrase, plural
from datamodules.shapes.render import render
from datamodules.shapes.scene import Scene, sample_scene
from evaluation.shapes_vqa import parse_mention

KINDS = ("caption", "count", "color", "position")
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
AnswerFn = Callable[[list[np.ndarray], list[str]], list[str]]


def normalize(answer: str) -> str:
    words = re.findall(r"[a-z]+(?:-[a-z]+)?|\d+", answer.lower())
    words = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w for w in words]
    if len(words) > 1 and words[0] in ("a", "an", "the"):
        words = words[1:]
    return " ".join(words)


def caption_groups(text: str) -> set[tuple[int, str | None, str]]:
    """(count, colour, shape) of every object mention in a caption ('two red circles and a star')."""
    out = set()
    for part in re.split(r"[,;.]|\band\b|\bwith\b|\bon\b", text.lower()):
        m = parse_mention(part)
        if m is not None:
            count = m["count"] if m["count"] is not None else 1
            out.add((count, m["color"], m["shape"]))
    return out


def scene_groups(scene: Scene) -> set[tuple[int, str | None, str]]:
    return {(n, color, shape) for (color, shape), n in scene.counts().items()}


def scene_items(scene: Scene, rng: np.random.Generator, width: int, height: int) -> list[dict]:
    """Questions about one scene: a caption item, one count, one colour and one position question
    when the scene allows them."""
    items = [{"kind": "caption", "question": "", "answer": "; ".join(sorted(noun_phrase(n, c, s)
                                                                       for n, c, s in scene_groups(scene)))}]
    counts = scene.counts()
    (color, shape), n = list(counts.items())[int(rng.integers(len(counts)))]
    items.append({"kind": "count", "question": f"How many {color} {plural(shape)} are there?",
                  "answer": NUMBER_WORDS[n]})
    by_shape: dict[str, list[str]] = {}
    for o in scene.objects:
        by_shape.setdefault(o.shape, []).append(o.color)
    unique = sorted(s for s, cols in by_shape.items() if len(cols) == 1)
    if unique:
        s = unique[int(rng.integers(len(unique)))]
        items.append({"kind": "color", "question": f"What color is the {s}?", "answer": by_shape[s][0]})
    rels = [(a, r, b) for a, r, b in clear_relations(scene, width, height) if r in OPPOSITE]
    if rels:
        a, rel, b = rels[int(rng.integers(len(rels)))]
        yes = bool(rng.integers(2))
        asked = rel if yes else OPPOSITE[rel]
        items.append({"kind": "position", "answer": "yes" if yes else "no",
                      "question": f"Is the {scene.objects[a].name} {asked} the {scene.objects[b].name}?"})
    return items


def understanding_items(num_scenes: int = 32, seed: int = 0, width: int = 64, height: int = 64,
                        **scene_kwargs) -> list[dict]:
    """Evaluation items with rendered images (H×W×3 uint8) and the scene's JSON."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(num_scenes):
        scene = sample_scene(rng, width, height, **scene_kwargs)
        image = render(scene, width, height).image
        for it in scene_items(scene, rng, width, height):
            out.append({**it, "scene_index": k, "image": image, "scene": scene.to_dict()})
    return out


def is_correct(item: dict, prediction: str) -> bool:
    if item["kind"] == "caption":
        return caption_groups(prediction) == scene_groups(Scene.from_dict(item["scene"]))
    return normalize(prediction) == normalize(item["answer"])


def score_understanding(items: Sequence[dict], answer_fn: AnswerFn, batch_size: int = 16) -> dict:
    """{"overall", "<kind>": accuracy, "counts": {kind: (correct, total)}, "records": [...]}."""
    records = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        answers = answer_fn([it["image"] for it in chunk], [it["question"] for it in chunk])
        if len(answers) != len(chunk):
            raise ValueError(f"answer_fn returned {len(answers)} answers for {len(chunk)} questions")
        for it, a in zip(chunk, answers):
            records.append({"kind": it["kind"], "question": it["question"], "answer": it["answer"],
                            "prediction": a, "correct": is_correct(it, a),
                            "scene_index": it.get("scene_index")})
    counts = {k: (sum(r["correct"] for r in records if r["kind"] == k), sum(r["kind"] == k for r in records))
              for k in KINDS}
    scores = {k: c / n for k, (c, n) in counts.items() if n}
    return {"overall": float(np.mean(list(scores.values()))) if scores else 0.0, **scores,
            "counts": counts, "records": records}


def ar_answer_fn(model, tokenizer, text_tokenizer=None, sampling=None) -> AnswerFn:
    """answer_fn for an ARDecoder + TokenizerModule: encode each image, sample the answer greedily
    (default: temperature 0, 32 tokens), decode the text."""
    import torch

    from modules.ar.sampler import SamplingConfig, answer
    from modules.text.tokenizers import default_text_tokenizer

    text_tokenizer = default_text_tokenizer(model.config.text_vocab_size, text_tokenizer)
    cfg = sampling or SamplingConfig(text_temperature=0.0, max_text_tokens=32)
    device = model.code_emb.device

    def fn(images: list[np.ndarray], questions: list[str]) -> list[str]:
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1).to(device)
        codes = tokenizer.encode(x)
        imgs = [(codes.schedule, [t[b] for t in codes.targets]) for b in range(len(images))]
        ids = answer(model, imgs, [text_tokenizer.encode(q) for q in questions], cfg)
        return [text_tokenizer.decode(t) for t in ids]

    return fn


def evaluate_ar_understanding(model, tokenizer, num_scenes: int = 16, seed: int = 0, width: int = 64,
                              height: int = 64, text_tokenizer=None, sampling=None) -> dict[str, float]:
    """Flat metrics for a validate run: {"understanding/overall", "understanding/<kind>", ...}.
    Wiring (ARModule): in on_validation_epoch_end, with the TokenizerModule loaded once,
    `self.log_dict(evaluate_ar_understanding(self.model, tok, ...))`."""
    res = score_understanding(understanding_items(num_scenes, seed, width, height),
                              ar_answer_fn(model, tokenizer, text_tokenizer, sampling))
    return {f"understanding/{k}": float(v) for k, v in res.items() if k not in ("counts", "records")}
