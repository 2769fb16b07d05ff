"""Step 2 of INSID3: dense patch features of a frozen DINOv3 backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def patch_features(backbone, pixels: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """L2-normalised patch features of the last block (after the final LayerNorm, prefix tokens dropped).

    Args:
        backbone: a :class:`dinoseg_core.backbone.Backbone` (eval mode is guaranteed by the loader).
        pixels: normalised images (B, 3, H, W); H and W multiples of the patch size.
        batch_size: images per forward pass.
    Returns:
        float32 tensor (B, C, H/p, W/p), unit norm along C.
    """
    outputs = []
    for start in range(0, pixels.shape[0], batch_size):
        _, patches = backbone.forward_tokens(pixels[start : start + batch_size])
        outputs.append(F.normalize(patches.float(), dim=1))
    return torch.cat(outputs, dim=0)


def flatten_grid(features: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (N, C) with N = h*w in row-major patch order."""
    return features.flatten(1).T.contiguous()
