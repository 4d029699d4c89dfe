"""Interleaved evaluation: the oracle scores the world's own continuation high and a frame that
does not change (or a text that lies) low; the suite runs it and draws a strip; the AR generator
continues a story."""
import numpy as np

from evaluation.interleaved import interleaved_items, parse_events, score_interleaved
from shapes.render import render
from shapes.scene import Scene
from shapes.video import transition_caption

ITEMS = interleaved_items(12, seed=0, width=64, height=64)


def truth(captions, frames, seed):
    return [(transition_caption(it["video"], 0, 1), render(Scene.from_dict(it["video"]["frames"][1]), 64, 64).image)
            for it in ITEMS]


def test_parse_events_reads_the_world_sentences():
    evs = parse_events("A red circle moves up and to the left. The blue square turns green. A pink star appears "
                       "in the top left. A brown cross disappears. The cat sings.")
    assert [e["event"] for e in evs] == ["move", "recolor", "appear", "disappear", "unparsed"]
    assert evs[0]["direction"] == "up and to the left" and evs[1]["to"] == "green"
    assert parse_events("Nothing changes.") == []


def test_the_true_continuation_scores_high_and_a_still_frame_or_a_lie_low():
    good = score_interleaved(ITEMS, truth)
    assert good["events_stated"] > 10 and good["event_accuracy"] >= 0.8 and good["object_persistence"] >= 0.95
    still = score_interleaved(ITEMS, lambda c, f, s: [(t, it["image"]) for (t, _), it in zip(truth(c, f, s), ITEMS)])
    assert still["event_accuracy"] <= 0.1
    lie = score_interleaved(ITEMS, lambda c, f, s: [("A red circle turns blue.", im) for _, im in truth(c, f, s)])
    assert lie["event_accuracy"] == 0.0
    blank = score_interleaved(ITEMS, lambda c, f, s: [("Nothing changes.", np.full_like(im, 255))
                                                      for _, im in truth(c, f, s)])
    assert blank["object_persistence"] < 0.2 and blank["event_accuracy"] is None


def test_suite_runs_interleaved_and_draws_a_strip(tmp_path):
    from evaluation.suite import SuiteConfig, headline, run_suite

    class Truth:
        def continue_story(self, captions, frames, seed):
            items = interleaved_items(len(captions), seed=0, width=64, height=64)
            return [(transition_caption(it["video"], 0, 1),
                     render(Scene.from_dict(it["video"]["frames"][1]), 64, 64).image) for it in items]

    cfg = SuiteConfig(geneval_limit=0, dpg_prompts=0, editcanvas_per_task=0, understanding_scenes=0,
                      interleaved_videos=4)
    metrics = run_suite(Truth(), tmp_path, cfg)
    assert metrics["interleaved"]["items"] == 4 and (tmp_path / "interleaved" / "strip.png").is_file()
    assert headline(metrics)["interleaved/object_persistence"] >= 0.9


def test_ar_generator_continues_a_story(tmp_path):
    from _tiny_checkpoints import write_tiny_checkpoints
    from modules.ar.generator import ARGenerator, load_ar_and_tokenizer
    from modules.ar.sampler import SamplingConfig

    d = write_tiny_checkpoints(tmp_path)
    model, _, tok, _ = load_ar_and_tokenizer(str(d / "ar.ckpt"))
    gen = ARGenerator(model, tok.tokenizer if hasattr(tok, "tokenizer") else tok,
                      sampling=SamplingConfig(seed=0, max_text_tokens=6))
    items = interleaved_items(2, seed=0, width=32, height=32)
    outs = gen.continue_story([it["caption"] for it in items], [it["image"] for it in items], seed=0)
    assert len(outs) == 2
    for text, frame in outs:
        assert isinstance(text, str) and (frame is None or frame.shape == (32, 32, 3))


def test_generate_task_interleaved_and_understand(tmp_path):
    import json

    from PIL import Image

    from _tiny_checkpoints import write_tiny_checkpoints
    from commands import UsageError
    from commands.generate import run

    d = write_tiny_checkpoints(tmp_path)
    (it,) = interleaved_items(1, seed=0, width=32, height=32)
    Image.fromarray(it["image"]).save(tmp_path / "f0.png")
    (tmp_path / "s.jsonl").write_text(json.dumps({"caption": it["caption"], "image": "f0.png"}) + "\n")
    kw = dict(ckpt=str(d / "ar.ckpt"), prompts=str(tmp_path / "s.jsonl"), out=str(tmp_path / "st"), task="interleaved",
              sampling={"max_text_tokens": 4, "seed": 0})
    assert run(**kw)["generated"] == 1
    story = json.loads((tmp_path / "st" / "00000" / "story.json").read_text())
    frames = sorted((tmp_path / "st" / "00000").glob("frame_*.png"))
    assert story["caption"] == it["caption"] and len(story["frames"]) == len(frames) >= 1
    assert isinstance(story["texts"], list) and (tmp_path / "st" / "00000" / "strip.png").is_file()
    assert run(**kw)["skipped"] == 1  # resumed: the finished story is kept
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": "f0.png", "question": "What color is the circle?"}) + "\n")
    run(ckpt=str(d / "ar.ckpt"), prompts=str(tmp_path / "q.jsonl"), out=str(tmp_path / "qa"), task="understand",
        sampling={"max_text_tokens": 3})
    assert json.loads((tmp_path / "qa" / "answers.jsonl").read_text())["index"] == 0
    (tmp_path / "bad.txt").write_text("a story caption\n")
    import pytest as _pytest

    with _pytest.raises(UsageError, match="interleaved prompts need jsonl lines"):
        run(ckpt=str(d / "ar.ckpt"), prompts=str(tmp_path / "bad.txt"), task="interleaved", out=str(tmp_path / "b"))
