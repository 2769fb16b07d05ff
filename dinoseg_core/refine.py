"""Step 9 of INSID3: upsampling the patch mask and optional dense-CRF refinement of its boundary."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from dinoseg_core.errors import MissingDependencyError

#: Band around the boundary that the CRF may change (pixels at 512 px input, scaled with the input size).
BAND_RADIUS = 5
FG_CORE, FG_OUTSIDE, FG_BAND = 0.95, 0.05, 0.5
#: Dense-CRF kernels of the released code, at 512 px input; spatial stds scale with s = size / 512.
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_WEIGHT = 12.0, 0.03 * 255.0, 20.0
SMOOTH_SXY, SMOOTH_WEIGHT = 4.0, 3.0
CRF_ITERATIONS = 10


def upsample_patch_mask(patch_mask: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling of a patch mask (h, w) to the input size (H', W'), threshold 0.5. Returns bool."""
    up = F.interpolate(patch_mask.float()[None, None], size=size_hw, mode="bilinear", align_corners=False)
    return up[0, 0] > 0.5


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return xx * xx + yy * yy <= radius * radius


def crf_refine(image: np.ndarray, mask: np.ndarray, input_size: int) -> np.ndarray:
    """Refine a binary mask inside a band around its boundary with a fully connected CRF (pydensecrf).

    Inside the eroded core p(fg) = 0.95, outside the dilated mask 0.05, in the band 0.5; bilateral and smoothness
    kernels as in the released code (spatial stds scaled by ``input_size / 512``), Potts, 10 iterations; the CRF's
    labels are kept only inside the band.

    Args:
        image: uint8 (H', W', 3), the resized input image.
        mask: bool (H', W').
        input_size: the configured image size (sets the kernel scale).
    Returns:
        bool (H', W').
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise MissingDependencyError("pydensecrf", "CRF refinement (--crf)", "pydensecrf2==1.1") from exc
    if not mask.any() or mask.all():
        return mask
    disk = _disk(BAND_RADIUS)
    dilated = ndimage.binary_dilation(mask, structure=disk)
    eroded = ndimage.binary_erosion(mask, structure=disk)
    band = dilated & ~eroded
    foreground = np.where(eroded, FG_CORE, np.where(dilated, FG_BAND, FG_OUTSIDE)).astype(np.float32)
    probs = np.ascontiguousarray(np.stack([1.0 - foreground, foreground]))
    height, width = mask.shape
    scale = input_size / 512.0
    crf = dcrf.DenseCRF2D(width, height, 2)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=SMOOTH_SXY * scale, compat=SMOOTH_WEIGHT)
    crf.addPairwiseBilateral(
        sxy=BILATERAL_SXY * scale, srgb=BILATERAL_SRGB, rgbim=np.ascontiguousarray(image), compat=BILATERAL_WEIGHT
    )
    labels = np.argmax(np.array(crf.inference(CRF_ITERATIONS)), axis=0).reshape(height, width).astype(bool)
    return np.where(band, labels, mask)
