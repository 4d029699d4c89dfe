"""Video -> interleaved data: keyframe selection on synthetic videos with known change points,
transition text from the world's event log, real-video stories (side-file captions, whole videos
held out) through pretokenize, an mp4 written with PyAV round-trips, corrupt files are counted."""
import json

import numpy as np
import pytest

from datamodules.interleaved.keyframes import KeyframeConfig, select_keyframes
from datamodules.interleaved.videos import (SideFileCaptioner, StoryStats, Video, build_captioner, is_validation,
                                            write_story_shards)


def synthetic(n=12, changes=(4, 8), size=16, noise=0.004, seed=0):
    """Grey frames whose level jumps at `changes` (a mean change of 0.2), with tiny noise elsewhere."""
    rng = np.random.default_rng(seed)
    level, frames = 60.0, []
    for t in range(n):
        if t in changes:
            level += 51.0
        f = np.full((size, size, 3), level) + rng.normal(0, noise * 255, (size, size, 3))
        frames.append(np.clip(f, 0, 255).astype(np.uint8))
    return frames


def test_keyframes_at_the_change_points_with_first_and_last():
    assert select_keyframes(synthetic(), KeyframeConfig(threshold=0.1, max_keyframes=6)) == [0, 4, 8, 11]
    # no first / last: only the change points
    assert select_keyframes(synthetic(), KeyframeConfig(threshold=0.1, keep_first=False, keep_last=False)) == [4, 8]
    # threshold 0: every frame is a candidate, thinned to K by score (the two jumps survive)
    assert select_keyframes(synthetic(), KeyframeConfig(threshold=0.0, max_keyframes=4)) == [0, 4, 8, 11]


def test_keyframe_min_gap_and_max_count():
    frames = synthetic(changes=(4, 5, 9))
    # 5 is one frame after 4: with min_gap 2 it is skipped, and the jump is then seen at 6 (vs keyframe 4)
    assert select_keyframes(frames, KeyframeConfig(threshold=0.1, min_gap=2, max_keyframes=8)) == [0, 4, 6, 9, 11]
    assert select_keyframes(frames, KeyframeConfig(threshold=0.1, min_gap=1, max_keyframes=8)) == [0, 4, 5, 9, 11]
    # the last frame wins over a keyframe closer than min_gap to it
    assert select_keyframes(synthetic(changes=(10,)), KeyframeConfig(threshold=0.1, min_gap=3)) == [0, 11]
    with pytest.raises(ValueError, match="max_keyframes=1 cannot hold"):
        KeyframeConfig(max_keyframes=1)


def test_transition_text_is_the_event_log_between_keyframes():
    from shapes.video import make_video, transition_caption

    for seed in range(20):
        v = make_video(np.random.default_rng(seed), 6, 64, 64).to_dict()
        for t in range(1, 6):  # adjacent frames: the world's own per-frame caption, sentence for sentence
            got = set(transition_caption(v, t - 1, t).rstrip(".").split(". "))
            want = set(v["captions"][t].rstrip(".").split(". "))
            if "disappears" not in v["captions"][t]:
                assert got == want, (seed, t, got, want)
            else:  # an object that vanishes is named once, by its colour before the interval
                keep = {x for x in got if "disappears" not in x}
                assert keep <= want and sum("disappears" in x for x in got) == sum("disappears" in x for x in want)
        whole = transition_caption(v, 0, 5)
        gone = {e["object"] for e in v["events"] if e["event"] == "disappear"} - set(v["object_ids"][5])
        assert whole.count("disappears") == len(gone & set(v["object_ids"][0]))


def _world_videos(n, frames=6, side=32):
    from shapes.render import render
    from shapes.video import make_video

    out = []
    for i in range(n):
        v = make_video(np.random.default_rng([5, i]), frames, side, side)
        images = [render(f, side, side).image for f in v.frames]
        segments = [{"start": t - 0.5, "end": t + 0.5, "text": v.captions[t]} for t in range(1, frames)]
        out.append(Video(f"video{i:03d}", images, [float(t) for t in range(frames)],
                         {"caption": v.captions[0], "segments": segments}))
    return out


