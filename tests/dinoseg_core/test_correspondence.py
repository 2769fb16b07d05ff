import pytest
import torch
import torch.nn.functional as F

from dinoseg_core.correspondence import match_keypoints
from dinoseg_core.errors import InputError


def test_keypoints_follow_a_shifted_feature_map():
    g = torch.Generator().manual_seed(0)
    source = F.normalize(torch.randn(32, 10, 10, generator=g), dim=0)
    target = torch.roll(source, shifts=(2, 3), dims=(1, 2))  # content moved 2 patches down, 3 right
    keypoints = torch.tensor([[24.0, 24.0], [40.0, 72.0]])  # (x, y) at patch centres of a 160x160 image
    predicted = match_keypoints(source, target, keypoints, (160, 160), (160, 160), soft_window=0)
    assert torch.allclose(predicted, keypoints + torch.tensor([48.0, 32.0]))
    soft = match_keypoints(source, target, keypoints, (160, 160), (160, 160))
    assert (soft - predicted).abs().max() < 8  # the soft-argmax stays within half a patch


def test_keypoints_outside_the_image_are_rejected():
    feats = F.normalize(torch.randn(8, 2, 2), dim=0)
    with pytest.raises(InputError, match="inside the source image of 32x32"):
        match_keypoints(feats, feats, torch.tensor([[40.0, 1.0]]), (32, 32), (32, 32))
