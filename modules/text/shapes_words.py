"""The Shapes world's closed vocabulary for `WordTokenizer` (text tokenizer kind "shapes-words").

A BPE tokenizer such as Qwen2.5's (NF §3.1) gives every common word one id; the byte-level
tokenizer spells "diamond" in 7 ids, and a small CPU model then spends its first hundreds of
steps learning to read. On the Shapes world every text is built from a few hundred words, so a
word-per-id table is the honest small-scale stand-in for BPE. The table is committed
(`shapes_words.txt`) so checkpoints never change meaning when the world code changes;
`python -m modules.text.shapes_words` regenerates it from every text the world produces, and a
test checks that no text of a fresh seed needs the byte fallback.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

WORDS_PATH = Path(__file__).with_name("shapes_words.txt")


def world_texts(num_scenes: int = 400, seed: int = 0) -> Iterator[str]:
    """Every kind of text the Shapes world writes: captions (short, dense), GenEval prompts, DPG
    prompts and questions, edit instructions, subject prompts, video captions, understanding
    questions and answers."""
    from shapes.captions import captions
    from shapes.dpg import dpg_items
    from shapes.edits import sample_edit, sample_subject_pair
    from shapes.prompts import geneval_prompts
    from shapes.scene import sample_scene
    from shapes.video import make_video
    from shapes.questions import understanding_items

    rng = np.random.default_rng(seed)
    for w, h in ((64, 64), (128, 64), (64, 128)):
        for _ in range(num_scenes):
            yield from captions(sample_scene(rng, w, h), rng, w, h).values()
    yield from (line["prompt"] for line in geneval_prompts(seed))
    for item in dpg_items(num_scenes // 4, seed=seed):
        yield item["prompt"]
        yield from (q["question"] for q in item["questions"])
    for _ in range(num_scenes):
        yield sample_edit(rng).instruction
        yield sample_subject_pair(rng).prompt
    for _ in range(num_scenes // 8):
        yield from make_video(rng).captions
    for item in understanding_items(num_scenes // 4, seed=seed):
        yield item["question"]
        yield item["answer"]


def build_word_list(texts) -> list[str]:
    """Sorted distinct pieces (see `WordTokenizer.split`) that are words or numbers, each in its
    spaced (" red") and unspaced ("red") form; punctuation and spaces stay bytes."""
    from modules.text.tokenizers import WordTokenizer

    words: set[str] = set()
    for text in texts:
        for piece in WordTokenizer.split(text):
            core = piece.lstrip(" ")
            if core.isalnum():
                words.update({core, " " + core})
    return sorted(words)


def load_word_list(path: str | Path = WORDS_PATH) -> list[str]:
    return [line for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


if __name__ == "__main__":
    words = build_word_list(world_texts())
    WORDS_PATH.write_text("\n".join(words) + "\n", encoding="utf-8")
    print(f"wrote {len(words)} words to {WORDS_PATH}")
