"""Pretrained backends load from LOCAL paths only; missing paths give errors naming value and fix."""
import pytest
import torch

from _tokenizer_data import tiny_config
from modules.tokenizer import MultiScaleTokenizer, TokenizerModule
from modules.tokenizer.losses import PerceptualLoss
from modules.tokenizer.metrics import build_fid_extractor
from modules.tokenizer.semantic import build_teacher

TIMM_KW = {"img_size": 32, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory):
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **TIMM_KW)
    path = tmp_path_factory.mktemp("w") / "vit.pth"
    torch.save(model.state_dict(), path)
    return path, model


def test_timm_semantic_encoder_and_teacher_from_local_file(timm_weights):
    path, reference = timm_weights
    cfg = tiny_config(semantic_encoder="timm", backbone_name="vit_tiny_patch16_224", backbone_weights=str(path),
                      backbone_kwargs=TIMM_KW)
    tok = MultiScaleTokenizer(cfg).eval()
    loaded = tok.semantic_encoder.backbone.model
    assert torch.equal(loaded.patch_embed.proj.weight, reference.patch_embed.proj.weight)  # weights from file
    assert tok.features(torch.zeros(2, 3, 32, 48))[0].shape == (2, 32, 8, 12)
    teacher = build_teacher("timm", "vit_tiny_patch16_224", str(path), TIMM_KW)
    assert teacher.dim == 32
    feats = teacher({"image": torch.zeros(2, 3, 32, 32)}, (8, 8))
    assert feats.shape == (2, 32, 8, 8) and not any(p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("kind", ["timm", "open_clip"])
def test_missing_semantic_weights_name_path_and_fix(kind, tmp_path):
    missing = tmp_path / "siglip2.bin"
    with pytest.raises(FileNotFoundError, match=rf"semantic encoder weights not found at {missing}.*cannot download"):
        MultiScaleTokenizer(tiny_config(semantic_encoder=kind, backbone_name="ViT-B-16", backbone_weights=str(missing)))
    with pytest.raises(ValueError, match=r"needs a local weights path.*'cnn'"):
        MultiScaleTokenizer(tiny_config(semantic_encoder=kind, backbone_name="ViT-B-16"))
    with pytest.raises(FileNotFoundError, match=rf"semantic teacher weights not found at {missing}"):
        TokenizerModule(tokenizer=tiny_config(), stage="joint", teacher=kind, teacher_name="ViT-B-16",
                        teacher_weights=str(missing))


def test_missing_perceptual_and_inception_paths_name_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"perceptual network not found at .*lpips.pt.*perceptual_path: null"):
        PerceptualLoss(str(tmp_path / "lpips.pt"))
    with pytest.raises(FileNotFoundError, match=r"inception-2015-12-05.pt.*rfid_extractor: randconv"):
        build_fid_extractor("inception", str(tmp_path))
    assert build_fid_extractor("randconv").label == "randconv"


def test_teacher_dim_mismatch_names_the_fix(timm_weights):
    path, _ = timm_weights
    with pytest.raises(ValueError, match=r"set `tokenizer.teacher_dim: 32`"):
        TokenizerModule(tokenizer=tiny_config(), stage="joint", teacher="timm", teacher_name="vit_tiny_patch16_224",
                        teacher_weights=str(path), teacher_kwargs=TIMM_KW)
    with pytest.raises(ValueError, match=r"do not fit timm model 'vit_tiny_patch16_224'.*check the model name"):
        build_teacher("timm", "vit_tiny_patch16_224", str(path))  # weights saved with other kwargs
