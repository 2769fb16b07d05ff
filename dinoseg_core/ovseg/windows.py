"""High-resolution local-global inference: resize, overlapping windows plus one global view, aggregation.

The arithmetic (pure integers) is kept apart from the aggregation so it can be tested on its own:

- :func:`resize_short_side`: the working size (shorter side 640 by default, both sides multiples of the patch);
- :func:`window_starts` / :func:`sliding_windows`: square windows (384, stride 256) covering the working image
  exactly: the last window of each row/column is flush with the edge (it overlaps its neighbour more), and an
  image no larger than the window gets one window, the image itself;
- :func:`global_view_size`: the whole image with its longer side resized to the window (the image itself when it
  already fits).

:func:`local_global_logits` runs a scoring function on every window (batched) and on the global view, averages
the windows' logits where they overlap, blends in the global view's and returns logits on a grid of
``output_stride`` pixels. With one window covering the whole image this is exactly one pass over the image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dinoseg_core.errors import InputError

__all__ = [
    "Window",
    "global_view_size",
    "local_global_logits",
    "resize_short_side",
    "sliding_windows",
    "upsample_argmax",
    "window_starts",
]


@dataclass(frozen=True)
class Window:
    """A crop of the working image, in pixels: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def resize_short_side(height: int, width: int, short_side: int | None, patch_size: int) -> tuple[int, int]:
    """(H', W') with the shorter side ``short_side`` (aspect kept), both rounded to multiples of ``patch_size``
    (at least one patch). ``short_side=None`` keeps the size, rounded likewise."""
    if height <= 0 or width <= 0:
        raise InputError(f"image size {height}x{width}: both sides must be positive")
    scale = 1.0 if short_side is None else short_side / min(height, width)
    return _round_to(height * scale, patch_size), _round_to(width * scale, patch_size)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Start offsets of windows of ``window`` pixels every ``stride`` along ``length`` pixels.

    Starts are ``0, stride, 2 stride, ...`` and then ``length - window`` so that the last window ends flush with
    the edge; ``[0]`` when ``length <= window`` (the window is then clipped to ``length``). Consecutive windows
    overlap or touch, so every pixel is covered.
    """
    if length <= 0 or window <= 0 or stride <= 0:
        raise InputError(f"window_starts(length={length}, window={window}, stride={stride}): all must be positive")
    if stride > window:
        raise InputError(f"stride={stride} is larger than window={window}: windows would leave gaps")
    if length <= window:
        return [0]
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] != length - window:
        starts.append(length - window)
    return starts


def sliding_windows(height: int, width: int, window: int, stride: int) -> list[Window]:
    """Every window over an (height, width) image, row-major; each ``min(window, side)`` pixels a side."""
    wh, ww = min(window, height), min(window, width)
    return [Window(top, left, wh, ww)
            for top in window_starts(height, window, stride) for left in window_starts(width, window, stride)]


def global_view_size(height: int, width: int, window: int, patch_size: int) -> tuple[int, int]:
    """Size of the global view: the image itself if it fits in one window, else its longer side resized to
    ``window`` (aspect kept, multiples of ``patch_size``)."""
    if max(height, width) <= window:
        return height, width
    scale = window / max(height, width)
    return _round_to(height * scale, patch_size), _round_to(width * scale, patch_size)


ScoreFn = Callable[[torch.Tensor], torch.Tensor]
"""(B, 3, h, w) normalised pixels -> (B, K, h_out, w_out) logits at any resolution (resized to the window)."""


def local_global_logits(
    score_fn: ScoreFn,
    pixels: torch.Tensor,
    *,
    window: int,
    stride: int,
    global_view: bool,
    global_weight: float,
    output_stride: int,
    patch_size: int,
    batch_windows: int = 8,
    average: str = "logits",
) -> torch.Tensor:
    """Aggregate ``score_fn`` over sliding windows and a global view of one working-size image.

    Args:
        score_fn: see :data:`ScoreFn`.
        pixels: (3, H, W) normalised image, H and W multiples of ``patch_size`` (and of ``output_stride``).
        window, stride: window geometry (multiples of ``patch_size``).
        global_view: add the global view (:func:`global_view_size`).
        global_weight: the result is ``(1 - w) * mean of windows + w * global`` (``w`` ignored without a global view).
        output_stride: pixels per cell of the output grid.
        batch_windows: windows per ``score_fn`` call.
        average: ``"logits"`` averages the views' logits; ``"probabilities"`` averages their softmax over K (dino.txt's
            recipe) and returns the log of the blend, so that the caller's softmax gives back those probabilities.

    Returns:
        float32 (K, H / output_stride, W / output_stride) logits.
    """
    if average not in ("logits", "probabilities"):
        raise InputError(f"average={average!r}: use 'logits' or 'probabilities'")
    as_probs = average == "probabilities"
    _, height, width = pixels.shape
    if height % patch_size or width % patch_size:
        raise InputError(f"pixels of {height}x{width}: both sides must be multiples of the patch size {patch_size}")
    s = output_stride
    grid = (height // s, width // s)
    windows = sliding_windows(height, width, window, stride)
    total: torch.Tensor | None = None
    count = torch.zeros(1, *grid, device=pixels.device)
    for start in range(0, len(windows), batch_windows):
        batch = windows[start:start + batch_windows]
        crops = torch.stack([pixels[:, w.slices[0], w.slices[1]] for w in batch])
        logits = score_fn(crops).float()
        out_hw = (batch[0].height // s, batch[0].width // s)
        if tuple(logits.shape[-2:]) != out_hw:
            logits = F.interpolate(logits, size=out_hw, mode="bilinear", align_corners=False)
        if as_probs:
            logits = torch.softmax(logits, dim=1)
        if total is None:
            total = torch.zeros(logits.shape[1], *grid, device=logits.device)
        for w, item in zip(batch, logits):
            rows = slice(w.top // s, (w.top + w.height) // s)
            cols = slice(w.left // s, (w.left + w.width) // s)
            total[:, rows, cols] += item
            count[:, rows, cols] += 1
    assert total is not None  # at least one window always exists
    local = total / count
    gh, gw = global_view_size(height, width, window, patch_size)
    if not global_view or ((gh, gw) == (height, width) and len(windows) == 1):
        # (the global view of a single window is that window: same scores)
        return torch.log(local.clamp_min(1e-12)) if as_probs else local
    view = pixels[None] if (gh, gw) == (height, width) else F.interpolate(
        pixels[None], size=(gh, gw), mode="bilinear", align_corners=False, antialias=True)
    glob = F.interpolate(score_fn(view).float(), size=grid, mode="bilinear", align_corners=False)[0]
    if as_probs:
        blended = (1.0 - global_weight) * local + global_weight * torch.softmax(glob, dim=0)
        return torch.log(blended.clamp_min(1e-12))
    return (1.0 - global_weight) * local + global_weight * glob


def _axis_weights(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of bilinear resizing along one axis (``align_corners=False``, as
    ``F.interpolate``)."""
    pos = ((torch.arange(n_out, device=device, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    i0 = pos.floor().long().clamp(max=n_in - 1)
    i1 = (i0 + 1).clamp(max=n_in - 1)
    return i0, i1, (pos - i0).float()


def upsample_argmax(scores: torch.Tensor, size: tuple[int, int], rows_per_chunk: int = 256
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear upsampling of (K, h, w) scores to ``size`` = (H, W) followed by the argmax over K, in row chunks,
    so (K, H, W) is never held in memory at once (a 150-class map of a 4000 px image would need ~10 GB).

    Returns:
        (index int64 (H, W), max value float32 (H, W)).
    """
    _k, h, w = scores.shape
    out_h, out_w = size
    r0, r1, rw = _axis_weights(h, out_h, scores.device)
    c0, c1, cw = _axis_weights(w, out_w, scores.device)
    wide = scores[:, :, c0] * (1 - cw) + scores[:, :, c1] * cw  # (K, h, W)
    index = torch.empty(out_h, out_w, dtype=torch.long, device=scores.device)
    value = torch.empty(out_h, out_w, dtype=scores.dtype, device=scores.device)
    for start in range(0, out_h, rows_per_chunk):
        sl = slice(start, min(out_h, start + rows_per_chunk))
        weight = rw[sl].view(1, -1, 1)
        chunk = wide[:, r0[sl]] * (1 - weight) + wide[:, r1[sl]] * weight
        value[sl], index[sl] = chunk.max(dim=0)
    return index, value
