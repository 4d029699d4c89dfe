"""`main.py ingest`: captioned image folders and img2dataset shards -> raw shards in aspect-ratio
buckets; corrupt, tiny and uncaptioned images skipped and counted; bad input is one line, exit 2;
the shards then pretokenise and train (slow)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from commands.ingest import buckets, nearest_bucket
from commands.ingest import run as ingest
from datamodules.raw import decode_raw_sample
from datamodules.shards import shard_urls

SIZES = [(96, 64), (64, 96), (80, 80), (160, 72), (72, 150), (120, 90), (90, 120), (200, 100)]


def _jpeg(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None]
    arr[..., 1] = rng.integers(0, 255)
    arr[: h // 2, : w // 2, 2] = 200
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def write_folder(root: Path, n: int, corrupt: set[int] = frozenset(), tiny: set[int] = frozenset(),
                 uncaptioned: set[int] = frozenset()) -> Path:
    """n JPEGs (a PNG and a WebP among them), captions alternating .txt / .json; `corrupt` ones
    truncated or garbage, `tiny` ones 20 px, `uncaptioned` ones without a side file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / f"part{i % 3}"
        sub.mkdir(exist_ok=True)
        w, h = (20, 20) if i in tiny else SIZES[i % len(SIZES)]
        data = _jpeg(w, h, i)
        ext = ".jpg"
        if i % 7 == 3:
            ext, buf = ".png", io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, format="PNG")
            data = buf.getvalue()
        elif i % 7 == 5:
            ext, buf = ".webp", io.BytesIO()
            Image.open(io.BytesIO(data)).save(buf, format="WEBP")
            data = buf.getvalue()
        if i in corrupt:
            data = data[: len(data) // 2] if i % 2 else b"not an image at all" * 10
        (sub / f"img{i:04d}{ext}").write_bytes(data)
        if i in uncaptioned:
            continue
        if i % 2:
            (sub / f"img{i:04d}.txt").write_text(f"a test picture number {i}\n")
        else:
            (sub / f"img{i:04d}.json").write_text(json.dumps({"caption": f"a test picture number {i}", "url": "x"}))
    return root


def read_raw(out: Path) -> list[dict]:
    return [decode_raw_sample(s) for s in wds.WebDataset(shard_urls(str(out)), shardshuffle=False, empty_check=False)]


def test_bucket_choice():
    canvases = buckets(256, 16, [0.5, 1.0, 2.0])
    assert canvases == [(176, 368), (256, 256), (368, 176)]
    assert nearest_bucket(300, 290, canvases) == (256, 256)
    assert nearest_bucket(900, 400, canvases)[0] > nearest_bucket(900, 400, canvases)[1]
    assert nearest_bucket(100, 400, canvases)[0] < nearest_bucket(100, 400, canvases)[1]


def test_ingest_folder_skips_and_counts(tmp_path, capsys):
    src = write_folder(tmp_path / "imgs", 20, corrupt={4, 9}, tiny={12}, uncaptioned={15})
    out = tmp_path / "raw"
    res = ingest(src=str(src), out=str(out), side=64, multiple_of=8, min_side=32, samples_per_shard=8)
    assert res["inputs"] == 20
    assert res["skipped"] == {"corrupt": 2, "tiny": 1, "no_caption": 1}
    assert res["samples_written"] == 16 and res["shards_written"] == 3
    printed = capsys.readouterr().out
    assert "skipped 4 (corrupt 2, no_caption 1, tiny 1)" in printed
    items = read_raw(out)
    assert len(items) == 16
    canvases = set(buckets(64, 8, [1 / 2, 3 / 4, 1.0, 4 / 3, 2.0]))
    for it in items:
        h, w = it["image"].shape[1:]
        assert (w, h) in canvases and h % 8 == 0 and w % 8 == 0
        assert it["text"].startswith("a test picture number")
        src_w, src_h = it["meta"]["source_size"]
        assert (w, h) == nearest_bucket(src_w, src_h, sorted(canvases))
    assert len({tuple(it["image"].shape[1:]) for it in items}) >= 3  # several aspect buckets used


def _write_img2dataset_tar(path: Path, n: int, corrupt: set[int]) -> Path:
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            w, h = SIZES[i % len(SIZES)]
            entries = {"jpg": _jpeg(w, h, i) if i not in corrupt else b"\xff\xd8garbage",
                       "txt": f"shard caption {i}".encode(),
                       "json": json.dumps({"url": f"http://x/{i}", "width": w, "height": h}).encode()}
            for ext, data in entries.items():
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_ingest_img2dataset_shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    _write_img2dataset_tar(d / "00000.tar", 6, corrupt={2})
    _write_img2dataset_tar(d / "00001.tar", 5, corrupt=set())
    res = ingest(src=str(d), out=str(tmp_path / "raw"), side=64, multiple_of=8, min_side=32)
    assert res["inputs"] == 11 and res["skipped"] == {"corrupt": 1} and res["samples_written"] == 10
    texts = sorted(it["text"] for it in read_raw(tmp_path / "raw"))
    assert texts.count("shard caption 0") == 2 and texts.count("shard caption 2") == 1  # one of two was corrupt
    res = ingest(src=str(d / "0000{0..1}.tar").replace("0000{0..1}", "{00000..00001}"),
                 out=str(tmp_path / "raw2"), side=64, multiple_of=8, min_side=32)
    assert res["samples_written"] == 10


@pytest.mark.parametrize("case", ["missing", "empty", "ratio"])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case):
    from main import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    argv = {"missing": ["ingest", "--src", str(tmp_path / "nope")],
            "empty": ["ingest", "--src", str(tmp_path / "empty")],
            "ratio": ["ingest", "--src", str(tmp_path / "empty"), "--aspect_ratios", "[9.0]"]}[case]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")
    assert {"missing": "does not exist", "empty": "holds no images", "ratio": "outside"}[case] in err[0]


