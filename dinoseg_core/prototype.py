"""Step 5 of INSID3: the reference set and its prototype.

A reference set is embedded once (features, debiasing, mask downsampling) and reused for any number of
targets; the reference code re-extracts it for every target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ReferenceShot:
    """One reference image, embedded.

    Attributes:
        features_debiased: (M, C) debiased unit patch features, M = h*w.
        mask: (M,) bool, the reference mask on the patch grid.
        grid: (h, w).
    """

    features_debiased: torch.Tensor
    mask: torch.Tensor
    grid: tuple[int, int]


@dataclass(frozen=True)
class ReferenceSet:
    """S embedded reference shots and their prototype p (C,) (unit norm)."""

    shots: tuple[ReferenceShot, ...]
    prototype: torch.Tensor

    @property
    def num_shots(self) -> int:
        return len(self.shots)


def mask_to_patches(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Downsample an input-resolution mask (H', W') to the patch grid (h, w).

    Bilinear (which at a 16x step reads the pixels at each patch centre), threshold 0.5; if that leaves nothing,
    nearest; if still nothing, the single patch under the mask's centroid. The caller guarantees a non-empty mask.
    Returns bool (h, w).
    """
    as_float = mask.to(torch.float32)[None, None]
    patches = F.interpolate(as_float, size=grid, mode="bilinear", align_corners=False)[0, 0] > 0.5
    if patches.any():
        return patches
    patches = F.interpolate(as_float, size=grid, mode="nearest")[0, 0] > 0.5
    if patches.any():
        return patches
    ys, xs = torch.nonzero(mask, as_tuple=True)
    y = min(int(ys.float().mean() * grid[0] / mask.shape[0]), grid[0] - 1)
    x = min(int(xs.float().mean() * grid[1] / mask.shape[1]), grid[1] - 1)
    patches = torch.zeros(grid, dtype=torch.bool, device=mask.device)
    patches[y, x] = True
    return patches


def compute_prototype(shots: list[ReferenceShot] | tuple[ReferenceShot, ...]) -> torch.Tensor:
    """Mean debiased feature inside each shot's mask, averaged over shots, L2-normalised. Returns (C,)."""
    per_shot = [shot.features_debiased[shot.mask].mean(dim=0) for shot in shots]
    return F.normalize(torch.stack(per_shot).mean(dim=0), dim=0)
