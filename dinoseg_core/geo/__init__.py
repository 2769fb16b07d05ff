"""Remote-sensing scenes: GeoTIFF/COG windows in, whole-scene masks out with their coordinates, polygons exported.

- :mod:`~dinoseg_core.geo.raster`: :func:`open_raster` -> :class:`RasterSource`; :func:`read_window`,
  :func:`read_overview`, :func:`read_reference` (band selection, per-scene percentile stretch, nodata, S3);
- :mod:`~dinoseg_core.geo.windows`: :class:`WindowGrid` and the seamless :class:`Stitcher`;
- :mod:`~dinoseg_core.geo.scene`: :func:`segment_scene` (windows + global context + stitching, bounded memory);
- :mod:`~dinoseg_core.geo.writer`: :class:`ZarrMaskWriter`, a chunked zarr mask written chunk by chunk;
- :mod:`~dinoseg_core.geo.georef`: :func:`geo_attrs`, :func:`write_georeference` (CF ``spatial_ref`` + GeoZarr
  ``proj:``/``spatial:`` attributes; rioxarray reads them);
- :mod:`~dinoseg_core.geo.export`: :func:`masks_to_polygons`, :func:`array_to_polygons`, :func:`export_vectors`
  (GeoJSON, GeoPackage, GeoParquet);
- :mod:`~dinoseg_core.geo.synthetic`: synthetic multi-band GeoTIFFs from the aerial-like generator.

Needs the ``geo`` extra (rasterio; shapely for export; geopandas + pyogrio / pyarrow for GeoPackage / GeoParquet).
"""

from dinoseg_core.geo.export import array_to_polygons, export_vectors, masks_to_polygons
from dinoseg_core.geo.georef import (
    coordinates,
    geo_attrs,
    georeference_from_attrs,
    spatial_ref_attrs,
    write_georeference,
)
from dinoseg_core.geo.raster import (
    RasterSource,
    Window,
    gdal_env_options,
    open_raster,
    raster_reader,
    read_overview,
    read_reference,
    read_window,
    window_bounds_to_pixels,
)
from dinoseg_core.geo.scene import SceneConfig, SceneResult, segment_features_in_context, segment_scene
from dinoseg_core.geo.windows import Stitcher, WindowGrid
from dinoseg_core.geo.writer import ZarrMaskWriter

__all__ = [
    "RasterSource",
    "SceneConfig",
    "SceneResult",
    "Stitcher",
    "Window",
    "WindowGrid",
    "ZarrMaskWriter",
    "array_to_polygons",
    "coordinates",
    "export_vectors",
    "gdal_env_options",
    "geo_attrs",
    "georeference_from_attrs",
    "masks_to_polygons",
    "open_raster",
    "raster_reader",
    "read_overview",
    "read_reference",
    "read_window",
    "segment_features_in_context",
    "segment_scene",
    "spatial_ref_attrs",
    "window_bounds_to_pixels",
    "write_georeference",
]
