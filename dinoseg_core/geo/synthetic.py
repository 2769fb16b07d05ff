"""Synthetic multi-band GeoTIFF scenes built from tiles of :func:`dinoseg_core.synthetic.generate_scene`, written
tile by tile (never the whole scene in memory), for tests, the demo and ``bench/large_scene.py``.

A scene is ``uint16`` with 4 bands in the order of Sentinel-2's 10 m bands 2, 3, 4, 8: **blue, green, red,
near-infrared** (so ``bands=(3, 2, 1)`` gives RGB), scaled like surface reflectance x 10000 (``300 + 6000 *
value``: a stretch is needed), nodata 0, tiled 256 x 256, deflate-compressed, in a projected CRS (default UTM 33N,
0.5 m pixels). The ground truth of one concept can be written alongside as a ``uint8`` 0/1 GeoTIFF of the same
grid.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from dinoseg_core.errors import InputError
from dinoseg_core.synthetic import generate_scene

__all__ = ["BLUE_GREEN_RED_NIR", "RGB_BANDS", "write_synthetic_geotiff"]

BLUE_GREEN_RED_NIR = ("blue", "green", "red", "nir")
#: ``bands=`` giving an RGB image of a synthetic scene.
RGB_BANDS = (3, 2, 1)
NODATA = 0


def _to_bands(image: np.ndarray) -> np.ndarray:
    """float (h, w, 3) RGB in [0, 1] -> uint16 (4, h, w) blue, green, red, nir; never 0 (the nodata value)."""
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    nir = np.clip(1.4 * g - 0.4 * r + 0.1, 0.0, 1.0)  # vegetation bright in NIR, water dark
    stack = np.stack([b, g, r, nir])
    return (300.0 + 6000.0 * stack).round().astype(np.uint16)


def write_synthetic_geotiff(
    path: str | os.PathLike[str],
    size: int | tuple[int, int],
    *,
    tile: int = 512,
    seed: int = 0,
    distinct_tiles: int | None = None,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500_000.0, 5_000_000.0),
    resolution: float = 0.5,
    labels_path: str | os.PathLike[str] | None = None,
    concept: str = "roof",
    nodata_regions: Sequence[tuple[int, int, int, int]] = (),
    georeferenced: bool = True,
    overviews: Sequence[int] = (),
) -> dict[str, Any]:
    """Write a scene of ``size`` px (an int for square, or ``(height, width)``) tiled with generated scenes.

    Args:
        path: a local file path.
        tile: side of each generated tile (the last row/column of tiles is cropped to the scene).
        seed: tile ``k`` (row-major) is ``generate_scene(seed * 100_003 + k % distinct_tiles, tile)``.
        distinct_tiles: cycle through this many different tiles (faster for big benches); default all different.
        crs, origin, resolution: the grid: upper-left corner ``origin`` (x, y) in ``crs``, square pixels.
        labels_path: also write ``concept``'s ground truth (uint8 0/1, nodata 255 where the image is nodata).
        nodata_regions: ``(row_off, col_off, height, width)`` rectangles set to nodata (0 in every band).
        georeferenced: False writes a plain TIFF without CRS and geotransform.
        overviews: decimation factors of internal overviews to build (e.g. ``(2, 4, 8)``, COG-like).
    Returns:
        ``{"path", "labels_path", "height", "width", "crs", "transform", "foreground_pixels"}``.
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    height, width = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if min(height, width) < 64 or tile < 64:
        raise InputError(f"size {size} and tile {tile} must be at least 64 px")
    transform = from_origin(origin[0], origin[1], resolution, resolution)
    profile: dict[str, Any] = {
        "driver": "GTiff", "height": height, "width": width, "dtype": "uint16", "count": 4, "nodata": NODATA,
        "tiled": True,
        "blockxsize": 256, "blockysize": 256, "compress": "deflate", "interleave": "pixel", "BIGTIFF": "IF_SAFER",
    }
    if georeferenced:
        profile.update(crs=crs, transform=transform)
    label_profile = {**profile, "dtype": "uint8", "count": 1, "nodata": 255}
    foreground = 0
    cache: dict[int, Any] = {}
    path = os.fspath(path)
    with rasterio.open(path, "w", **profile) as dst:
        labels = rasterio.open(os.fspath(labels_path), "w", **label_profile) if labels_path is not None else None
        try:
            for k, (r0, c0) in enumerate((r, c) for r in range(0, height, tile) for c in range(0, width, tile)):
                index = k % distinct_tiles if distinct_tiles else k
                if index not in cache:
                    if distinct_tiles is None:
                        cache.clear()
                    cache[index] = generate_scene(seed * 100_003 + index, tile)
                scene = cache[index]
                h, w = min(tile, height - r0), min(tile, width - c0)
                data = _to_bands(scene.image[:h, :w])
                truth = scene.labels[concept][:h, :w].astype(np.uint8)
                invalid = np.zeros((h, w), bool)
                for nr, nc, nh, nw in nodata_regions:
                    ya, yb = max(nr, r0) - r0, min(nr + nh, r0 + h) - r0
                    xa, xb = max(nc, c0) - c0, min(nc + nw, c0 + w) - c0
                    if ya < yb and xa < xb:
                        invalid[ya:yb, xa:xb] = True
                data[:, invalid] = NODATA
                truth[invalid] = 255
                foreground += int((truth == 1).sum())
                win = Window(c0, r0, w, h)
                dst.write(data, window=win)
                if labels is not None:
                    labels.write(truth[None], window=win)
        finally:
            if labels is not None:
                labels.close()
        if overviews:
            dst.build_overviews(list(overviews), Resampling.average)
    return {"path": path, "labels_path": os.fspath(labels_path) if labels_path else None, "height": height,
            "width": width, "crs": crs if georeferenced else None, "transform": transform if georeferenced else None,
            "foreground_pixels": foreground}
