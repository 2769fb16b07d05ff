"""Masks as Cloud-Optimized GeoTIFFs, for GDAL, QGIS and every tool that opens a GeoTIFF.

A mask (``uint8 (H, W)``, 0 outside, 255 inside, as in the archive) is written through rasterio's bundled GDAL:
first band by band of rows into a tiled temporary GeoTIFF (never the whole mask in memory), then copied by GDAL's
``COG`` driver (deflate, internal 512 px tiles, overviews by nearest neighbour, nodata :data:`NODATA`), then
published in one write through :mod:`dinoseg_core.io.storage` (a rename on local disks, one PUT on object stores),
so a reader sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from dinoseg_core.errors import InputError
from dinoseg_core.io import storage

__all__ = ["BLOCKSIZE", "NODATA", "write_cog", "gdal_tags"]

#: Side in pixels of the COG's internal tiles (and of the row bands the mask is read in).
BLOCKSIZE = 512
#: The COG's nodata value: the background (0) is nodata, so QGIS draws only the mask (255) over a basemap.
NODATA = 0


def gdal_tags(record: Mapping[str, Any]) -> dict[str, str]:
    """A mask record's provenance as GDAL metadata tags: scalars as ``str``, lists and dicts as JSON; ``None`` and
    the WKT (already the file's CRS) left out."""
    tags = {}
    for key, value in record.items():
        if value is None or key == "proj:wkt2":
            continue
        tags[key] = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(value)
    return tags


def write_cog(
    url: str,
    mask: Any,
    transform: Any,
    crs: Any,
    tags: Mapping[str, str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Write ``mask`` to ``url`` as a Cloud-Optimized GeoTIFF on the grid ``(transform, crs)``.

    Args:
        url: output file, path or URL (``.tif``).
        mask: ``uint8 (H, W)``, 0/255, a numpy array or anything sliceable like one (a lazy zarr array is read in
            bands of :data:`BLOCKSIZE` rows).
        transform: rasterio ``Affine`` of the mask's grid.
        crs: rasterio ``CRS`` of the mask's grid.
        tags: GDAL metadata tags (e.g. :func:`gdal_tags` of the record).
        storage_options: fsspec options for ``url``.

    Raises:
        InputError: ``mask`` is not a 2-D uint8 array.
    """
    import rasterio
    from rasterio.shutil import copy as gdal_copy
    from rasterio.windows import Window

    shape = tuple(getattr(mask, "shape", ()))
    if len(shape) != 2 or 0 in shape or np.dtype(getattr(mask, "dtype", None)) != np.uint8:
        raise InputError(f"write_cog({storage.display_url(url)!r}): mask must be uint8 (H, W), got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {shape}")
    height, width = shape
    with tempfile.TemporaryDirectory(prefix="dinoseg-cog-") as tmp:
        tiled, cog = os.path.join(tmp, "mask.tif"), os.path.join(tmp, "mask.cog.tif")
        profile = {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
                   "crs": crs, "transform": transform, "nodata": NODATA, "tiled": True,
                   "blockxsize": BLOCKSIZE, "blockysize": BLOCKSIZE, "compress": "deflate"}
        with rasterio.open(tiled, "w", **profile) as dst:
            for row in range(0, height, BLOCKSIZE):
                band = np.asarray(mask[row : row + BLOCKSIZE], dtype=np.uint8)
                dst.write(band, 1, window=Window(0, row, width, band.shape[0]))
            if tags:
                dst.update_tags(**tags)
        gdal_copy(tiled, cog, driver="COG", compress="DEFLATE", blocksize=BLOCKSIZE,
                  overview_resampling="NEAREST", overviews="AUTO", bigtiff="IF_SAFER")
        with open(cog, "rb") as fh:  # deflated masks are small: one write publishes the file atomically
            storage.write_bytes(url, fh.read(), storage_options)
