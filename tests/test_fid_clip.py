"""FID / CLIPScore: skipped (never faked) without weights, clear errors for missing paths, and real
numbers through clean-fid and open_clip with tiny local stand-ins for the pretrained networks."""
import numpy as np
import pytest
import torch
from PIL import Image

from evaluation import fid_clip
from evaluation.backends import BackendError


def test_skipped_without_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(fid_clip, "CLEANFID_CACHE", tmp_path / "absent.pt")
    (tmp_path / "a").mkdir()
    with pytest.warns(UserWarning, match="fid skipped"):
        out = fid_clip.fid(tmp_path / "a", tmp_path / "a")
    assert out["status"] == "skipped" and "inception_path" in out["reason"] and "value" not in out
    with pytest.warns(UserWarning, match="clip_score skipped"):
        assert fid_clip.clip_score([np.zeros((8, 8, 3), np.uint8)], ["x"])["status"] == "skipped"
    with pytest.raises(BackendError, match="/no/inception.pt"):
        fid_clip.fid(tmp_path / "a", tmp_path / "a", inception_path="/no/inception.pt")
    with pytest.raises(BackendError, match="/no/clip.pt"):
        fid_clip.clip_score([np.zeros((8, 8, 3), np.uint8)], ["x"], model_name="ViT-B-32", checkpoint="/no/clip.pt")


def _write(folder, images):
    folder.mkdir()
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")


def test_fid_through_clean_fid_with_local_extractor(tmp_path):
    rng = np.random.default_rng(0)
    dark = [rng.integers(0, 100, (16, 16, 3), dtype=np.uint8) for _ in range(12)]
    dark2 = [rng.integers(0, 100, (16, 16, 3), dtype=np.uint8) for _ in range(12)]
    bright = [rng.integers(150, 255, (16, 16, 3), dtype=np.uint8) for _ in range(12)]
    for name, ims in [("dark", dark), ("dark2", dark2), ("bright", bright)]:
        _write(tmp_path / name, ims)

    def pooled_stats(x):    # (B, 3, 299, 299) in [0, 255] -> 6 features: channel means and stds
        return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1) / 255

    same = fid_clip.fid(tmp_path / "dark", tmp_path / "dark", feature_extractor=pooled_stats)
    near = fid_clip.fid(tmp_path / "dark", tmp_path / "dark2", feature_extractor=pooled_stats)
    far = fid_clip.fid(tmp_path / "dark", tmp_path / "bright", feature_extractor=pooled_stats)
    assert same["status"] == "ok" and abs(same["value"]) < 1e-6
    assert 0 < near["value"] < far["value"] and far["value"] > 0.1


def test_clip_score_from_local_checkpoint(tmp_path):
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    open_clip.factory._MODEL_CONFIGS["tiny-test-clip"] = config
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-test-clip", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    images = [np.full((32, 32, 3), v, np.uint8) for v in (0, 128, 255)]
    prompts = ["a red circle", "a blue square", "two stars"]
    out = fid_clip.clip_score(images, prompts, model_name="tiny-test-clip", checkpoint=tmp_path / "tiny.pt")
    # the same numbers by hand from the saved weights
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-test-clip", pretrained=str(tmp_path / "tiny.pt"))
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.eval().encode_image(
            torch.stack([preprocess(Image.fromarray(i)) for i in images])), dim=-1)
        txt = torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer("tiny-test-clip")(prompts)), dim=-1)
    expected = (100 * (img * txt).sum(-1).clamp(min=0)).numpy()
    assert out["status"] == "ok"
    np.testing.assert_allclose(out["per_image"], expected, rtol=1e-4, atol=1e-4)
    assert out["value"] == pytest.approx(float(expected.mean()), abs=1e-4)
