"""Window arithmetic and local-global aggregation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dinoseg_core.errors import InputError
from dinoseg_core.ovseg.config import OvsegConfig
from dinoseg_core.ovseg.windows import (
    global_view_size,
    local_global_logits,
    resize_short_side,
    sliding_windows,
    upsample_argmax,
    window_starts,
)


def test_paper_defaults():
    cfg = OvsegConfig()
    assert (cfg.short_side, cfg.window, cfg.stride, cfg.global_view) == (640, 384, 256, True)
    assert OvsegConfig.from_dict(cfg.to_dict()) == cfg and cfg.digest() == OvsegConfig().digest()


@pytest.mark.parametrize("length, expected", [
    (384, [0]), (100, [0]), (640, [0, 256]), (641, [0, 256, 257]), (896, [0, 256, 512]), (897, [0, 256, 512, 513]),
])
def test_window_starts_examples(length, expected):
    assert window_starts(length, 384, 256) == expected


@pytest.mark.parametrize("window, stride", [(384, 256), (64, 16), (48, 48), (32, 7)])
def test_windows_cover_the_image_exactly(window, stride):
    for length in range(1, 1200, 13):
        starts = window_starts(length, window, stride)
        size = min(window, length)
        covered = np.zeros(length, int)
        for s in starts:
            assert 0 <= s and s + size <= length  # inside the image
            covered[s:s + size] += 1
        assert covered.min() >= 1  # every pixel
        assert starts[-1] + size == length  # the edge window is flush with the edge
        assert starts == sorted(set(starts))
        assert all(b - a <= stride for a, b in itertools.pairwise(starts))
        assert len(starts) == (1 if length <= window else 1 + -(-(length - window) // stride))  # no extra window


def test_sliding_windows_grid():
    windows = sliding_windows(640, 848, 384, 256)
    assert len(windows) == 2 * 3
    assert {(w.height, w.width) for w in windows} == {(384, 384)}
    assert windows[-1].top + 384 == 640 and windows[-1].left + 384 == 848
    small = sliding_windows(100, 200, 384, 256)
    assert len(small) == 1 and (small[0].height, small[0].width) == (100, 200)


def test_bad_geometry():
    with pytest.raises(InputError, match="gaps"):
        window_starts(500, 100, 200)
    with pytest.raises(InputError, match="gaps"):
        OvsegConfig(window=256, stride=384)
    with pytest.raises(InputError, match="multiple of the backbone's patch size 16"):
        OvsegConfig(window=380).check_patch_size(16)
    with pytest.raises(InputError, match="does not divide"):
        OvsegConfig(output_stride=5).check_patch_size(16)


def test_resize_and_global_view():
    assert resize_short_side(480, 640, 640, 16) == (640, 848)  # 853.3 -> nearest multiple of 16
    assert resize_short_side(1000, 500, 640, 16) == (1280, 640)
    assert resize_short_side(30, 33, None, 16) == (32, 32)
    assert resize_short_side(3, 3, None, 16) == (16, 16)
    assert global_view_size(640, 848, 384, 16) == (288, 384)
    assert global_view_size(320, 256, 384, 16) == (320, 256)


def _conv_score(pixels: torch.Tensor) -> torch.Tensor:
    """A deterministic 'model' mixing neighbouring pixels and with a per-view term, patch-grid output."""
    x = F.avg_pool2d(pixels, 16)
    return torch.cat([x, x.mean(dim=(2, 3), keepdim=True).expand_as(x)[:, :1] - x[:, :1]], dim=1)


@pytest.mark.parametrize("global_view", [False, True])
def test_one_window_equals_single_pass(global_view):
    torch.manual_seed(0)
    pixels = torch.randn(3, 96, 128)
    out = local_global_logits(_conv_score, pixels, window=128, stride=64, global_view=global_view, global_weight=0.5,
                              output_stride=4, patch_size=16)
    single = F.interpolate(_conv_score(pixels[None]), size=(24, 32), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, single)


def test_sliding_equals_single_pass_for_a_local_model():
    # A per-patch model gives the same logits whichever window sees a patch, so the average over overlapping
    # windows must equal one pass over the whole image: checks placement and normalisation of every window.
    torch.manual_seed(0)
    pixels = torch.randn(3, 160, 224)
    weight = torch.randn(5, 3)

    def per_patch(x):
        return torch.einsum("kc,bchw->bkhw", weight, F.avg_pool2d(x, 16))

    out = local_global_logits(per_patch, pixels, window=64, stride=32, global_view=False, global_weight=0.5,
                              output_stride=16, patch_size=16, batch_windows=3)
    torch.testing.assert_close(out, per_patch(pixels[None])[0])


def test_global_view_is_blended():
    pixels = torch.zeros(3, 64, 128)

    def constant(x):  # 1 for full-resolution windows (64 px high), 3 for the downsized global view (32 px high)
        return torch.full((x.shape[0], 1, x.shape[2] // 16, x.shape[3] // 16), 1.0 if x.shape[2] == 64 else 3.0)

    out = local_global_logits(constant, pixels, window=64, stride=32, global_view=True, global_weight=0.25,
                              output_stride=4, patch_size=16)
    torch.testing.assert_close(out, torch.full((1, 16, 32), 0.75 * 1 + 0.25 * 3))


def test_upsample_argmax_matches_interpolate():
    torch.manual_seed(0)
    scores = torch.randn(7, 9, 13)
    for size, chunk in itertools.product([(9, 13), (37, 50), (100, 31)], [5, 256]):
        index, value = upsample_argmax(scores, size, rows_per_chunk=chunk)
        full = F.interpolate(scores[None], size=size, mode="bilinear", align_corners=False)[0]
        torch.testing.assert_close(value, full.max(0).values, rtol=1e-5, atol=1e-5)
        assert (index == full.argmax(0)).float().mean() > 0.999  # ties at float noise only