def test_real_video_stories_hold_out_whole_videos_and_pretokenise(tmp_path):
    import lightning
    import torch
    import webdataset as wds

    from _tokenizer_data import tiny_config
    from commands.pretokenize import run as pretokenize
    from datamodules.pretokenized_dm import decode_pretokenized_item
    from datamodules.shards import shard_urls
    from modules.tokenizer import TokenizerModule

    videos = _world_videos(12)
    stats = write_story_shards(videos, tmp_path / "train", tmp_path / "val", val_fraction=0.3,
                               keyframes=KeyframeConfig(threshold=0.0, max_keyframes=3))
    assert stats.videos == 12 and stats.stories_train + stats.stories_val == 12 and stats.stories_val > 0
    val_names = {json.loads(s["json"])["video"] for s in wds.WebDataset(shard_urls(str(tmp_path / "val")),
                                                                        shardshuffle=False, empty_check=False)}
    assert val_names == {v.name for v in videos if is_validation(v.name, 0.3)}
    torch.manual_seed(0)
    m = TokenizerModule(tokenizer=tiny_config(), stage="joint", val_oracle=False, rfid_extractor=None)
    torch.save({"state_dict": m.state_dict(), "hyper_parameters": dict(m.hparams),
                "pytorch-lightning_version": lightning.__version__}, tmp_path / "tok.ckpt")
    pretokenize(raw=str(tmp_path / "train"), checkpoint=str(tmp_path / "tok.ckpt"), out=str(tmp_path / "pt"),
                task="interleaved")
    by_name = {v.name: v for v in videos}
    for s in wds.WebDataset(shard_urls(str(tmp_path / "pt")), shardshuffle=False, empty_check=False):
        meta = json.loads(s["json"])
        item = decode_pretokenized_item(s, lambda t: [1] * len(t.split()), variant=0, rng=np.random.default_rng(0))
        v = by_name[meta["meta"]["video"]]
        assert meta["texts"][0] == v.side["caption"] and len(item["images"]) == len(meta["texts"]) == 3
        # each transition is the side track's text at its keyframe's time
        for text, t in zip(meta["texts"][1:], meta["keyframes"][1:]):
            assert text == v.side["segments"][t - 1]["text"]


def test_captioner_errors_name_the_fix():
    with pytest.raises(ValueError, match="no caption side file"):
        SideFileCaptioner().use(Video("v", [], [], {}))
    with pytest.raises(FileNotFoundError, match="captioner weights not found at /nowhere/vlm"):
        build_captioner({"class_path": "datamodules.interleaved.videos.TransformersCaptioner",
                         "init_args": {"model_path": "/nowhere/vlm"}})
    with pytest.raises(ValueError, match="captioner class 'no.such.Captioner' not found"):
        build_captioner("no.such.Captioner")


def test_mp4_written_with_pyav_round_trips_and_corrupt_files_are_counted(tmp_path):
    pytest.importorskip("av", reason="PyAV is not installed")
    from datamodules.interleaved.videos import decode_video, iter_videos, write_video

    (video,) = _world_videos(1, frames=6, side=32)
    folder = tmp_path / "videos"
    folder.mkdir()
    write_video(folder / "a.mp4", video.frames)
    (folder / "a.json").write_text(json.dumps(video.side))
    (folder / "b.mp4").write_bytes(b"not a video at all")
    frames, times = decode_video(folder / "a.mp4")
    assert len(frames) == 6 and frames[0].shape == (32, 32, 3)
    assert max(np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(frames, video.frames)) < 8
    stats = StoryStats()
    with pytest.warns(UserWarning, match="skipped corrupt video 'b.mp4'"):
        got = list(iter_videos(folder, stats))
    assert [v.name for v in got] == ["a.mp4"] and stats.corrupt_videos == 1 and stats.videos == 2
    out = write_story_shards(folder, tmp_path / "tr", tmp_path / "va", val_fraction=0.0,
                             keyframes=KeyframeConfig(threshold=0.0, max_keyframes=3))
    assert out.stories_train == 1 and out.corrupt_videos == 1