@pytest.mark.slow
def test_ingest_1000_jpegs_then_pretokenize_and_fit(tmp_path, capsys):
    """The issue's target: 1,000 generated JPEGs with 1 % corrupt -> ingest (corrupt count
    reported) -> pretokenize with a tiny tokenizer -> 10 AR training steps."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _tiny_checkpoints import write_tiny_checkpoints

    from main import main

    corrupt = set(range(5, 1000, 100))
    src = write_folder(tmp_path / "imgs", 1000, corrupt=corrupt)
    raw, pre = tmp_path / "raw", tmp_path / "pretok"
    assert main(["ingest", "--src", str(src), "--out", str(raw), "--side", "32", "--multiple_of", "4",
                 "--min_side", "16", "--samples_per_shard", "250"]) == 0
    assert "skipped 10 (corrupt 10)" in capsys.readouterr().out
    ckpt = write_tiny_checkpoints(tmp_path)
    assert main(["pretokenize", "--raw", str(raw), "--checkpoint", str(ckpt / "tok.ckpt"), "--out", str(pre),
                 "--batch_size", "64", "--samples_per_shard", "250"]) == 0
    assert "990 samples" in capsys.readouterr().out
    cfg = tmp_path / "fit.yaml"
    cfg.write_text(json.dumps({
        "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 10, "logger": False,
                    "enable_checkpointing": True, "enable_progress_bar": False, "enable_model_summary": False,
                    "default_root_dir": str(tmp_path / "run")},
        "model": {"class_path": "modules.ar.module.ARModule",
                  "init_args": {"preset": "tiny", "tokenizer_ckpt": str(ckpt / "tok.ckpt"), "warmup_steps": 1}},
        "data": {"class_path": "datamodules.pretokenized_dm.PretokenizedDataModule",
                 "init_args": {"train_dir": str(pre), "batch_size": 8, "packing": "compute",
                               "pack_token_cap": 2048, "pack_window": 32}}}))
    assert main(["fit", "--config", str(cfg)]) == 0
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("*.ckpt")] == ["epoch=0-step=10.ckpt"]
