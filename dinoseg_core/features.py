"""Step 2 of INSID3: dense patch features of a frozen DINOv3 backbone, and how many images fit in one pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinoseg_core.errors import InputError

__all__ = ["auto_batch_size", "flatten_grid", "forward_bytes_per_image", "patch_features"]


def patch_features(
    backbone, pixels: torch.Tensor, batch_size: int = 8, *, full_precision: bool = False
) -> torch.Tensor:
    """L2-normalised patch features of the last block (after the final LayerNorm, prefix tokens dropped).

    Args:
        backbone: a :class:`dinoseg_core.backbone.Backbone` (eval mode is guaranteed by the loader).
        pixels: normalised images (B, 3, H, W); H and W multiples of the patch size.
        batch_size: images per forward pass (:func:`auto_batch_size` picks one from free GPU memory).
        full_precision: ignore the backbone's bf16/fp16 autocast (for the positional basis, step 3).
    Returns:
        float32 tensor (B, C, H/p, W/p), unit norm along C.
    """
    outputs = []
    for start in range(0, pixels.shape[0], batch_size):
        _, patches = backbone.forward_tokens(pixels[start : start + batch_size], full_precision=full_precision)
        outputs.append(F.normalize(patches.float(), dim=1))
    return torch.cat(outputs, dim=0)


def flatten_grid(features: torch.Tensor) -> torch.Tensor:
    """(C, h, w) -> (N, C) with N = h*w in row-major patch order."""
    return features.flatten(1).T.contiguous()


def forward_bytes_per_image(backbone, input_hw: tuple[int, int]) -> int:
    """Upper estimate of the device memory one (H, W) image takes in an inference forward of ``backbone``.

    Per token T = 1 + registers + (H/p)(W/p) and width C, MLP width I (doubled for a gated MLP): the float32
    residual stream, LayerNorm output and its copy (12 C bytes), the block's largest transients in the compute
    dtype of e bytes (qkv, rotated q/k, attention and projection outputs, the MLP's two I-wide tensors: (2 I + 10 C)
    e), and the float32 features handed back and normalised (12 C). SDPA keeps attention O(T); an eager
    attention would add heads * T^2 * (e + 4) bytes for its score and softmax matrices. Measured peaks sit below
    this estimate (``bench/device_check.sh`` prints both).

    Args:
        backbone: a :class:`~dinoseg_core.backbone.Backbone` (or anything with its ``model.config``,
            ``compute_dtype``, ``patch_size``, ``num_register_tokens`` and ``attention``).
        input_hw: backbone input (H, W), multiples of the patch size.
    Returns:
        bytes per image.
    """
    config = backbone.model.config
    channels = int(config.hidden_size)
    mlp = int(config.intermediate_size) * (2 if getattr(config, "use_gated_mlp", False) else 1)
    element = torch.finfo(backbone.compute_dtype).bits // 8
    p = backbone.patch_size
    tokens = 1 + backbone.num_register_tokens + (input_hw[0] // p) * (input_hw[1] // p)
    per_token = 12 * channels + (2 * mlp + 10 * channels) * element + 12 * channels
    attention = 0 if backbone.attention == "sdpa" else int(config.num_attention_heads) * tokens * tokens * (element + 4)
    return tokens * per_token + attention + 3 * 4 * input_hw[0] * input_hw[1]


def auto_batch_size(
    backbone,
    input_hw: tuple[int, int],
    default: int = 8,
    *,
    free_bytes: int | None = None,
    fraction: float = 0.5,
    maximum: int = 64,
) -> int:
    """Images per forward pass that fit in ``fraction`` of the device's free memory.

    On CUDA the free memory is read with ``torch.cuda.mem_get_info``; elsewhere (CPU, MPS) there is nothing to
    size against and ``default`` is returned, unless ``free_bytes`` is given. The rest of the free memory is left
    to what runs beside the backbone (step 7's (N, N) float64 matrix: 134 MB per tile at 1024 px, per worker).
    Under autocast, the bf16/fp16 copies of the weights that autocast caches during a forward are set aside first.

    Args:
        backbone: a :class:`~dinoseg_core.backbone.Backbone`.
        input_hw: backbone input (H, W).
        default: the answer when the device's free memory is not known.
        free_bytes: free device memory to size against (instead of asking CUDA).
        fraction: share of the free memory the backbone's activations may take, in (0, 1].
        maximum: cap; larger batches stop paying on a GPU and hold more images in flight.
    Returns:
        a batch size in [1, maximum] (``default`` when not sized).
    Raises:
        InputError: ``default``, ``fraction`` or ``maximum`` out of range.
    """
    if default < 1 or maximum < 1 or not 0.0 < fraction <= 1.0:
        raise InputError(f"auto_batch_size needs default >= 1, maximum >= 1 and fraction in (0, 1]; got "
                         f"default={default}, maximum={maximum}, fraction={fraction}.")
    if free_bytes is None:
        device = torch.device(backbone.device)
        if device.type != "cuda":
            return default
        free_bytes, _ = torch.cuda.mem_get_info(device)
    if backbone.autocast_dtype is not None:
        parameters = sum(p.numel() for p in backbone.model.parameters())
        free_bytes -= parameters * (torch.finfo(backbone.autocast_dtype).bits // 8)
    fits = int(max(free_bytes, 0) * fraction) // forward_bytes_per_image(backbone, input_hw)
    return max(1, min(maximum, fits))
