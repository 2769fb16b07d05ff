import numpy as np
import torch

from dinoseg_core.refine import crf_refine, upsample_patch_mask


def test_upsample_patch_mask():
    patch = torch.tensor([[True, False], [False, False]])
    up = upsample_patch_mask(patch, (32, 32))
    # bilinear on {0, 1} crosses 0.5 half-way between patch centres, at the patch border (corners round off)
    assert up.shape == (32, 32) and up[0, :16].all() and up[:16, 0].all() and up[:8, :8].all()
    assert not up[16:, :].any() and not up[:, 16:].any()


def test_crf_moves_a_misplaced_boundary_onto_the_colour_edge():
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, :64] = (200, 40, 40)
    image[:, 64:] = (40, 160, 60)
    truth = np.zeros((128, 128), bool)
    truth[:, :64] = True
    coarse = np.zeros((128, 128), bool)
    coarse[:, :60] = True  # 4 px short of the edge, as a 16-px patch grid leaves it
    refined = crf_refine(image, coarse, input_size=128)
    assert (refined != truth).sum() < (coarse != truth).sum() / 4
    # outside the band around the boundary nothing changes
    assert refined[:, :50].all() and not refined[:, 75:].any()


def test_crf_leaves_empty_and_full_masks_alone():
    image = np.zeros((32, 32, 3), np.uint8)
    assert not crf_refine(image, np.zeros((32, 32), bool), 32).any()
    assert crf_refine(image, np.ones((32, 32), bool), 32).all()
