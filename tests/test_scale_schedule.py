"""ScaleSchedule token counts against REFERENCE.md (NextFlow: 900 / 3684 / 10084 at patch 16)."""
import pytest

from modules.common.scale_schedule import ScaleSchedule


@pytest.mark.parametrize("pixels,scales,tokens", [(256, 12, 900), (512, 16, 3684), (1024, 18, 10084)])
def test_nextflow_token_counts(pixels, scales, tokens):
    s = ScaleSchedule.for_image(pixels, pixels, 16)
    assert (s.num_scales, s.token_count) == (scales, tokens)
    assert s.final_grid == (pixels // 16, pixels // 16)
    assert s.offsets[-1] + s.areas[-1] == tokens


def test_shapes_tokenizer_schedule_is_1_to_8():
    s = ScaleSchedule.for_image(64, 64, 8)
    assert s.grids == tuple((k, k) for k in range(1, 9)) and s.token_count == 204


@pytest.mark.parametrize("h,w", [(48, 96), (96, 48), (32, 128), (56, 72)])
def test_aspect_ratio_schedules_end_at_the_image_grid(h, w):
    s = ScaleSchedule.for_image(h, w, 8)
    assert s.final_grid == (h // 8, w // 8)
    assert all(a <= b for a, b in zip(s.areas, s.areas[1:]))


def test_indivisible_size_names_value_and_fix():
    with pytest.raises(ValueError, match=r"60x64 is not divisible by the tokenizer patch 8.*multiple of 8"):
        ScaleSchedule.for_image(60, 64, 8)
