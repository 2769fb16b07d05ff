"""Windows over a large scene and seamless stitching of per-window scores, in bounded memory.

Windows (:class:`WindowGrid`): along each axis, ``n = ceil((L - overlap) / (size - overlap))`` windows of exactly
``size`` px, spread evenly from the first pixel to the last (the last window ends on the scene's edge, so edge
pixels are never dropped and every window has the model's full input size; overlaps come out at least
``overlap`` px). An axis shorter than ``size`` gets one window of its length.

Stitching (:class:`Stitcher`): every window contributes a per-pixel foreground score in ``[0, 1]``; the stitched
score is a weighted mean over the windows covering a pixel, with separable weights that fall linearly to the
window's inner borders (the distance to the nearest inner border; scene borders get no taper), normalised per axis
so they sum to 1. Across an overlap two windows therefore cross-fade linearly and no pixel depends on a window
border's decision alone: where two windows agree, the mask runs through the overlap unchanged; where they
disagree, the decision moves smoothly from one to the other instead of jumping at a fixed line. The mask is
``score >= threshold`` (0.5) and ``valid``. A score may also have channels, ``(C, h, w)`` (e.g. class
probabilities): each channel is blended alike and a ``decide(score, valid)`` function turns a block's blended
channels into what the writer receives (e.g. a label block: the argmax).

Memory: the scene is cut into *cells* by all window starts and stops; a cell's accumulator (float32) lives from
its first covering window to its last and is then thresholded and handed to the writer, so each output pixel is
written exactly once. In row-major window order the live cells are the current window plus the overlap strip
below the current row of windows: ``O(overlap x scene width)`` float32 (8 MB for a 16k-px-wide scene and
128 px overlap), never a whole-scene array.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from dinoseg_core.errors import InputError

try:
    from rasterio.windows import Window
except ImportError:  # pragma: no cover - windows need no rasterio, only the Window value type
    Window = None  # type: ignore[assignment,misc]

__all__ = ["Decide", "MaskWriter", "Stitcher", "WindowGrid", "axis_spans"]

#: ``writer(row_off, col_off, mask)``: receives non-overlapping ``bool (h, w)`` blocks that tile the scene once.
MaskWriter = Callable[[int, int, np.ndarray], None]
#: ``decide(score, valid) -> block``: a block's blended score (``(h, w)`` or ``(C, h, w)``) and its validity
#: (``bool (h, w)`` or None) -> the ``(h, w)`` block handed to the writer (nonzero counts as foreground).
Decide = Callable[[np.ndarray, "np.ndarray | None"], np.ndarray]


def axis_spans(length: int, size: int, overlap: int) -> tuple[tuple[int, int], ...]:
    """``(start, stop)`` of the windows along one axis of ``length`` px (see the module docstring)."""
    if length <= size:
        return ((0, length),)
    n = math.ceil((length - overlap) / (size - overlap))
    starts = [round(k * (length - size) / (n - 1)) for k in range(n)]
    return tuple((s, s + size) for s in starts)


def _axis_weights(spans: tuple[tuple[int, int], ...], length: int) -> list[np.ndarray]:
    """Per window, float32 weights over its span: distance to the nearest inner border, normalised to sum 1."""
    raw = []
    total = np.zeros(length, np.float64)
    for start, stop in spans:
        x = np.arange(start, stop, dtype=np.float64)
        left = x - start + 0.5 if start > 0 else np.full_like(x, np.inf)
        right = stop - x - 0.5 if stop < length else np.full_like(x, np.inf)
        w = np.minimum(left, right)
        w[np.isinf(w)] = 1.0  # a window spanning the whole axis
        raw.append(w)
        total[start:stop] += w
    return [(w / total[start:stop]).astype(np.float32) for w, (start, stop) in zip(raw, spans)]


@dataclass(frozen=True)
class WindowGrid:
    """The windows over a ``height x width`` scene.

    Attributes:
        rows, cols: ``(start, stop)`` spans along y and x; window ``(i, j)`` is ``rows[i] x cols[j]``.
    """

    height: int
    width: int
    window_size: int
    overlap: int
    rows: tuple[tuple[int, int], ...]
    cols: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, height: int, width: int, window_size: int, overlap: int) -> WindowGrid:
        for name, value in (("height", height), ("width", width), ("window_size", window_size)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise InputError(f"{name}={value!r}: must be a positive int (pixels)")
        if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < window_size:
            raise InputError(f"overlap={overlap!r}: must be an int in [0, window_size={window_size}) (pixels)")
        return cls(int(height), int(width), int(window_size), int(overlap),
                   axis_spans(int(height), int(window_size), int(overlap)),
                   axis_spans(int(width), int(window_size), int(overlap)))

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    def __iter__(self) -> Iterator[tuple[int, int, Window]]:
        """``(i, j, Window(col_off, row_off, width, height))`` in row-major order (the order that keeps the
        stitcher's memory at one overlap strip)."""
        for i, (r0, r1) in enumerate(self.rows):
            for j, (c0, c1) in enumerate(self.cols):
                yield i, j, Window(c0, r0, c1 - c0, r1 - r0)


class _Axis:
    """Cells along one axis and which windows cover each."""

    def __init__(self, spans: tuple[tuple[int, int], ...], length: int):
        self.spans = spans
        self.weights = _axis_weights(spans, length)
        cuts = sorted({0, length, *(s for s, _ in spans), *(e for _, e in spans)})
        self.cells = list(itertools.pairwise(cuts))
        self.cover = [sum(1 for s, e in spans if s <= c0 and c1 <= e) for c0, c1 in self.cells]
        self.cells_of = [[k for k, (c0, c1) in enumerate(self.cells) if s <= c0 and c1 <= e] for s, e in spans]


class Stitcher:
    """Blend per-window scores into one mask and hand it to ``writer`` block by block.

    Call :meth:`add` once per window of ``grid`` (any order; row-major keeps memory smallest), then
    :meth:`close`, which checks that every pixel was written.

    Args:
        threshold: a one-channel score at or above it is foreground (the default ``decide``).
        decide: see :data:`Decide`; default ``(score >= threshold) & valid``.
    """

    def __init__(self, grid: WindowGrid, writer: MaskWriter, threshold: float = 0.5, decide: Decide | None = None):
        self.grid = grid
        self.writer = writer
        self.threshold = float(threshold)
        self.decide = decide or self._threshold
        self._y = _Axis(grid.rows, grid.height)
        self._x = _Axis(grid.cols, grid.width)
        self._acc: dict[tuple[int, int], np.ndarray] = {}
        self._left: dict[tuple[int, int], int] = {}
        self._added: set[tuple[int, int]] = set()
        self.pixels_written = 0
        self.foreground_pixels = 0
        self.peak_cells_bytes = 0

    def add(self, i: int, j: int, score: np.ndarray, valid: np.ndarray | None = None) -> None:
        """Add window ``(i, j)``'s score.

        Args:
            score: ``float32 (h, w)`` foreground score in ``[0, 1]`` over the window, or ``(C, h, w)`` channels.
            valid: ``bool (h, w)``; invalid pixels come out False whatever the score. The last window to cover a
                cell supplies its validity (all windows read the same pixels, so any one would do).
        """
        if (i, j) in self._added:
            raise InputError(f"window ({i}, {j}) was added twice")
        (r0, r1), (c0, c1) = self.grid.rows[i], self.grid.cols[j]
        if score.shape[-2:] != (r1 - r0, c1 - c0) or score.ndim not in (2, 3):
            raise InputError(f"score of window ({i}, {j}) has shape {score.shape}, expected {(r1 - r0, c1 - c0)} "
                             "or (channels, height, width)")
        self._added.add((i, j))
        wy, wx = self._y.weights[i], self._x.weights[j]
        for a in self._y.cells_of[i]:
            y0, y1 = self._y.cells[a]
            for b in self._x.cells_of[j]:
                x0, x1 = self._x.cells[b]
                key = (a, b)
                part = score[..., y0 - r0 : y1 - r0, x0 - c0 : x1 - c0] * wy[y0 - r0 : y1 - r0, None]
                part *= wx[None, x0 - c0 : x1 - c0]
                if key in self._acc:
                    self._acc[key] += part
                    self._left[key] -= 1
                else:
                    self._acc[key] = part
                    self._left[key] = self._y.cover[a] * self._x.cover[b] - 1
                if self._left[key] == 0:
                    del self._left[key]
                    cell_valid = None if valid is None else valid[y0 - r0 : y1 - r0, x0 - c0 : x1 - c0]
                    mask = self.decide(self._acc.pop(key), cell_valid)
                    self.writer(y0, x0, mask)
                    self.pixels_written += mask.size
                    self.foreground_pixels += int(np.count_nonzero(mask))
        self.peak_cells_bytes = max(self.peak_cells_bytes, sum(a.nbytes for a in self._acc.values()))

    def _threshold(self, score: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        mask = score >= self.threshold
        return mask if valid is None else mask & valid

    def close(self) -> None:
        """Check that every window was added and every pixel written."""
        missing = len(self.grid) - len(self._added)
        if missing or self._acc or self.pixels_written != self.grid.height * self.grid.width:
            raise InputError(
                f"stitching incomplete: {missing} window(s) not added, {len(self._acc)} block(s) pending, "
                f"{self.pixels_written} of {self.grid.height * self.grid.width} pixels written"
            )
