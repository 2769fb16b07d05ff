"""Step 1 of INSID3: pre-processing of images and reference masks into backbone-sized tensors.

Images arrive as float32 arrays (H, W, 3) in [0, 1] (see :mod:`dinoseg_core.io.imageio` for decoding of
grayscale, RGBA and 16-bit files); masks as bool arrays (H, W) of the same size as their image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dinoseg_core.errors import InputError


def input_size(height: int, width: int, image_size: int, mode: str, patch_size: int) -> tuple[int, int]:
    """The (H', W') the backbone sees for an image of (height, width).

    ``square``: (image_size, image_size), as in the paper. ``aspect``: the longer side becomes image_size and
    the other is rounded to a multiple of the patch size (at least one patch).
    """
    if mode == "square":
        side = _round_to_patch(image_size, patch_size)
        return side, side
    longer = max(height, width)
    scale = image_size / longer
    return (_round_to_patch(round(height * scale), patch_size), _round_to_patch(round(width * scale), patch_size))


def _round_to_patch(value: int, patch_size: int) -> int:
    return max(patch_size, int(round(value / patch_size)) * patch_size)


def validate_image(image: np.ndarray, name: str, patch_size: int = 16) -> None:
    """Raise :class:`InputError` naming ``name`` unless ``image`` is a float (H, W, 3) array in [0, 1] of at
    least one patch a side."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise InputError(
            f"image {name!r}: expected an RGB array of shape (H, W, 3), got {shape}; "
            "decode files with dinoseg_core.io.imageio.read_image, which converts grayscale/RGBA/16-bit images"
        )
    if not np.issubdtype(image.dtype, np.floating):
        raise InputError(f"image {name!r}: expected floats in [0, 1], got dtype {image.dtype}")
    height, width = image.shape[:2]
    if height < patch_size or width < patch_size:
        raise InputError(
            f"image {name!r} is {width}x{height} px, smaller than one {patch_size}-px patch of the backbone; "
            "use an image of at least one patch on each side"
        )


def prepare_image(image: np.ndarray, size_hw: tuple[int, int], mean, std, device=None) -> torch.Tensor:
    """Resize (bilinear, anti-aliased) and normalise one image.

    Args:
        image: float array (H, W, 3) in [0, 1].
        size_hw: target (H', W'), multiples of the patch size.
        mean, std: per-channel normalisation constants of the backbone's weights.
    Returns:
        float32 tensor (3, H', W').
    """
    tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
    tensor = tensor.to(device)
    if tuple(tensor.shape[-2:]) != tuple(size_hw):
        tensor = F.interpolate(tensor, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    tensor = tensor.clamp(0.0, 1.0)
    mean_t = torch.tensor(mean, dtype=tensor.dtype, device=tensor.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=tensor.dtype, device=tensor.device).view(1, 3, 1, 1)
    return ((tensor - mean_t) / std_t)[0]


def prepare_mask(mask: np.ndarray, image_shape: tuple[int, int], size_hw: tuple[int, int], name: str) -> torch.Tensor:
    """Binarise (> 0) and nearest-resize a reference mask to the backbone input size.

    Args:
        mask: array (H, W) (bool or numeric; anything > 0 is foreground), the size of its image.
        image_shape: (H, W) of the image the mask belongs to.
        size_hw: (H', W') of the backbone input.
    Returns:
        bool tensor (H', W').
    Raises:
        InputError: the mask is not 2-D, not the size of its image, or empty.
    """
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise InputError(f"mask {name!r}: expected a 2-D array (H, W), got shape {mask.shape}")
    if tuple(mask.shape) != tuple(image_shape):
        raise InputError(
            f"mask {name!r} is {mask.shape[1]}x{mask.shape[0]} px but its image is {image_shape[1]}x{image_shape[0]} px; "
            "a reference mask must have its image's size"
        )
    binary = mask > 0
    if not binary.any():
        raise InputError(
            f"mask {name!r} is empty (no pixel > 0): a reference mask must mark at least one pixel of the concept"
        )
    tensor = torch.from_numpy(binary.astype(np.float32))[None, None]
    resized = F.interpolate(tensor, size=size_hw, mode="nearest")[0, 0] > 0.5
    if not resized.any():  # a sliver thinner than the resize step: keep its centroid
        ys, xs = np.nonzero(binary)
        y = min(int(ys.mean() * size_hw[0] / binary.shape[0]), size_hw[0] - 1)
        x = min(int(xs.mean() * size_hw[1] / binary.shape[1]), size_hw[1] - 1)
        resized[y, x] = True
    return resized


def resize_mask(mask: np.ndarray | torch.Tensor, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a binary mask (bilinear on {0, 1}, threshold 0.5) to ``size_hw``. Returns bool (H, W)."""
    tensor = torch.as_tensor(mask).to(torch.float32)[None, None]
    if tuple(tensor.shape[-2:]) == tuple(size_hw):
        return (tensor[0, 0] > 0.5).cpu().numpy()
    out = F.interpolate(tensor, size=size_hw, mode="bilinear", align_corners=False)
    return (out[0, 0] > 0.5).cpu().numpy()
