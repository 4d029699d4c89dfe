"""Validation metrics: semantic-fidelity agreement rule, label-map teacher, rFID extractor."""
import pytest
import torch

from _tokenizer_data import scene_batch
from shapes.scene import Scene, ShapeObject
from modules.tokenizer.metrics import RandConvFeatures, SemanticFidelity, frechet_from_features, scene_agreement
from modules.tokenizer.semantic import LabelMapTeacher

SCENE = Scene((ShapeObject("circle", "red", 0.25, 0.25, 0.2), ShapeObject("square", "blue", 0.75, 0.75, 0.2)))


def det(cls, color, cx, cy, score=0.9, half=6):
    return {"class": cls, "color": color, "score": score, "bbox": [cx - half, cy - half, cx + half, cy + half]}


def test_scene_agreement_rule():
    good = [det("circle", "red", 16, 16), det("square", "blue", 48, 48)]
    assert scene_agreement(SCENE, good, 64, 64) == (True, 2, 2)
    assert scene_agreement(SCENE, good + [det("star", "red", 40, 10)], 64, 64)[0] is False  # extra object
    assert scene_agreement(SCENE, good + [det("star", "red", 40, 10, score=0.2)], 64, 64)[0] is True  # < 0.3
    assert scene_agreement(SCENE, [det("circle", "orange", 16, 16), good[1]], 64, 64) == (False, 1, 2)
    assert scene_agreement(SCENE, [det("circle", "red", 40, 16), good[1]], 64, 64) == (False, 1, 2)  # misplaced
    wrong_shape = [det("star", "red", 16, 16), good[1]]
    assert scene_agreement(SCENE, wrong_shape, 64, 64)[0] is False
    assert scene_agreement(SCENE, wrong_shape, 64, 64, match_class=False) == (True, 2, 2)


def test_oracle_agrees_with_ground_truth_on_originals_not_on_noise():
    batch = scene_batch(6, 64, 64, seed=3)
    fid = SemanticFidelity()
    fid.update(batch["image"], torch.zeros_like(batch["image"]), batch["meta"])
    out = fid.compute()
    assert out["agreement_orig"] >= 5 / 6 and out["agreement"] == 0.0 and out["object_recall"] == 0.0


def test_label_teacher_is_pooled_one_hot():
    batch = {"class_map": torch.zeros(1, 8, 8, dtype=torch.long), "color_map": torch.zeros(1, 8, 8, dtype=torch.long)}
    batch["class_map"][0, :4, :4], batch["color_map"][0, :4, :4] = 2, 1
    t = LabelMapTeacher()(batch, (2, 2))
    assert t.shape == (1, 18, 2, 2)
    assert t[0, 2, 0, 0] == 1.0 and t[0, 0, 1, 1] == 1.0 and t[0, 7 + 1, 0, 0] == 1.0
    assert torch.allclose(t.sum(1), torch.full((1, 2, 2), 2.0))


def test_randconv_fid_is_zero_for_identical_sets_and_grows_with_blur():
    batch = scene_batch(24, 32, 32, seed=4)["image"]
    f = RandConvFeatures()
    real = f(batch).numpy()
    blurred = f(torch.nn.functional.avg_pool2d(batch, 3, 1, 1)).numpy()
    noisy = f((batch + 0.5 * torch.randn_like(batch)).clamp(-1, 1)).numpy()
    assert frechet_from_features(real, real) == pytest.approx(0.0, abs=1e-6)
    assert 0 < frechet_from_features(real, blurred) < frechet_from_features(real, noisy)
