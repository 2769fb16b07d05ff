"""Tiny synthetic GeoTIFFs for the geo tests, written with rasterio from seeded arrays."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import from_origin

CRS = "EPSG:32633"
ORIGIN = (500_000.0, 5_000_000.0)
RES = 0.5
TRANSFORM = from_origin(ORIGIN[0], ORIGIN[1], RES, RES)


def write_geotiff(path: str | os.PathLike[str], data: np.ndarray, *, crs: str | None = CRS, transform=TRANSFORM,
                  nodata: float | None = 0, tiled: bool = True, **profile: Any) -> str:
    """Write ``data`` (C, H, W) (or (H, W)) as a GeoTIFF; ``crs=None`` writes no georeferencing at all."""
    data = np.asarray(data)
    if data.ndim == 2:
        data = data[None]
    count, height, width = data.shape
    options: dict[str, Any] = {"driver": "GTiff", "height": height, "width": width, "count": count,
                               "dtype": data.dtype.name, "nodata": nodata}
    if tiled and height >= 16 and width >= 16:
        options.update(tiled=True, blockxsize=16 * max(1, min(16, width // 16)),
                       blockysize=16 * max(1, min(16, height // 16)))
    if crs is not None:
        options.update(crs=crs, transform=transform)
    options.update(profile)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(os.fspath(path), "w", **options) as dst:
            dst.write(data)
    return os.fspath(path)


def band_stack(height: int = 64, width: int = 96, count: int = 4, seed: int = 0) -> np.ndarray:
    """uint16 (count, H, W): band k (1-based) holds values around k * 1000 with a horizontal ramp and noise,
    never 0 (the nodata value)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 500, width)[None, :]
    bands = [k * 1000 + ramp + rng.integers(0, 50, (height, width)) for k in range(1, count + 1)]
    return np.stack(bands).astype(np.uint16)
