"""Semantic correspondence with the same features: map keypoints of a source image into a target image.

The INSID3 reference code ships this use: each source keypoint takes the (debiased) feature under it, and the
target location is that of its most similar target patch, refined by a soft-argmax over a small window.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinoseg_core.errors import InputError

#: Half-width (in patches) of the soft-argmax window around the best match, and its temperature.
WINDOW = 2
TEMPERATURE = 0.02


def sample_features(features: torch.Tensor, points: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinearly sample a feature grid at pixel coordinates.

    Args:
        features: (C, h, w) unit features covering an image of ``image_hw`` (H, W) pixels.
        points: (K, 2) as (x, y) pixel coordinates in that image.
    Returns:
        (K, C) unit vectors.
    """
    height, width = image_hw
    grid = torch.stack([points[:, 0] / width * 2 - 1, points[:, 1] / height * 2 - 1], dim=-1)
    grid = grid.to(features.dtype).view(1, 1, -1, 2)
    sampled = F.grid_sample(features[None], grid, mode="bilinear", align_corners=False)[0, :, 0].T
    return F.normalize(sampled, dim=-1)


def match_keypoints(
    source_features: torch.Tensor,
    target_features: torch.Tensor,
    keypoints: torch.Tensor,
    source_hw: tuple[int, int],
    target_hw: tuple[int, int],
    soft_window: int = WINDOW,
) -> torch.Tensor:
    """Predict target keypoints for source keypoints.

    Args:
        source_features, target_features: (C, h, w) unit features (debiased for cross-image matching).
        keypoints: (K, 2) (x, y) in source pixels.
        source_hw, target_hw: original (H, W) of each image.
        soft_window: half-width in patches of the soft-argmax refinement; 0 returns patch centres.
    Returns:
        (K, 2) (x, y) in target pixels.
    """
    keypoints = torch.as_tensor(keypoints, dtype=torch.float32)
    if keypoints.ndim != 2 or keypoints.shape[1] != 2:
        raise InputError(f"keypoints: expected shape (K, 2) of (x, y), got {tuple(keypoints.shape)}")
    height, width = source_hw
    if ((keypoints[:, 0] < 0) | (keypoints[:, 0] >= width) | (keypoints[:, 1] < 0) | (keypoints[:, 1] >= height)).any():
        raise InputError(f"keypoints: every (x, y) must lie inside the source image of {width}x{height} px")
    queries = sample_features(source_features, keypoints.to(source_features.device), source_hw)
    grid_h, grid_w = target_features.shape[1:]
    similarity = queries @ target_features.flatten(1)  # (K, N)
    best = similarity.argmax(dim=1)
    rows, cols = (best // grid_w).float(), (best % grid_w).float()
    if soft_window > 0:
        ys, xs = torch.meshgrid(
            torch.arange(grid_h, device=similarity.device, dtype=torch.float32),
            torch.arange(grid_w, device=similarity.device, dtype=torch.float32),
            indexing="ij",
        )
        ys, xs = ys.flatten(), xs.flatten()
        near = ((ys[None] - rows[:, None]).abs() <= soft_window) & ((xs[None] - cols[:, None]).abs() <= soft_window)
        weights = torch.softmax((similarity / TEMPERATURE).masked_fill(~near, -float("inf")), dim=1)
        rows, cols = weights @ ys, weights @ xs
    target_h, target_w = target_hw
    return torch.stack([(cols + 0.5) * target_w / grid_w, (rows + 0.5) * target_h / grid_h], dim=-1).cpu()
