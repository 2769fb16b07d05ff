"""INSID3 on scenes larger than the model input: windows at full resolution, a global pass for context, seamless
stitching, masks streamed to a writer. Peak memory does not depend on the scene's size.

The scene comes in through a ``read(window, out_shape=None)`` callable, so this module opens no file; with a
GeoTIFF/COG (:mod:`dinoseg_core.io.raster`)::

    source = open_raster("s3://bucket/scene.tif", bands=(4, 3, 2), storage_options=so)
    refs = segmenter.embed_references([ref_image], [ref_mask])          # e.g. from io.raster.read_reference
    with raster_reader(source) as reader, ZarrMaskWriter.create(url, source, storage_options=so) as writer:
        result = segment_scene(segmenter, refs, reader.read, source.shape, writer, name=source.display_url)

What happens (:func:`segment_scene`):

1. **Global pass** (the local-global idea of dinov3.seg): the whole scene is read once, downscaled (average
   resampling, from overviews when the file has them) to ``context_size`` px on its longer side (default: the
   segmenter's ``image_size``), and segmented like any image. Kept from it: its patch similarity to the prototype,
   ``s_global`` (a small ``(gh, gw)`` map over the whole scene), and the **scene threshold** ``t``
   (:func:`scene_threshold`): halfway between the mean similarity of the patches it put in the concept and of
   the others; when it finds no concept at that scale, the paper's rule (0, or the 90th percentile).
2. **Windows** (:class:`~dinoseg_core.geo.windows.WindowGrid`): ``window_size`` px (default ``image_size``, i.e.
   full resolution) with ``overlap`` px; windows without a single valid pixel are skipped. For each window, one
   backbone pass gives the local similarity ``s_local`` on its patch grid; ``s_global`` is sampled at the
   window's patch centres (bilinear) and fused::

       s = (1 - global_weight) * s_local + global_weight * s_global

   ``s`` replaces the prototype similarity where INSID3 uses it (:meth:`InContextSegmenter.segment_features`
   with ``prior`` and ``scene_threshold``): the forward candidate test (step 6: ``s > t`` instead of the
   per-image ``> 0`` / 90th-percentile rule) and the cross term of the cluster score (step 8: the mean of ``s``
   over a cluster), and a cluster is kept only if its cross term also exceeds ``t``. Clustering, the backward
   test, seed selection and the intra/area terms stay local. A concept is thus judged against the whole scene:
   in a window without the concept, INSID3 alone would keep the best-matching background cluster (the seed
   always has ``intra = area = 1``, so ``cross > alpha`` suffices); with the scene threshold it comes out
   empty. Neighbouring windows share the same prior, so they decide alike in their overlap.
   ``global_context=False`` (or ``global_weight=0``) turns all this off: every window is then segmented exactly
   as :meth:`InContextSegmenter.segment_features` would without a prior.

   Limits: the global pass sees the scene at ``context_size`` px, i.e. one patch covers ``16 x scene /
   context_size`` scene pixels (512 px at 16k/512). Concepts much smaller than that (single roofs in a 16k scene)
   are invisible to it: the scene threshold then falls back to the paper's rule and ``s_global`` is a
   background prior that only lowers their fused similarity by ``global_weight`` times the gap. Raise
   ``context_size`` or lower ``global_weight`` for small objects in very large scenes.
3. **Stitching** (:class:`~dinoseg_core.geo.windows.Stitcher`): each window's aggregated patch mask, upsampled
   bilinearly to the window's pixels, is its soft foreground score; overlapping windows cross-fade linearly and
   the mask is ``score >= 0.5`` and valid (nodata is never foreground). Blocks go to ``writer(row_off, col_off,
   mask)`` as soon as their last window is done, each pixel once.

Memory: one window's image and features, the small global map, and the stitcher's overlap strip
(``O(overlap x width)`` float32). Nothing of the scene's full size is allocated here; the writer decides where
the mask goes (:class:`~dinoseg_core.io.maskwriter.ZarrMaskWriter`: a chunked zarr array on disk or S3).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from dinoseg_core.candidates import FALLBACK_PERCENTILE
from dinoseg_core.config import InsidConfig, SceneConfig, SceneOptions
from dinoseg_core.geo.windows import MaskWriter, Stitcher, WindowGrid
from dinoseg_core.prototype import ReferenceSet
from dinoseg_core.segmenter import InContextSegmenter, Segmentation, TargetFeatures

__all__ = ["SceneConfig", "SceneOptions", "SceneReader", "SceneResult", "WindowScore", "sample_window",
           "scene_threshold", "segment_scene", "stitch_windows"]

#: ``read(window, out_shape=None) -> (image float32 (h, w, 3) in [0, 1], valid bool (h, w))``. ``window`` is a
#: ``rasterio.windows.Window`` (``col_off``, ``row_off``, ``width``, ``height``) of the scene, or None for the
#: whole scene; ``out_shape`` ``(h, w)`` resamples the read (an anti-aliased thumbnail for the whole-scene
#: pass). E.g. :meth:`dinoseg_core.io.raster.RasterReader.read`.
SceneReader = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class SceneResult:
    """What :func:`segment_scene` reports (small values only; the mask went to the writer).

    Attributes:
        shape: ``(H, W)`` of the scene.
        windows: number of windows; ``windows_skipped``: of those, windows without a valid pixel.
        foreground_pixels: pixels in the mask.
        global_similarity: ``float32 (gh, gw)`` similarity of the whole-scene pass (None without global context);
            a cheap preview of the concept over the scene, e.g. for the archive's ``similarity`` array.
        scene_threshold: the scene-level similarity threshold (None without global context).
        config: the :class:`SceneConfig` used, with defaults resolved, as a dict.
        timings: seconds: ``global``, ``read``, ``backbone``, ``segment``, ``stitch`` (writer included), ``total``.
        peak_stitch_bytes: the most memory the stitcher's pending blocks held at once.
    """

    shape: tuple[int, int]
    windows: int
    windows_skipped: int
    foreground_pixels: int
    global_similarity: np.ndarray | None
    scene_threshold: float | None
    config: dict[str, Any]
    timings: dict[str, float]
    peak_stitch_bytes: int = 0


def scene_threshold(similarity: np.ndarray, patch_mask: np.ndarray) -> float:
    """The scene's forward threshold from the whole-scene pass: halfway between the mean similarity of the
    patches INSID3 put in the concept and of the others (a two-class split of the scene-level map). When the
    whole-scene pass finds no concept (or only concept), it cannot tell the classes apart and the paper's rule
    applies to the scene: 0 if any patch is positive, else the 90th percentile."""
    inside = patch_mask.astype(bool)
    if inside.any() and not inside.all():
        return float((similarity[inside].mean() + similarity[~inside].mean()) / 2.0)
    if (similarity > 0).any():
        return 0.0
    return float(np.quantile(similarity, FALLBACK_PERCENTILE))


def _soft_score(segmentation: Segmentation, target: TargetFeatures, crf: bool) -> np.ndarray:
    """The window's foreground score ``float32 (H, W)`` in [0, 1]: its patch mask upsampled bilinearly to the
    window's pixels (what the segmenter thresholds at 0.5), or the CRF-refined mask resized when CRF is on."""
    h, w = target.original_hw
    if crf:
        return segmentation.mask.astype(np.float32)
    patch = torch.from_numpy(segmentation.patch_mask.astype(np.float32))[None, None]
    return F.interpolate(patch, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()


def sample_window(
    global_map: torch.Tensor, window: Any, grid: tuple[int, int], scene_hw: tuple[int, int]
) -> torch.Tensor:
    """``global_map`` ``(gh, gw)`` or ``(C, gh, gw)`` over the whole scene, sampled bilinearly at the centres of a
    ``grid`` of cells over ``window`` (so that the windows of a scene read one continuous map): ``(*grid)`` or
    ``(C, *grid)``. The same values as resizing the map to the scene's cells and cutting the window out."""
    height, width = scene_hw
    gh, gw = grid
    r0, c0 = float(window.row_off), float(window.col_off)
    wh, ww = float(window.height), float(window.width)
    ys = (r0 + (torch.arange(gh, dtype=torch.float32) + 0.5) * wh / gh) / height * 2.0 - 1.0
    xs = (c0 + (torch.arange(gw, dtype=torch.float32) + 0.5) * ww / gw) / width * 2.0 - 1.0
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([xx, yy], dim=-1)[None].to(global_map.device)
    source = global_map.float()
    source = source[None, None] if source.ndim == 2 else source[None]
    sampled = F.grid_sample(source, points, mode="bilinear", padding_mode="border", align_corners=False)[0]
    return sampled[0] if global_map.ndim == 2 else sampled


#: ``window_score(i, j, window, image) -> score``: a window's ``float32 (h, w)`` foreground score, or
#: ``(C, h, w)`` channels (see :class:`~dinoseg_core.geo.windows.Stitcher`), from its image.
WindowScore = Callable[[int, int, Any, np.ndarray], np.ndarray]


def stitch_windows(
    grid: WindowGrid,
    read: SceneReader,
    window_score: WindowScore,
    stitcher: Stitcher,
    *,
    channels: int | None = None,
    timings: dict[str, float] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """The scene loop every method shares: read each window of ``grid`` (row-major, which keeps the stitcher's
    memory at one overlap strip), score it, stitch it; windows without a valid pixel are not scored (zeros, and
    their pixels come out invalid). Closes the stitcher (every pixel written) and returns the number of windows
    skipped.

    Args:
        channels: the channels of ``window_score``'s scores (None: one ``(h, w)`` score).
        timings: ``read`` and ``stitch`` seconds are added to it (``window_score`` may add its own).
        progress: called as ``progress(windows_done, windows_total)`` after each window.
    """
    timings = timings if timings is not None else {}
    skipped = 0
    for done, (i, j, window) in enumerate(grid, start=1):
        start = time.perf_counter()
        image, valid = read(window)
        timings["read"] = timings.get("read", 0.0) + time.perf_counter() - start
        if not valid.any():
            skipped += 1
            score = np.zeros(valid.shape if channels is None else (channels, *valid.shape), np.float32)
        else:
            score = window_score(i, j, window, image)
        del image
        start = time.perf_counter()
        stitcher.add(i, j, score, valid)
        timings["stitch"] = timings.get("stitch", 0.0) + time.perf_counter() - start
        del score
        if progress is not None:
            progress(done, len(grid))
    stitcher.close()
    return skipped


def segment_scene(
    segmenter: InContextSegmenter,
    references: ReferenceSet,
    read: SceneReader,
    shape: tuple[int, int],
    writer: MaskWriter,
    *,
    name: str = "scene",
    config: SceneConfig | None = None,
    window_size: int | None = None,
    overlap: int | None = None,
    context_size: int | None = None,
    global_context: bool | None = None,
    insid_config: InsidConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SceneResult:
    """Segment the references' concept in a whole scene, window by window, in bounded memory.

    Args:
        segmenter: the in-context segmenter (its ``image_size`` is the model input per window).
        references: embedded once with ``segmenter.embed_references`` (reference images may be GeoTIFF windows:
            :func:`dinoseg_core.geo.read_reference`).
        read: ``read(window, out_shape=None) -> (image, valid)`` (:data:`SceneReader`), e.g. the ``read`` of
            :func:`dinoseg_core.io.raster.raster_reader`; called once for the whole scene (with ``out_shape``)
            and once per window.
        shape: ``(H, W)`` of the scene in pixels.
        writer: ``writer(row_off, col_off, mask bool (h, w))``, called with non-overlapping blocks that tile the
            scene exactly once (e.g. :class:`~dinoseg_core.io.maskwriter.ZarrMaskWriter`).
        name: the scene in messages (e.g. its URL).
        config: a :class:`SceneConfig`; the keyword arguments below override single fields of it.
        insid_config: per-concept tau / merge_threshold / crf (default the segmenter's config).
        progress: called as ``progress(windows_done, windows_total)`` after each window.
    Returns:
        :class:`SceneResult` (counts, the global similarity preview, timings).
    """
    config = config or SceneConfig()
    overrides = {k: v for k, v in (("window_size", window_size), ("overlap", overlap),
                                   ("context_size", context_size), ("global_context", global_context)) if v is not None}
    image_size = segmenter.config.image_size
    config = config.replace(**overrides)
    # resolving the defaults re-validates (an overlap not below the model's image_size raises here)
    config = config.replace(window_size=config.window_size or image_size,
                            context_size=config.context_size or image_size)
    insid = insid_config or segmenter.config
    use_context = config.global_context and config.global_weight > 0.0
    height, width = (int(v) for v in shape)
    grid = WindowGrid.build(height, width, config.window_size, config.overlap)
    timings = dict.fromkeys(("global", "read", "backbone", "segment", "stitch"), 0.0)
    start_all = time.perf_counter()

    global_sim: torch.Tensor | None = None
    threshold: float | None = None
    if use_context:
        start = time.perf_counter()
        scale = min(1.0, config.context_size / max(height, width))
        thumb_shape = (max(16, round(height * scale)), max(16, round(width * scale)))
        thumb, _ = read(None, out_shape=thumb_shape)
        target = segmenter.extract_target(thumb, f"{name} (whole scene)")
        overview = segmenter.segment_features(references, target, insid)
        global_sim = torch.from_numpy(overview.similarity)
        threshold = scene_threshold(overview.similarity, overview.patch_mask)
        del thumb, target, overview
        timings["global"] = time.perf_counter() - start

    def window_score(i: int, j: int, window: Any, image: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        target = segmenter.extract_target(image, f"{name} window ({i}, {j})")
        timings["backbone"] += time.perf_counter() - start
        start = time.perf_counter()
        prior = sample_window(global_sim, window, target.grid, (height, width)) if use_context else None
        seg = segmenter.segment_features(references, target, insid, prior=prior,
                                         prior_weight=config.global_weight, scene_threshold=threshold)
        score = _soft_score(seg, target, insid.crf)
        timings["segment"] += time.perf_counter() - start
        return score

    stitcher = Stitcher(grid, writer, config.threshold)
    skipped = stitch_windows(grid, read, window_score, stitcher, timings=timings, progress=progress)
    timings["total"] = time.perf_counter() - start_all
    return SceneResult(
        shape=(height, width),
        windows=len(grid),
        windows_skipped=skipped,
        foreground_pixels=stitcher.foreground_pixels,
        global_similarity=None if global_sim is None else global_sim.cpu().numpy(),
        scene_threshold=threshold,
        config=config.to_dict(),
        timings=timings,
        peak_stitch_bytes=stitcher.peak_cells_bytes,
    )
