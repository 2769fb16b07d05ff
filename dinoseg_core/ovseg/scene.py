"""Classes named in text on scenes larger than memory: the scene's windows, each an image for the segmenter, one
global view of the whole scene, class probabilities stitched without seams, label blocks streamed to a writer.

The scene comes in through a ``read(window, out_shape=None)`` callable (:data:`~dinoseg_core.geo.scene.SceneReader`),
as for INSID3 scenes (:func:`dinoseg_core.geo.segment_scene`), and the same windows, loop and stitcher serve both
(:class:`~dinoseg_core.geo.windows.WindowGrid`, :func:`~dinoseg_core.geo.scene.stitch_windows`,
:class:`~dinoseg_core.geo.windows.Stitcher`)::

    source = open_raster("s3://bucket/scene.tif", bands=(4, 3, 2), storage_options=so)
    classes = segmenter.embed_classes(["building", "road", "water"])
    with raster_reader(source) as reader:
        result = segment_scene(segmenter, classes, reader.read, source.shape, writer, name=source.display_url)

What happens (:func:`segment_scene`):

1. **Windows** (:class:`SceneConfig` ``window_size``, default the segmenter's ``short_side``, i.e. full
   resolution; ``overlap``): every window is an image for the segmenter. It is resized so that its shorter side
   is ``short_side`` (all windows have the same size, so all get the same scale; a scene smaller than a window is
   one window, segmented exactly like a tile), then scored in the segmenter's sliding windows (384, stride 256),
   averaged on the aggregation grid (:func:`~dinoseg_core.ovseg.windows.local_global_logits`).
2. **Global view**: instead of a global view of each window, one view of the *whole scene*, read at reduced size
   through the reader's ``out_shape`` (average resampling, overviews when the file has them): the scene at the
   windows' scale, its longer side resized to ``context_size`` (default the segmenter's ``window``, the size of
   a tile's global view). Its logits (a small ``(K', gh, gw)`` map) are sampled at each window's grid cells and
   blended as a tile's global view is: ``(1 - global_weight) * windows + global_weight * global``
   (:class:`~dinoseg_core.ovseg.config.OvsegConfig` ``global_view`` / ``global_weight``; ``SceneConfig``
   ``global_context=False`` also turns it off). Neighbouring windows thus read one continuous global map.
3. **Stitching**: each window's class probabilities (softmax over classes and background prompts), upsampled
   bilinearly to its pixels, cross-fade linearly with its neighbours' in their overlap; the label of a pixel is
   then decided once, on the blended probabilities (argmax; background prompts and ``background_threshold`` give
   0; nodata is 0), and each block goes to ``writer(row_off, col_off, labels uint16 (h, w))`` as soon as its last
   window is done. Inside a window this is exactly the tile path's upsampling and argmax
   (:meth:`TextSegmenter.segment <dinoseg_core.ovseg.segmenter.TextSegmenter.segment>`).

Memory: one window's image, its segmenter windows and its ``(K', h, w)`` probabilities, the small global map, and
the stitcher's overlap strip (``K' x overlap x scene width`` float32): bounded by the window and the scene's width,
never its area. ``SceneConfig.global_weight`` and ``threshold`` are INSID3's (similarity fusion, foreground score)
and do not apply to classes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dinoseg_core.config import SceneConfig
from dinoseg_core.geo.scene import SceneReader, sample_window, stitch_windows
from dinoseg_core.geo.windows import MaskWriter, Stitcher, WindowGrid
from dinoseg_core.ovseg.config import SCENE_WINDOW, resolve_scene_config
from dinoseg_core.ovseg.dinotxt import ClassEmbeddings
from dinoseg_core.ovseg.segmenter import TextSegmenter
from dinoseg_core.ovseg.windows import global_view_size, resize_short_side

__all__ = ["SCENE_WINDOW", "TextSceneResult", "resolve_scene_config", "segment_scene"]

@dataclass(frozen=True)
class TextSceneResult:
    """What :func:`segment_scene` reports (small values only; the labels went to the writer).

    Attributes:
        shape: ``(H, W)`` of the scene; ``windows``: number of windows; ``windows_skipped``: those without a
            valid pixel.
        class_pixels: class name -> pixels labelled with it (``"background"``: label 0, nodata included).
        window_input: ``(h, w)`` each window is resized to (the scale: ``window_input / window_size``).
        global_view: ``(gh, gw)`` of the whole-scene view (None: no global view).
        config: the :class:`SceneConfig` with defaults resolved, as a dict.
        timings: seconds: ``global``, ``read``, ``views`` (the segmenter's windows), ``upsample``, ``stitch``
            (writer included), ``total``.
        peak_stitch_bytes: the most memory the stitcher's pending blocks held at once.
    """

    shape: tuple[int, int]
    windows: int
    windows_skipped: int
    class_pixels: dict[str, int]
    window_input: tuple[int, int]
    global_view: tuple[int, int] | None
    config: dict[str, Any]
    timings: dict[str, float]
    peak_stitch_bytes: int = 0


def segment_scene(
    segmenter: TextSegmenter,
    classes: ClassEmbeddings,
    read: SceneReader,
    shape: tuple[int, int],
    writer: MaskWriter,
    *,
    name: str = "scene",
    config: SceneConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> TextSceneResult:
    """Segment ``classes`` in a whole scene, window by window, in bounded memory (see the module docstring).

    Args:
        segmenter: the text segmenter (zero-shot or a trained head); its config sets the per-window inference.
        classes: from ``segmenter.embed_classes`` (once per class list).
        read: ``read(window, out_shape=None) -> (image, valid)``, e.g. the ``read`` of
            :func:`dinoseg_core.io.raster.raster_reader`; called once per window and once for the global view.
        shape: ``(H, W)`` of the scene in pixels.
        writer: ``writer(row_off, col_off, labels uint16 (h, w))`` (0 background or nodata, k + 1 the class
            ``classes.class_names[k]``), called with non-overlapping blocks that tile the scene exactly once.
        name: the scene in messages (e.g. its URL).
        config: windowing (``window_size``, ``overlap``, ``context_size``, ``global_context``);
            :func:`resolve_scene_config` fills in the defaults.
        progress: called as ``progress(windows_done, windows_total)`` after each window.
    Returns:
        :class:`TextSceneResult`.
    """
    cfg = segmenter.config
    patch = segmenter.dinotxt.patch_size
    config = resolve_scene_config(config, cfg)
    height, width = (int(v) for v in shape)
    grid = WindowGrid.build(height, width, config.window_size, config.overlap)
    (r0, r1), (c0, c1) = grid.rows[0], grid.cols[0]
    window_hw = (r1 - r0, c1 - c0)  # every window has this size
    window_input = resize_short_side(*window_hw, cfg.short_side, patch)
    timings = dict.fromkeys(("global", "read", "views", "upsample", "stitch"), 0.0)
    start_all = time.perf_counter()

    # a one-window scene is a tile: its own global view is the scene's
    scene_view = cfg.global_view and config.global_context and len(grid) > 1
    global_logits: torch.Tensor | None = None
    view_hw: tuple[int, int] | None = None
    if scene_view:
        start = time.perf_counter()
        scene_input = resize_short_side(round(height * window_input[0] / window_hw[0]),
                                        round(width * window_input[1] / window_hw[1]), None, patch)
        view_hw = global_view_size(*scene_input, config.context_size, patch)
        thumb, _ = read(None, out_shape=view_hw)
        global_logits = segmenter.view_logits(thumb, classes, f"{name} (whole scene)")
        del thumb
        timings["global"] = time.perf_counter() - start
    elif cfg.global_view and config.global_context:
        view_hw = global_view_size(*window_input, cfg.window, patch)

    def window_score(i: int, j: int, window: Any, image: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        logits = segmenter.logits(image, classes, f"{name} window ({i}, {j})", size=window_input,
                                  global_view=None if len(grid) == 1 and config.global_context else False)
        if global_logits is not None:  # blended as a tile's global view is (logits or probabilities)
            glob = sample_window(global_logits, window, tuple(logits.shape[-2:]), (height, width)).to(logits.device)
            if segmenter.average == "probabilities":
                logits = torch.log(((1.0 - cfg.global_weight) * torch.softmax(logits, dim=0)
                                    + cfg.global_weight * torch.softmax(glob, dim=0)).clamp_min(1e-12))
            else:
                logits = (1.0 - cfg.global_weight) * logits + cfg.global_weight * glob
        timings["views"] += time.perf_counter() - start
        start = time.perf_counter()
        probs = torch.softmax(logits, dim=0)
        probs = F.interpolate(probs[None], size=tuple(image.shape[:2]), mode="bilinear", align_corners=False)[0]
        score = probs.float().cpu().numpy()
        timings["upsample"] += time.perf_counter() - start
        return score

    def decide(probs: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        index = probs.argmax(axis=0)
        top = np.take_along_axis(probs, index[None], axis=0)[0]
        labels = segmenter.label_map(index, top, classes).astype(np.uint16)
        if valid is not None:
            labels[~valid] = 0
        return labels

    counts = np.zeros(len(classes) - classes.num_background + 1, np.int64)

    def write(row_off: int, col_off: int, labels: np.ndarray) -> None:
        counts[:] += np.bincount(labels.ravel(), minlength=counts.size)[: counts.size]
        writer(row_off, col_off, labels)

    stitcher = Stitcher(grid, write, decide=decide)
    skipped = stitch_windows(grid, read, window_score, stitcher, channels=len(classes), timings=timings,
                             progress=progress)
    timings["total"] = time.perf_counter() - start_all
    names = ("background", *classes.class_names)
    return TextSceneResult(
        shape=(height, width),
        windows=len(grid),
        windows_skipped=skipped,
        class_pixels={n: int(c) for n, c in zip(names, counts)},
        window_input=tuple(window_input),
        global_view=view_hw,
        config=config.to_dict(),
        timings=timings,
        peak_stitch_bytes=stitcher.peak_cells_bytes,
    )
